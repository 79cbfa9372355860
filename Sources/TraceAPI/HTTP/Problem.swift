/// An RFC 9457 problem details object, served as `application/problem+json`.
///
/// Extension members sit next to the standard ones at the top level of the JSON
/// object (`attempts` on attach failures, `errors` on validation failures, …).
/// Their names must differ from the standard members.
public struct Problem: Error, Sendable, Hashable, Codable {
    /// Prefix of every problem `type` URI this agent defines.
    public static let typeBase = "https://traceplane.dev/problems/"
    /// The media type of a serialized problem.
    public static let mediaType = "application/problem+json"

    static let standardMembers: Set<String> = ["type", "title", "status", "detail", "instance"]

    /// A URI reference that identifies the problem type.
    public var type: String
    /// A short summary of the problem type; the same for every occurrence.
    public var title: String
    public var status: HTTPStatus
    /// What went wrong this time, for a human.
    public var detail: String?
    /// A URI reference that identifies this occurrence.
    public var instance: String?
    /// Extension members, encoded at the top level.
    public var extensions: [String: JSONValue]

    /// Creates a problem. `extensions` must not use a standard member name.
    public init(
        type: String,
        title: String,
        status: HTTPStatus,
        detail: String? = nil,
        instance: String? = nil,
        extensions: [String: JSONValue] = [:]
    ) {
        precondition(
            Self.standardMembers.isDisjoint(with: extensions.keys),
            "Problem extension members must not be named like a standard member (\(Self.standardMembers.sorted()))."
        )
        self.type = type
        self.title = title
        self.status = status
        self.detail = detail
        self.instance = instance
        self.extensions = extensions
    }

    /// Creates a problem whose type is `https://traceplane.dev/problems/<slug>`.
    public init(
        slug: String,
        title: String,
        status: HTTPStatus,
        detail: String? = nil,
        extensions: [String: JSONValue] = [:]
    ) {
        self.init(type: Self.typeBase + slug, title: title, status: status, detail: detail, extensions: extensions)
    }

    // MARK: Problems the HTTP layer itself reports

    /// 404: no route for this path.
    public static func notFound(path: String) -> Problem {
        Problem(slug: "not-found", title: "Not Found", status: .notFound, detail: "No resource at \(path).")
    }

    /// 405: the path exists but not for this method; pair it with an `Allow` header.
    public static func methodNotAllowed(method: HTTPMethod, path: String, allowed: [HTTPMethod]) -> Problem {
        Problem(
            slug: "method-not-allowed", title: "Method Not Allowed", status: .methodNotAllowed,
            detail: "\(method) is not allowed on \(path); allowed: \(allowed.map(\.rawValue).joined(separator: ", ")).",
            extensions: ["allowed": .array(allowed.map { .string($0.rawValue) })])
    }

    /// 413: the request body is larger than the server accepts.
    public static func contentTooLarge(limit: Int) -> Problem {
        Problem(
            slug: "content-too-large", title: "Content Too Large", status: .contentTooLarge,
            detail: "The request body exceeds the limit of \(limit) bytes.",
            extensions: ["limit_bytes": .integer(Int64(limit))])
    }

    /// 415: the request body has a media type the route does not accept.
    public static func unsupportedMediaType(received: String?, accepted: [String]) -> Problem {
        let got = received.map { "Content-Type \($0)" } ?? "no Content-Type"
        return Problem(
            slug: "unsupported-media-type", title: "Unsupported Media Type", status: .unsupportedMediaType,
            detail: "The request body has \(got); expected \(accepted.joined(separator: " or ")).",
            extensions: ["accepted": .array(accepted.map { .string($0) })])
    }

    /// 400: the request is malformed. `errors` lists individual validation failures.
    public static func badRequest(detail: String, errors: [JSONValue] = []) -> Problem {
        Problem(
            slug: "bad-request", title: "Bad Request", status: .badRequest, detail: detail,
            extensions: errors.isEmpty ? [:] : ["errors": .array(errors)])
    }

    /// 503: the server is shutting down (or otherwise cannot serve now).
    public static func serviceUnavailable(detail: String) -> Problem {
        Problem(slug: "service-unavailable", title: "Service Unavailable", status: .serviceUnavailable, detail: detail)
    }

    /// 500: a bug or an unexpected failure on our side.
    public static func internalError(detail: String) -> Problem {
        Problem(slug: "internal-error", title: "Internal Server Error", status: .internalServerError, detail: detail)
    }

    // MARK: Codable

    private struct MemberKey: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ name: String) { stringValue = name }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    public init(from decoder: any Decoder) throws {
        let container = try decoder.container(keyedBy: MemberKey.self)
        let code = try container.decode(Int.self, forKey: MemberKey("status"))
        guard let status = HTTPStatus(rawValue: code) else {
            throw DecodingError.dataCorruptedError(
                forKey: MemberKey("status"), in: container, debugDescription: "\(code) is not an HTTP status code")
        }
        self.status = status
        self.type = try container.decodeIfPresent(String.self, forKey: MemberKey("type")) ?? "about:blank"
        self.title = try container.decodeIfPresent(String.self, forKey: MemberKey("title")) ?? status.reasonPhrase
        self.detail = try container.decodeIfPresent(String.self, forKey: MemberKey("detail"))
        self.instance = try container.decodeIfPresent(String.self, forKey: MemberKey("instance"))
        var extensions: [String: JSONValue] = [:]
        for key in container.allKeys where !Self.standardMembers.contains(key.stringValue) {
            extensions[key.stringValue] = try container.decode(JSONValue.self, forKey: key)
        }
        self.extensions = extensions
    }

    public func encode(to encoder: any Encoder) throws {
        var container = encoder.container(keyedBy: MemberKey.self)
        try container.encode(type, forKey: MemberKey("type"))
        try container.encode(title, forKey: MemberKey("title"))
        try container.encode(status.code, forKey: MemberKey("status"))
        try container.encodeIfPresent(detail, forKey: MemberKey("detail"))
        try container.encodeIfPresent(instance, forKey: MemberKey("instance"))
        // A standard member always wins over an extension of the same name
        // (possible only if `extensions` was mutated after init).
        for (name, value) in extensions where !Self.standardMembers.contains(name) {
            try container.encode(value, forKey: MemberKey(name))
        }
    }
}
