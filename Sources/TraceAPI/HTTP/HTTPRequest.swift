/// A complete HTTP request as handlers see it: head, query and the whole body.
public struct HTTPRequest: Sendable {
    public var method: HTTPMethod
    /// The path as sent, still percent-encoded, without the query (e.g. `/v1/probes/a%20b`).
    /// The router decodes each segment when it matches.
    public var path: String
    /// Everything after the first `?`, undecoded; nil when the target has no `?`.
    public var rawQuery: String?
    /// The decoded query parameters (`+` is a space). When a name repeats, the first value is kept.
    public var query: [String: String]
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// The client's numeric IP address, when the transport knows it.
    public var remoteAddress: String?

    /// Creates a request from a request target such as `/v1/probes?limit=10`.
    ///
    /// An absolute-form target (`http://host/path?q`) is reduced to its path and query.
    public init(
        method: HTTPMethod,
        target: String,
        headers: HTTPHeaders = HTTPHeaders(),
        body: [UInt8] = [],
        remoteAddress: String? = nil
    ) {
        var target = Substring(target)
        if let schemeEnd = target.range(of: "://"), target[..<schemeEnd.lowerBound].allSatisfy(\.isLetter) {
            let authorityAndRest = target[schemeEnd.upperBound...]
            target = authorityAndRest.firstIndex(where: { $0 == "/" || $0 == "?" })
                .map { authorityAndRest[$0...] } ?? "/"
        }
        if let mark = target.firstIndex(of: "?") {
            self.path = String(target[..<mark])
            let raw = target[target.index(after: mark)...]
            self.rawQuery = String(raw)
            self.query = Self.parseQuery(raw)
        } else {
            self.path = String(target)
            self.rawQuery = nil
            self.query = [:]
        }
        if self.path.isEmpty { self.path = "/" }
        self.method = method
        self.headers = headers
        self.body = body
        self.remoteAddress = remoteAddress
    }

    /// The media type of `Content-Type`, lowercased and without parameters
    /// (`application/json; charset=utf-8` gives `application/json`).
    public var mediaType: String? {
        guard let value = headers["Content-Type"] else { return nil }
        let type = value.split(separator: ";", maxSplits: 1, omittingEmptySubsequences: false)[0]
        return type.trimmingSpaces().lowercased()
    }

    /// Parses `a=1&b=x+y&c` into `["a": "1", "b": "x y", "c": ""]`.
    static func parseQuery(_ raw: Substring) -> [String: String] {
        var result: [String: String] = [:]
        for pair in raw.split(separator: "&", omittingEmptySubsequences: true) {
            let parts = pair.split(separator: "=", maxSplits: 1, omittingEmptySubsequences: false)
            let name = percentDecode(parts[0], plusIsSpace: true)
            let value = parts.count > 1 ? percentDecode(parts[1], plusIsSpace: true) : ""
            if result[name] == nil { result[name] = value }
        }
        return result
    }

    /// Decodes `%XX` escapes (and `+` when asked). Malformed escapes are kept
    /// literally; invalid UTF-8 becomes U+FFFD.
    static func percentDecode(_ text: Substring, plusIsSpace: Bool) -> String {
        let utf8 = Array(text.utf8)
        guard utf8.contains(UInt8(ascii: "%")) || (plusIsSpace && utf8.contains(UInt8(ascii: "+"))) else {
            return String(text)
        }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(utf8.count)
        var i = 0
        while i < utf8.count {
            let byte = utf8[i]
            if byte == UInt8(ascii: "%"), i + 2 < utf8.count,
                let high = hexValue(utf8[i + 1]), let low = hexValue(utf8[i + 2])
            {
                bytes.append(high << 4 | low)
                i += 3
            } else if plusIsSpace, byte == UInt8(ascii: "+") {
                bytes.append(UInt8(ascii: " "))
                i += 1
            } else {
                bytes.append(byte)
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}

extension Substring {
    func trimmingSpaces() -> Substring {
        var result = self
        while let first = result.first, first == " " || first == "\t" { result.removeFirst() }
        while let last = result.last, last == " " || last == "\t" { result.removeLast() }
        return result
    }
}
