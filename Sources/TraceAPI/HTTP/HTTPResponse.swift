import Foundation
import TraceCore

/// An HTTP response: a complete body, or a streamed one (``stream``). The transport
/// adds `Date`, and `Content-Length` for a complete body.
public struct HTTPResponse: Sendable {
    public var status: HTTPStatus
    public var headers: HTTPHeaders
    public var body: [UInt8]
    /// A body produced while it is sent; when set, ``body`` is ignored. The transport
    /// sends it chunked (HTTP/1.1) and calls ``HTTPBodyStream/close()`` exactly once
    /// when the response is over, also when it is never sent (the server stopped
    /// first, the client left before the handler returned).
    public var stream: (any HTTPBodyStream)?

    public init(status: HTTPStatus, headers: HTTPHeaders = HTTPHeaders(), body: [UInt8] = []) {
        self.status = status
        self.headers = headers
        self.body = body
    }

    /// The encoder every JSON body goes through: sorted keys, unescaped slashes,
    /// ISO 8601 (RFC 3339) dates in whole seconds, UTC (the text of `.iso8601`, formatted
    /// without ICU: see ``ReportJSON/rfc3339Seconds(_:)``).
    public static func makeJSONEncoder() -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var container = encoder.singleValueContainer()
            try container.encode(ReportJSON.rfc3339Seconds(date))
        }
        return encoder
    }

    /// `value` as `application/json`, followed by a newline (friendlier to `curl`).
    ///
    /// If `value` cannot be encoded (a bug), the response is a 500 problem instead.
    public static func json(
        status: HTTPStatus = .ok, _ value: some Encodable, headers: HTTPHeaders = HTTPHeaders()
    ) -> HTTPResponse {
        encoded(status: status, value, mediaType: "application/json", headers: headers)
    }

    /// `problem` as `application/problem+json`, with the problem's status.
    public static func problem(_ problem: Problem, headers: HTTPHeaders = HTTPHeaders()) -> HTTPResponse {
        encoded(status: problem.status, problem, mediaType: Problem.mediaType, headers: headers)
    }

    /// A problem of type `https://traceplane.dev/problems/<slug>`.
    public static func problem(
        status: HTTPStatus, slug: String, title: String, detail: String,
        extensions: [String: JSONValue] = [:], headers: HTTPHeaders = HTTPHeaders()
    ) -> HTTPResponse {
        problem(Problem(slug: slug, title: title, status: status, detail: detail, extensions: extensions), headers: headers)
    }

    /// Plain text (UTF-8) or any other textual media type, such as the Prometheus format.
    public static func text(
        status: HTTPStatus = .ok, _ text: String, contentType: String = "text/plain; charset=utf-8",
        headers: HTTPHeaders = HTTPHeaders()
    ) -> HTTPResponse {
        var headers = headers
        headers["Content-Type"] = contentType
        return HTTPResponse(status: status, headers: headers, body: Array(text.utf8))
    }

    /// A response whose body is pulled from `body` while it is sent (Server-Sent
    /// Events, NDJSON).
    ///
    /// The connection closes after the body (unless `headers` has a `Connection`
    /// field), and is dropped when the client accepts nothing for
    /// ``HTTPServer/Configuration/streamTimeout``. While the stream has nothing to
    /// send, the connection is parked and a client that leaves is only noticed at the
    /// next write: a long-lived stream should write keep-alives.
    public static func stream(
        status: HTTPStatus = .ok, headers: HTTPHeaders = HTTPHeaders(), _ body: any HTTPBodyStream
    ) -> HTTPResponse {
        var response = HTTPResponse(status: status, headers: headers)
        response.stream = body
        return response
    }

    /// No body, e.g. 204 after a DELETE.
    public static func empty(status: HTTPStatus = .noContent, headers: HTTPHeaders = HTTPHeaders()) -> HTTPResponse {
        HTTPResponse(status: status, headers: headers)
    }

    private static func encoded(
        status: HTTPStatus, _ value: some Encodable, mediaType: String, headers: HTTPHeaders
    ) -> HTTPResponse {
        var headers = headers
        do {
            var body = Array(try makeJSONEncoder().encode(value))
            body.append(UInt8(ascii: "\n"))
            headers["Content-Type"] = mediaType
            return HTTPResponse(status: status, headers: headers, body: body)
        } catch {
            let problem = Problem.internalError(detail: "The response could not be encoded as JSON: \(error).")
            // A Problem always encodes: plain strings and an integer.
            var body = (try? Array(makeJSONEncoder().encode(problem))) ?? []
            body.append(UInt8(ascii: "\n"))
            return HTTPResponse(
                status: .internalServerError, headers: ["Content-Type": Problem.mediaType], body: body)
        }
    }
}
