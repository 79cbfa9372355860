/// An HTTP request method, compared case-sensitively as RFC 9110 requires.
///
/// Any token is representable; the common ones are predefined.
public struct HTTPMethod: RawRepresentable, Hashable, Sendable, CustomStringConvertible,
    ExpressibleByStringLiteral
{
    public let rawValue: String

    public init(rawValue: String) { self.rawValue = rawValue }
    public init(stringLiteral value: String) { self.rawValue = value }

    public var description: String { rawValue }

    public static let get = HTTPMethod(rawValue: "GET")
    public static let head = HTTPMethod(rawValue: "HEAD")
    public static let post = HTTPMethod(rawValue: "POST")
    public static let put = HTTPMethod(rawValue: "PUT")
    public static let patch = HTTPMethod(rawValue: "PATCH")
    public static let delete = HTTPMethod(rawValue: "DELETE")
    public static let options = HTTPMethod(rawValue: "OPTIONS")

    /// The methods above, in the order `Allow` headers list them.
    static let wellKnown: [HTTPMethod] = [.get, .head, .post, .put, .patch, .delete, .options]

    /// Position in ``wellKnown``, for a stable `Allow` order; other methods sort last.
    var sortRank: Int { Self.wellKnown.firstIndex(of: self) ?? Self.wellKnown.count }
}
