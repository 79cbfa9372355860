import Foundation
import Glibc

/// The agent's bearer tokens: an admin token (everything) and a read-only token (GET,
/// HEAD and `/metrics`). Read from files only, never from arguments or the environment.
public struct AccessTokens: Sendable {
    public var admin: [UInt8]?
    public var readOnly: [UInt8]?

    public init(admin: [UInt8]?, readOnly: [UInt8]?) {
        self.admin = admin
        self.readOnly = readOnly
    }

    /// True when at least one token is configured.
    public var enabled: Bool { admin != nil || readOnly != nil }

    /// Shortest token accepted, in bytes.
    public static let minimumLength = 16

    /// Reads a token file: its content without surrounding whitespace.
    ///
    /// - Throws: ``TokenFileError`` when the file cannot be read, is empty, too short,
    ///   or holds characters a bearer token cannot carry.
    public static func read(file path: String) throws(TokenFileError) -> [UInt8] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw TokenFileError(path: path, reason: "cannot be read (\(String(cString: strerror(errno))))")
        }
        let text = String(decoding: data, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
        guard text.utf8.count >= minimumLength else {
            throw TokenFileError(path: path, reason: "holds \(text.utf8.count) bytes; a token needs at least \(minimumLength)")
        }
        // RFC 6750 b64token characters.
        let allowed = Set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-._~+/=".utf8)
        guard text.utf8.allSatisfy(allowed.contains) else {
            throw TokenFileError(path: path, reason: "holds characters a bearer token cannot carry (use letters, digits and -._~+/=)")
        }
        return Array(text.utf8)
    }

    /// Whether the file can be read by users other than its owner (worth a warning).
    public static func isExposed(file path: String) -> Bool {
        var info = stat()
        guard stat(path, &info) == 0 else { return false }
        return info.st_mode & 0o077 != 0
    }
}

public struct TokenFileError: Error, Sendable, CustomStringConvertible {
    public var path: String
    public var reason: String
    public var description: String { "token file \(path) \(reason)" }
}

/// Compares two byte strings in time that depends only on `expected`'s length.
public func constantTimeEquals(_ presented: [UInt8], _ expected: [UInt8]) -> Bool {
    var difference = UInt8(truncatingIfNeeded: presented.count ^ expected.count) | (presented.count == expected.count ? 0 : 1)
    for i in 0..<expected.count {
        let p = i < presented.count ? presented[i] : 0
        difference |= p ^ expected[i]
    }
    return difference == 0
}

/// Checks bearer tokens before any route runs. `/healthz` and `/readyz` stay open.
/// No token: 401 with `WWW-Authenticate`; a read-only token on a mutation: 403.
public struct BearerAuth: HTTPResponder {
    public let next: any HTTPResponder
    public let tokens: AccessTokens
    public static let openPaths: Set<String> = ["/healthz", "/readyz"]
    static let readMethods: Set<HTTPMethod> = [.get, .head]

    public init(tokens: AccessTokens, next: any HTTPResponder) {
        self.tokens = tokens
        self.next = next
    }

    public func respond(to request: HTTPRequest) async -> HTTPResponse {
        guard tokens.enabled, !Self.openPaths.contains(request.path) else { return await next.respond(to: request) }
        guard let header = request.headers["Authorization"] else {
            return Self.unauthorized("This endpoint needs a bearer token (Authorization: Bearer <token>).", error: nil)
        }
        let parts = header.split(separator: " ", maxSplits: 1)
        guard parts.count == 2, parts[0].lowercased() == "bearer" else {
            return Self.unauthorized("Only bearer tokens are accepted (Authorization: Bearer <token>).", error: "invalid_request")
        }
        let presented = Array(parts[1].trimmingCharacters(in: .whitespaces).utf8)
        if let admin = tokens.admin, constantTimeEquals(presented, admin) {
            return await next.respond(to: request)
        }
        if let readOnly = tokens.readOnly, constantTimeEquals(presented, readOnly) {
            if Self.readMethods.contains(request.method) { return await next.respond(to: request) }
            return .problem(Problem(slug: "forbidden", title: "Forbidden", status: .forbidden,
                                    detail: "The read-only token allows GET requests only; \(request.method) needs the admin token."))
        }
        return Self.unauthorized("The bearer token is not valid.", error: "invalid_token")
    }

    static func unauthorized(_ detail: String, error: String?) -> HTTPResponse {
        var challenge = #"Bearer realm="traceplane""#
        if let error { challenge += #", error="\#(error)""# }
        return .problem(Problem(slug: "unauthorized", title: "Unauthorized", status: .unauthorized, detail: detail),
                        headers: ["WWW-Authenticate": challenge])
    }
}
