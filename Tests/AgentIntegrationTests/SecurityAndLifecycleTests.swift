import Foundation
import Glibc
import Testing
import TraceCoreTestSupport

/// Tokens, TLS, persistence, signals: the real `traceplane serve` process, real HTTP (curl).
@Suite(.serialized, .enabled(if: RootRequirement.check("SecurityAndLifecycleTests") || RootRequirement.mustRun,
                             "needs root and a real kernel"))
struct SecurityAndLifecycleTests {
    let dir: String

    init() throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        dir = NSTemporaryDirectory() + "traceplane-sec-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try "admin-token-0123456789abcdef\n".write(toFile: "\(dir)/admin", atomically: true, encoding: .utf8)
        try "read-token-0123456789abcdef\n".write(toFile: "\(dir)/read", atomically: true, encoding: .utf8)
        chmod("\(dir)/admin", 0o600)
        chmod("\(dir)/read", 0o600)
    }

    static let admin = "admin-token-0123456789abcdef"
    static let reader = "read-token-0123456789abcdef"

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    func start(_ args: [String]) async throws -> AgentProcess {
        let agent = try AgentProcess(args)
        let listening = await agent.waitForListening()
        #expect(listening, "agent did not start: \(agent.log)")
        guard listening else { throw CancellationError() }
        // Ready once capabilities are probed and saved probes restored: the agent says so.
        let ready = await agent.waitForOutput(matching: "ready: [0-9]+ probes")
        #expect(ready != nil, "agent never got ready: \(agent.log)")
        return agent
    }

    func scheme(_ args: [String]) -> String { args.contains("--tls-cert") ? "https" : "http" }
    func curlTLS(_ args: [String]) -> [String] { args.contains("--tls-cert") ? ["--cacert", "\(dir)/ca.pem"] : [] }

    @Test("Listening beyond loopback without a token refuses to start, with a clear message")
    func refusesPublicListenWithoutToken() async throws {
        defer { cleanup() }
        let agent = try AgentProcess(["--listen", "0.0.0.0:0"])
        let status = await agent.waitForExit()
        #expect(status != nil && status != 0)
        #expect(agent.log.contains("token"), "message: \(agent.log)")
    }

    @Test("Tokens: none or wrong → 401 with WWW-Authenticate; read-only → GET only (403 on mutations); admin → everything; health stays open")
    func tokens() async throws {
        defer { cleanup() }
        let agent = try await start(["--listen", "127.0.0.1:0", "--token-file", "\(dir)/admin", "--read-token-file", "\(dir)/read"])
        let base = "http://127.0.0.1:\(agent.port)"
        #expect(try CurlClient.run("GET", "\(base)/healthz").status == 200)
        #expect(try CurlClient.run("GET", "\(base)/readyz").status == 200)
        let none = try CurlClient.run("GET", "\(base)/v1/probes")
        #expect(none.status == 401)
        #expect(none.headers.lowercased().contains("www-authenticate: bearer"))
        #expect(none.headers.lowercased().contains("application/problem+json"))
        let wrong = try CurlClient.run("GET", "\(base)/v1/probes", token: "not-the-token-at-all-xxxxx")
        #expect(wrong.status == 401)
        #expect(wrong.headers.contains("invalid_token"))
        #expect(try CurlClient.run("GET", "\(base)/v1/probes", token: Self.reader).status == 200)
        #expect(try CurlClient.run("GET", "\(base)/v1/capabilities", token: Self.reader).status == 200)
        #expect(try CurlClient.run("GET", "\(base)/metrics", token: Self.reader).status == 200)
        let spec = #"{"target":{"type":"syscall","name":"getpid"}}"#
        let forbidden = try CurlClient.run("PUT", "\(base)/v1/probes/p1", token: Self.reader, json: spec)
        #expect(forbidden.status == 403)
        #expect(try CurlClient.run("POST", "\(base)/v1/capabilities/refresh", token: Self.reader).status == 403)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/p1", token: Self.admin, json: spec).status == 201)
        #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/p1", token: Self.admin).status == 204)
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
    }

    @Test("TLS: curl with the test CA gets 200; plain HTTP on the TLS port gets no HTTP answer")
    func tls() async throws {
        defer { cleanup() }
        try TestCA.make(in: dir)
        let args = ["--listen", "127.0.0.1:0", "--tls-cert", "\(dir)/server.pem", "--tls-key", "\(dir)/server.key",
                    "--token-file", "\(dir)/admin"]
        let agent = try await start(args)
        let ok = try CurlClient.run("GET", "https://127.0.0.1:\(agent.port)/v1/probes", token: Self.admin, extra: ["--cacert", "\(dir)/ca.pem"])
        #expect(ok.status == 200)
        let untrusted = try CurlClient.run("GET", "https://127.0.0.1:\(agent.port)/healthz")
        #expect(untrusted.status < 0, "a client without the CA must not connect")
        let plain = try CurlClient.run("GET", "http://127.0.0.1:\(agent.port)/healthz")
        #expect(plain.status <= 0 || plain.status >= 400, "plain HTTP on the TLS port answered \(plain.status)")
        #expect(plain.status != 200)
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
    }

    @Test("SIGTERM detaches everything and exits 0; a restart with --state-dir brings the same probes back")
    func sigtermAndRestore() async throws {
        defer { cleanup() }
        let state = "\(dir)/state"
        let args = ["--listen", "127.0.0.1:0", "--state-dir", state]
        let first = try await start(args)
        var base = "http://127.0.0.1:\(first.port)"
        let created = try CurlClient.run("PUT", "\(base)/v1/probes/keep", json: #"{"target":{"type":"syscall","name":"read"},"ttl_seconds":3600,"labels":{"team":"kernel"}}"#)
        #expect(created.status == 201)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/switches", json: #"{"target":{"type":"tracepoint","name":"sched:sched_switch"}}"#).status == 201)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/switches", json: #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"mechanisms":["tracepoint"]}"#).status == 200)
        let expiresBefore = created.json?["expires_at"] as? String
        first.signal(SIGTERM)
        #expect(await first.waitForExit() == 0)
        #expect(await KernelCensus.settledPrograms().isEmpty, "programs left in the kernel after SIGTERM")

        let second = try await start(args)
        base = "http://127.0.0.1:\(second.port)"
        let listed = try #require(CurlClient.run("GET", "\(base)/v1/probes").json?["probes"] as? [[String: Any]])
        #expect(listed.map { $0["name"] as? String } == ["keep", "switches"])
        let keep = try #require(listed.first)
        #expect(keep["state"] as? String == "active")
        #expect((keep["spec"] as? [String: Any])?["labels"] as? [String: String] == ["team": "kernel"])
        #expect(keep["expires_at"] as? String == expiresBefore, "the remaining TTL is kept")
        #expect(listed.last?["generation"] as? Int == 2)
        #expect(listed.last?["mechanism"] as? String == "tracepoint")
        #expect(second.log.contains("restored probe keep"))
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == 0)
    }

    @Test("After kill -9 the kernel holds nothing of ours, and a restart restores the probes")
    func killNine() async throws {
        defer { cleanup() }
        let state = "\(dir)/state"
        let args = ["--listen", "127.0.0.1:0", "--state-dir", state]
        let first = try await start(args)
        let base = "http://127.0.0.1:\(first.port)"
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/a", json: #"{"target":{"type":"syscall","name":"getpid"}}"#).status == 201)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/b", json: #"{"target":{"type":"tracepoint","name":"sched:sched_switch"}}"#).status == 201)
        let ours = KernelCensus.programIDs().map(KernelCensus.programName)
        #expect(ours.contains { $0.hasPrefix("hub_") } && ours.contains { $0.hasPrefix("cnt_") }, "\(ours)")
        first.signal(SIGKILL)
        _ = await first.waitForExit()
        #expect(await KernelCensus.settledPrograms().isEmpty, "programs left in the kernel after kill -9")
        let pinned = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/fs/bpf")) ?? []
        #expect(!pinned.contains { $0.hasPrefix("traceplane") }, "nothing pinned")
        let second = try await start(args)
        let listed = try #require(CurlClient.run("GET", "http://127.0.0.1:\(second.port)/v1/probes").json?["probes"] as? [[String: Any]])
        #expect(Set(listed.compactMap { $0["name"] as? String }) == ["a", "b"])
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == 0)
    }

    @Test("A corrupt state file is reported and kept aside; the agent still starts")
    func corruptStateFile() async throws {
        defer { cleanup() }
        let state = "\(dir)/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        try "{ this is not json".write(toFile: "\(state)/probes.json", atomically: true, encoding: .utf8)
        let agent = try await start(["--listen", "127.0.0.1:0", "--state-dir", state])
        let files = try FileManager.default.contentsOfDirectory(atPath: state)
        #expect(files.contains { $0.hasPrefix("probes.json.corrupt-") }, "files: \(files)")
        #expect(agent.log.contains("corrupt"), "\(agent.log)")
        #expect(try CurlClient.run("GET", "http://127.0.0.1:\(agent.port)/healthz").status == 200)
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
    }

    @Test("A saved probe that no longer attaches is restored as failed, with its attempts")
    func restoreFailureIsReported() async throws {
        defer { cleanup() }
        let state = "\(dir)/state"
        try FileManager.default.createDirectory(atPath: state, withIntermediateDirectories: true)
        // A probe only fentry or kprobe could attach; the test kernel may have neither.
        let saved = #"{"version":1,"saved_at":"2026-01-01T00:00:00.000Z","probes":[{"spec":{"name":"fn","target":{"type":"function","name":"vfs_read"}},"created_at":"2026-01-01T00:00:00.000Z","expires_at":null,"generation":3}]}"#
        try saved.write(toFile: "\(state)/probes.json", atomically: true, encoding: .utf8)
        let agent = try await start(["--listen", "127.0.0.1:0", "--state-dir", state])
        let probe = try #require(CurlClient.run("GET", "http://127.0.0.1:\(agent.port)/v1/probes/fn").json)
        #expect(probe["generation"] as? Int == 3)
        if probe["state"] as? String == "failed" {
            #expect(probe["mechanism"] is NSNull)
            #expect((probe["attempts"] as? [[String: Any]])?.map { $0["mechanism"] as? String } == ["fentry", "kprobe"])
            #expect(agent.log.contains("could not restore probe fn"), "\(agent.log)")
            #expect(try CurlClient.run("GET", "http://127.0.0.1:\(agent.port)/v1/probes/fn/metrics").status == 409)
        } else {
            #expect(probe["state"] as? String == "active")
        }
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
        // Still desired: the state file keeps it.
        #expect(try String(contentsOfFile: "\(state)/probes.json", encoding: .utf8).contains("\"fn\""))
    }
}

/// A throwaway CA and a server certificate for 127.0.0.1, made with the openssl CLI.
enum TestCA {
    static func make(in dir: String) throws {
        func openssl(_ args: [String]) throws {
            let p = Process()
            p.executableURL = URL(fileURLWithPath: "/usr/bin/openssl")
            p.arguments = args
            p.standardOutput = Pipe()
            p.standardError = Pipe()
            try p.run()
            p.waitUntilExit()
            guard p.terminationStatus == 0 else { throw CancellationError() }
        }
        try "subjectAltName=IP:127.0.0.1,DNS:localhost\n".write(toFile: "\(dir)/san.ext", atomically: true, encoding: .utf8)
        try openssl(["req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=traceplane test CA",
                     "-keyout", "\(dir)/ca.key", "-out", "\(dir)/ca.pem"])
        try openssl(["req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1", "-keyout", "\(dir)/server.key", "-out", "\(dir)/server.csr"])
        try openssl(["x509", "-req", "-in", "\(dir)/server.csr", "-CA", "\(dir)/ca.pem", "-CAkey", "\(dir)/ca.key", "-CAcreateserial",
                     "-days", "1", "-extfile", "\(dir)/san.ext", "-out", "\(dir)/server.pem"])
    }
}
