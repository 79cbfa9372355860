import Foundation
import Testing

@testable import TraceAPI

@Suite("Router (in-process)")
struct RouterTests {
    private func makeRouter() -> Router {
        var router = Router()
        router.get("/healthz") { _, _ in .json(["status": "ok"]) }
        router.get("/v1/probes") { _, _ in .json(["probes": [String]()]) }
        router.post("/v1/probes") { request, _ in HTTPResponse(status: .created, body: request.body) }
        router.get("/v1/probes/{name}") { _, parameters in .json(["name": parameters["name"] ?? ""]) }
        router.put("/v1/probes/{name}") { _, parameters in .json(["put": parameters["name"] ?? ""]) }
        router.delete("/v1/probes/{name}") { _, _ in .empty() }
        router.get("/v1/probes/{name}/metrics") { _, parameters in .json(["metrics": parameters["name"] ?? ""]) }
        router.post("/v1/capabilities/refresh") { _, _ in .json(["refreshed": true]) }
        router.get("/v1/capabilities/{section}") { _, parameters in .json(["section": parameters["section"] ?? ""]) }
        router.post("/v1/raw", accepting: .any) { request, _ in HTTPResponse(status: .ok, body: request.body) }
        return router
    }

    private func problem(of response: HTTPResponse) throws -> Problem {
        try JSONDecoder().decode(Problem.self, from: Data(response.body))
    }

    private func json(of response: HTTPResponse) throws -> [String: JSONValue] {
        try JSONDecoder().decode([String: JSONValue].self, from: Data(response.body))
    }

    @Test func unknownPathIsA404Problem() async throws {
        let response = await makeRouter().respond(to: HTTPRequest(method: .get, target: "/nope"))
        #expect(response.status == .notFound)
        #expect(response.headers["content-type"] == "application/problem+json")
        let problem = try problem(of: response)
        #expect(problem.type == "https://traceplane.dev/problems/not-found")
        #expect(problem.status == .notFound)
    }

    @Test func trailingSlashIsADifferentPath() async {
        let response = await makeRouter().respond(to: HTTPRequest(method: .get, target: "/healthz/"))
        #expect(response.status == .notFound)
    }

    @Test func wrongMethodIsA405WithAllowListingEveryMethodOfThePath() async throws {
        let response = await makeRouter().respond(to: HTTPRequest(method: .patch, target: "/v1/probes/x"))
        #expect(response.status == .methodNotAllowed)
        #expect(response.headers["Allow"] == "GET, HEAD, PUT, DELETE")
        let problem = try problem(of: response)
        #expect(problem.type == "https://traceplane.dev/problems/method-not-allowed")
        #expect(problem.extensions["allowed"] == ["GET", "HEAD", "PUT", "DELETE"])
    }

    @Test func postOnlyPathAllowsNoHead() async {
        let response = await makeRouter().respond(to: HTTPRequest(method: .get, target: "/v1/raw"))
        #expect(response.status == .methodNotAllowed)
        #expect(response.headers["Allow"] == "POST")
    }

    @Test func headIsAnsweredByTheGetRoute() async throws {
        let response = await makeRouter().respond(to: HTTPRequest(method: .head, target: "/healthz"))
        #expect(response.status == .ok)
        #expect(try json(of: response) == ["status": "ok"])
    }

    @Test func parametersArePercentDecodedSegments() async throws {
        let router = makeRouter()
        let response = await router.respond(to: HTTPRequest(method: .get, target: "/v1/probes/read%2Dlatency%20x"))
        #expect(try json(of: response) == ["name": "read-latency x"])
        let metrics = await router.respond(to: HTTPRequest(method: .get, target: "/v1/probes/p1/metrics?window=5"))
        #expect(try json(of: metrics) == ["metrics": "p1"])
    }

    @Test func emptySegmentDoesNotMatchAParameter() async {
        let response = await makeRouter().respond(to: HTTPRequest(method: .get, target: "/v1/probes//metrics"))
        #expect(response.status == .notFound)
    }

    @Test func literalSegmentBeatsParameter() throws {
        let router = makeRouter()
        guard case .methodNotAllowed(let allowed) = router.resolve(method: .delete, path: "/v1/capabilities/refresh")
        else {
            Issue.record("expected 405")
            return
        }
        #expect(allowed == [.get, .head, .post])
        guard case .found(_, let parameters) = router.resolve(method: .get, path: "/v1/capabilities/refresh") else {
            Issue.record("GET should fall back to the parameter route")
            return
        }
        #expect(parameters == ["section": "refresh"])
    }

    @Test func jsonBodyIsRequiredOnPost() async throws {
        let router = makeRouter()
        let text = await router.respond(
            to: HTTPRequest(method: .post, target: "/v1/probes", headers: ["Content-Type": "text/plain"], body: [65]))
        #expect(text.status == .unsupportedMediaType)
        #expect(try problem(of: text).type == "https://traceplane.dev/problems/unsupported-media-type")

        let missing = await router.respond(to: HTTPRequest(method: .post, target: "/v1/probes", body: [65]))
        #expect(missing.status == .unsupportedMediaType)

        let json = await router.respond(
            to: HTTPRequest(
                method: .post, target: "/v1/probes", headers: ["content-type": "Application/JSON; charset=utf-8"],
                body: Array("{}".utf8)))
        #expect(json.status == .created)

        let empty = await router.respond(to: HTTPRequest(method: .post, target: "/v1/probes"))
        #expect(empty.status == .created)

        let any = await router.respond(
            to: HTTPRequest(method: .post, target: "/v1/raw", headers: ["Content-Type": "text/plain"], body: [65]))
        #expect(any.status == .ok)
    }

    @Test func unknownPathWinsOverMediaTypeCheck() async {
        let response = await makeRouter().respond(
            to: HTTPRequest(method: .post, target: "/nope", headers: ["Content-Type": "text/plain"], body: [65]))
        #expect(response.status == .notFound)
    }

    @Test func requestTargetIsSplitIntoPathAndQuery() {
        let request = HTTPRequest(method: .get, target: "/a/b%20c?x=1&y=two+words&x=2&flag&e=%41%zz")
        #expect(request.path == "/a/b%20c")
        #expect(request.rawQuery == "x=1&y=two+words&x=2&flag&e=%41%zz")
        #expect(request.query == ["x": "1", "y": "two words", "flag": "", "e": "A%zz"])

        let absolute = HTTPRequest(method: .get, target: "http://localhost:9480/healthz?a=b")
        #expect(absolute.path == "/healthz")
        #expect(absolute.query == ["a": "b"])
        #expect(HTTPRequest(method: .get, target: "/x").rawQuery == nil)
    }

    @Test func headersAreCaseInsensitive() {
        var headers: HTTPHeaders = ["Content-Type": "application/json", "X-A": "1"]
        headers.add("x-a", "2")
        #expect(headers["content-type"] == "application/json")
        #expect(headers.values(for: "X-a") == ["1", "2"])
        headers["X-A"] = "3"
        #expect(headers.values(for: "x-a") == ["3"])
        headers["x-a"] = nil
        #expect(!headers.contains("X-A"))
    }
}
