import Foundation
import Synchronization
import Testing

@testable import TraceAPI

#if canImport(Glibc)
import Glibc
#endif

/// Socket tests: a real server on 127.0.0.1, an ephemeral port, and curl.
/// Serialized because they check the process-wide count of live request contexts.
@Suite("HTTPServer over sockets", .serialized)
struct HTTPServerTests {
    static func makeRouter(handlerDelay: Duration = .zero) -> Router {
        var router = Router()
        router.get("/healthz") { _, _ in .json(["status": "ok"]) }
        router.get("/slow") { _, _ in
            try? await Task.sleep(for: handlerDelay)
            return .json(["slow": true])
        }
        router.get("/items/{name}") { request, parameters in
            .json([
                "name": JSONValue.string(parameters["name"] ?? ""),
                "query": .object(request.query.mapValues { .string($0) }),
                "raw_query": request.rawQuery.map { .string($0) } ?? .null,
                "remote": request.remoteAddress.map { .string($0) } ?? .null,
                "user_agent": request.headers["user-agent"].map { .string($0) } ?? .null,
            ])
        }
        router.post("/echo") { request, _ in
            HTTPResponse(status: .created, headers: ["Content-Type": "application/json"], body: request.body)
        }
        router.delete("/items/{name}") { _, _ in .empty() }
        return router
    }

    static func withServer<R>(
        _ configuration: HTTPServer.Configuration = HTTPServer.Configuration(port: 0),
        router: Router = makeRouter(),
        _ body: (HTTPServer, String) async throws -> R
    ) async throws -> R {
        let server = HTTPServer(configuration: configuration, responder: router)
        try server.start()
        defer { server.stop() }
        return try await body(server, "http://127.0.0.1:\(server.port)")
    }

    /// Waits until every request context has been freed.
    static func expectNoLiveRequests(sourceLocation: SourceLocation = #_sourceLocation) async throws {
        let deadline = ContinuousClock.now + .seconds(3)
        while RequestContext.live.load(ordering: .relaxed) != 0, ContinuousClock.now < deadline {
            try await Task.sleep(for: .milliseconds(10))
        }
        #expect(RequestContext.live.load(ordering: .relaxed) == 0, sourceLocation: sourceLocation)
    }

    @Test func portZeroBindsAnEphemeralPort() async throws {
        try await Self.withServer { server, _ in
            #expect(server.port > 0)
            #expect(server.port != 9480)
        }
    }

    @Test func getJSONRoute() async throws {
        try await Self.withServer { server, base in
            let response = try await Curl.request("GET", base + "/healthz")
            #expect(response.status == 200)
            #expect(response.headers["Content-Type"] == "application/json")
            #expect(response.headers["Content-Length"] == "\(response.body.count)")
            #expect(try response.json() == ["status": "ok"])
            #expect(server.requestCounts[.get, .ok] == 1)
        }
        try await Self.expectNoLiveRequests()
    }

    @Test func parametersQueryHeadersAndRemoteAddressReachTheHandler() async throws {
        try await Self.withServer { _, base in
            let response = try await Curl.request(
                "GET", base + "/items/a%20b?x=1&y=two+words", headers: ["User-Agent": "tp-test"])
            #expect(response.status == 200)
            #expect(
                try response.json() == [
                    "name": "a b", "query": ["x": "1", "y": "two words"], "raw_query": "x=1&y=two+words",
                    "remote": "127.0.0.1", "user_agent": "tp-test",
                ])
        }
    }

    @Test func headGetsHeadersButNoBody() async throws {
        try await Self.withServer { server, _ in
            let response = try RawHTTP.exchange(
                port: server.port, "HEAD /healthz HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            #expect(response.hasPrefix("HTTP/1.1 200 OK\r\n"))
            #expect(response.contains("\r\nContent-Length: \("{\"status\":\"ok\"}\n".utf8.count)\r\n"))
            #expect(response.hasSuffix("\r\n\r\n"), "HEAD response has a body: \(response)")
        }
    }

    @Test func unknownPathIs404Problem() async throws {
        try await Self.withServer { _, base in
            let response = try await Curl.request("GET", base + "/nope")
            #expect(response.status == 404)
            #expect(response.headers["Content-Type"] == "application/problem+json")
            let problem = try response.json()
            #expect(problem["type"] == "https://traceplane.dev/problems/not-found")
            #expect(problem["status"] == 404)
        }
    }

    @Test func wrongMethodIs405WithAllow() async throws {
        try await Self.withServer { _, base in
            let response = try await Curl.request("PUT", base + "/healthz")
            #expect(response.status == 405)
            #expect(response.headers["Allow"] == "GET, HEAD")
            #expect(response.headers["Content-Type"] == "application/problem+json")
        }
    }

    @Test func noContentHasNoBody() async throws {
        try await Self.withServer { _, base in
            let response = try await Curl.request("DELETE", base + "/items/x")
            #expect(response.status == 204)
            #expect(response.body.isEmpty)
        }
    }

    @Test func postBodyIsEchoed() async throws {
        try await Self.withServer { server, base in
            let payload = Array(#"{"name":"read-latency","target":{"type":"syscall","name":"read"}}"#.utf8)
            let response = try await Curl.request(
                "POST", base + "/echo", headers: ["Content-Type": "application/json"], body: payload)
            #expect(response.status == 201)
            #expect(response.body == payload)

            // Exactly at the limit is accepted.
            let atLimit = Array(repeating: UInt8(ascii: " "), count: 64 * 1024)
            let big = try await Curl.request(
                "POST", base + "/echo", headers: ["Content-Type": "application/json"], body: atLimit)
            #expect(big.status == 201)
            #expect(big.body.count == atLimit.count)
            #expect(server.requestCounts[.post, .created] == 2)
        }
    }

    @Test func bodyOverTheLimitIs413() async throws {
        try await Self.withServer { server, base in
            let body = Array(repeating: UInt8(ascii: "a"), count: 64 * 1024 + 1)
            let declared = try await Curl.request(
                "POST", base + "/echo", headers: ["Content-Type": "application/json"], body: body)
            #expect(declared.status == 413)
            #expect(declared.headers["Content-Type"] == "application/problem+json")
            #expect(try declared.json()["type"] == "https://traceplane.dev/problems/content-too-large")

            let large = Array(repeating: UInt8(ascii: "a"), count: 300 * 1024)
            let chunked = try await Curl.request(
                "POST", base + "/echo",
                headers: ["Content-Type": "application/json", "Transfer-Encoding": "chunked"], body: large)
            #expect(chunked.status == 413)
            #expect(server.requestCounts[.post, .contentTooLarge] == 2)

            // The server still serves afterwards.
            #expect(try await Curl.request("GET", base + "/healthz").status == 200)
        }
        try await Self.expectNoLiveRequests()
    }

    @Test func wrongContentTypeIs415() async throws {
        try await Self.withServer { _, base in
            let response = try await Curl.request(
                "POST", base + "/echo", headers: ["Content-Type": "text/plain"], body: Array("hello".utf8))
            #expect(response.status == 415)
            #expect(try response.json()["type"] == "https://traceplane.dev/problems/unsupported-media-type")
        }
    }

    @Test(arguments: [1, 4])
    func hundredConcurrentRequestsAreServedConcurrently(pollingThreads: Int) async throws {
        // Each handler sleeps 200 ms: served one after the other, 100 would take 20 s.
        try await Self.withServer(
            HTTPServer.Configuration(port: 0, threadPoolSize: pollingThreads),
            router: Self.makeRouter(handlerDelay: .milliseconds(200))
        ) { server, base in
            let urls = (0..<100).flatMap { _ in ["-o", "/dev/null", base + "/slow"] }
            let started = ContinuousClock.now
            let (exitCode, stdout, stderr) = try await Curl.run(
                ["-sS", "--parallel", "--parallel-immediate", "--parallel-max", "100", "--max-time", "10",
                 "-w", "%{http_code}\n"] + urls)
            let elapsed = ContinuousClock.now - started
            #expect(exitCode == 0, "\(stderr)")
            let statuses = stdout.split(separator: "\n")
            #expect(statuses.count == 100)
            #expect(statuses.allSatisfy { $0 == "200" })
            #expect(elapsed < .seconds(5), "100 requests took \(elapsed)")
            #expect(server.requestCounts[.get, .ok] == 100)
        }
        try await Self.expectNoLiveRequests()
    }

    @Test func clientThatDisconnectsWhileSuspendedLeaksNothing() async throws {
        try await Self.withServer(router: Self.makeRouter(handlerDelay: .milliseconds(500))) { server, base in
            let response = try await Curl.request("GET", base + "/slow", timeout: 0.1)
            #expect(response.exitCode == 28)  // curl: operation timed out
            // The handler finishes after the client left; the response is dropped.
            try await Task.sleep(for: .milliseconds(600))
            #expect(try await Curl.request("GET", base + "/healthz").status == 200)
        }
        try await Self.expectNoLiveRequests()
    }

    @Test func stopAnswersRunningRequestsWith503AndDoesNotWaitForTheirHandlers() async throws {
        let server = HTTPServer(
            configuration: HTTPServer.Configuration(port: 0), responder: Self.makeRouter(handlerDelay: .milliseconds(800)))
        try server.start()
        let base = "http://127.0.0.1:\(server.port)"
        async let pending = Curl.request("GET", base + "/slow")
        try await Task.sleep(for: .milliseconds(300))
        let started = ContinuousClock.now
        server.stop()
        #expect(ContinuousClock.now - started < .milliseconds(500))
        let response = try await pending
        #expect(response.status == 503, "\(response.stderr)")
        #expect(try response.json()["type"] == "https://traceplane.dev/problems/service-unavailable")
        server.stop()
        // The handler task ends later; its response is dropped and nothing leaks.
        try await Self.expectNoLiveRequests()
    }

    @Test func idleConnectionIsClosedAfterTheTimeout() async throws {
        try await Self.withServer(HTTPServer.Configuration(port: 0, connectionTimeout: .seconds(1))) { server, _ in
            let started = ContinuousClock.now
            // An unfinished request head, then silence.
            let response = try RawHTTP.exchange(port: server.port, "GET /healthz HTTP/1.1\r\n")
            let elapsed = ContinuousClock.now - started
            #expect(!response.contains("200 OK"))
            #expect(elapsed >= .milliseconds(900) && elapsed < .seconds(3), "closed after \(elapsed)")
        }
    }

    @Test func stopIsIdempotentAndThenConnectionsAreRefused() async throws {
        let server = HTTPServer(configuration: HTTPServer.Configuration(port: 0), responder: Self.makeRouter())
        try server.start()
        let base = "http://127.0.0.1:\(server.port)"
        #expect(try await Curl.request("GET", base + "/healthz").status == 200)
        server.stop()
        server.stop()
        let refused = try await Curl.request("GET", base + "/healthz")
        #expect(refused.exitCode == 7, "\(refused.stderr)")  // curl: couldn't connect
    }

    @Test func addressInUseThrowsWithErrno() async throws {
        try await Self.withServer { server, _ in
            let second = HTTPServer(
                configuration: HTTPServer.Configuration(port: server.port), responder: Self.makeRouter())
            let error = #expect(throws: HTTPServerError.self) { try second.start() }
            #expect(error?.code == .startFailed)
            #expect(error?.errorNumber == EADDRINUSE)
            #expect(error?.errorName == "EADDRINUSE")
            #expect(error?.description.contains("127.0.0.1:\(server.port)") == true)
        }
    }

    @Test func invalidHostAndPortAreRejected() {
        let badHost = HTTPServer(
            configuration: HTTPServer.Configuration(host: "localhost", port: 0), responder: Self.makeRouter())
        #expect(throws: HTTPServerError.self) { try badHost.start() }
        let error = #expect(throws: HTTPServerError.self) {
            try HTTPServer(configuration: HTTPServer.Configuration(port: 70000), responder: Self.makeRouter()).start()
        }
        #expect(error?.code == .invalidConfiguration)
    }

    @Test(.enabled(if: FileManager.default.isExecutableFile(atPath: "/usr/bin/openssl")))
    func servesHTTPSWithPEMCertificateAndKey() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tls-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let key = directory.appendingPathComponent("key.pem").path
        let certificate = directory.appendingPathComponent("cert.pem").path
        let openssl = Process()
        openssl.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
        openssl.arguments = [
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "1",
            "-subj", "/CN=localhost", "-keyout", key, "-out", certificate,
        ]
        openssl.standardError = FileHandle.nullDevice
        try openssl.run()
        openssl.waitUntilExit()
        try #require(openssl.terminationStatus == 0)

        let tls = HTTPServer.Configuration.TLS(
            certificatePEM: try String(contentsOfFile: certificate, encoding: .utf8),
            privateKeyPEM: try String(contentsOfFile: key, encoding: .utf8))
        try await Self.withServer(HTTPServer.Configuration(port: 0, tls: tls)) { server, _ in
            // The certificate names localhost, so verify against that name.
            let verified = try await Curl.request(
                "GET", "https://localhost:\(server.port)/healthz",
                arguments: ["--cacert", certificate, "--resolve", "localhost:\(server.port):127.0.0.1"])
            #expect(verified.status == 200, "\(verified.stderr)")
            #expect(try verified.json() == ["status": "ok"])
            let plain = try await Curl.request("GET", "http://127.0.0.1:\(server.port)/healthz", timeout: 2)
            #expect(plain.status != 200)
        }
    }

    @Test func ipv6LoopbackWorks() async throws {
        try await Self.withServer(HTTPServer.Configuration(host: "::1", port: 0)) { server, _ in
            let response = try await Curl.request("GET", "http://[::1]:\(server.port)/items/x")
            #expect(response.status == 200)
            #expect(try response.json()["remote"] == "::1")
        }
    }
}
