import Foundation
import Testing

@testable import TraceAPI

@Suite("Problem details (RFC 9457)")
struct ProblemTests {
    private struct Attempt: Encodable {
        var mechanism: String
        var outcome: String
        var errno: String?
    }

    private func object(_ response: HTTPResponse) throws -> [String: JSONValue] {
        try JSONDecoder().decode([String: JSONValue].self, from: Data(response.body))
    }

    @Test func standardAndExtensionMembersAreTopLevel() throws {
        let attempts = try JSONValue(encoding: [
            Attempt(mechanism: "fentry", outcome: "denied", errno: "EPERM"),
            Attempt(mechanism: "kprobe", outcome: "unsupported", errno: nil),
        ])
        let problem = Problem(
            slug: "attach-failed", title: "No mechanism could attach", status: .unprocessableContent,
            detail: "function vfs_read: every mechanism failed", extensions: ["attempts": attempts])
        let response = HTTPResponse.problem(problem)

        #expect(response.status == .unprocessableContent)
        #expect(response.headers["Content-Type"] == "application/problem+json")
        #expect(
            try object(response) == [
                "type": "https://traceplane.dev/problems/attach-failed",
                "title": "No mechanism could attach",
                "status": 422,
                "detail": "function vfs_read: every mechanism failed",
                "attempts": [
                    ["mechanism": "fentry", "outcome": "denied", "errno": "EPERM"],
                    ["mechanism": "kprobe", "outcome": "unsupported"],
                ],
            ])
    }

    @Test func serializationIsStableAndEndsWithANewline() {
        let response = HTTPResponse.problem(
            .badRequest(detail: "bad spec", errors: [["field": "name", "message": "too long"]]))
        let text = String(decoding: response.body, as: UTF8.self)
        #expect(
            text
                == #"{"detail":"bad spec","errors":[{"field":"name","message":"too long"}],"status":400,"title":"Bad Request","type":"https://traceplane.dev/problems/bad-request"}"#
                + "\n")
    }

    @Test func decodesBackWithExtensions() throws {
        let original = Problem.contentTooLarge(limit: 65536)
        let decoded = try JSONDecoder().decode(Problem.self, from: Data(HTTPResponse.problem(original).body))
        #expect(decoded == original)
        #expect(decoded.extensions["limit_bytes"] == 65536)
    }

    @Test func jsonResponsesUseSortedKeysAndISO8601Dates() {
        struct Payload: Encodable {
            var zeta = 1
            var alpha = Date(timeIntervalSince1970: 0)
        }
        let response = HTTPResponse.json(status: .created, Payload())
        #expect(response.status == .created)
        #expect(response.headers["Content-Type"] == "application/json")
        #expect(String(decoding: response.body, as: UTF8.self) == #"{"alpha":"1970-01-01T00:00:00Z","zeta":1}"# + "\n")
    }

    @Test func textResponse() {
        let response = HTTPResponse.text("# HELP x\n", contentType: "text/plain; version=0.0.4")
        #expect(response.status == .ok)
        #expect(response.headers["content-type"] == "text/plain; version=0.0.4")
        #expect(response.body == Array("# HELP x\n".utf8))
    }
}
