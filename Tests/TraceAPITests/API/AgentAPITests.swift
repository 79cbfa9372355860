import Foundation
import Testing
@testable import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// The v1 handlers in-process: `router().respond(to:)` on a probe manager over the fake
/// kernel. No sockets (HTTPServerTests and the integration tests prove the wiring).
@Suite("AgentAPI handlers (in-process)")
struct AgentAPITests {
    let kernel: FakeKernel
    let reaper = Reaper()
    let capabilities: CapabilityStore
    let clock = ManualClock()

    init() async {
        kernel = .developmentMachine()
        capabilities = CapabilityStore(prober: CapabilityProber(backend: kernel, reaper: Reaper()))
        _ = await capabilities.refresh()
    }

    func api(state: StateStore? = nil, maxProbes: Int = 256) -> (AgentAPI, ProbeManager) {
        let capabilities = self.capabilities
        let probes = ProbeManager(planner: Planner(backend: kernel, reaper: reaper), maxProbes: maxProbes, state: state, clock: clock,
                                  report: { await capabilities.current })
        return (AgentAPI(capabilities: capabilities, probes: probes), probes)
    }

    func send(_ api: AgentAPI, _ method: HTTPMethod, _ target: String, _ body: String? = nil) async -> HTTPResponse {
        var headers = HTTPHeaders()
        if body != nil { headers["Content-Type"] = "application/json" }
        return await api.router().respond(to: HTTPRequest(method: method, target: target, headers: headers, body: Array((body ?? "").utf8)))
    }

    func object(_ response: HTTPResponse) throws -> [String: Any] {
        try #require(try JSONSerialization.jsonObject(with: Data(response.body)) as? [String: Any])
    }

    static let read = #"{"target":{"type":"syscall","name":"read"}}"#
    static let write = #"{"target":{"type":"syscall","name":"write"}}"#

    @Test("PUT says how it ended: 201 created, 200 unchanged, 200 replaced, each in Probe-Outcome, with Location")
    func putOutcomes() async throws {
        let (api, probes) = api()
        let created = await send(api, .put, "/v1/probes/p", Self.read)
        #expect(created.status == .created)
        #expect(created.headers["Probe-Outcome"] == "created" && created.headers["Location"] == "/v1/probes/p")
        let again = await send(api, .put, "/v1/probes/p", Self.read)
        #expect(again.status == .ok && again.headers["Probe-Outcome"] == "unchanged")
        let replaced = await send(api, .put, "/v1/probes/p", Self.write)
        #expect(replaced.status == .ok && replaced.headers["Probe-Outcome"] == "replaced")
        let body = try object(replaced)
        #expect(body["generation"] as? Int == 2 && body["state"] as? String == "active" && body["mechanism"] as? String == "tp_btf")
        let attempts = try #require(body["attempts"] as? [[String: Any]])
        #expect(attempts.map { $0["mechanism"] as? String } == ["fentry", "kprobe", "tp_btf"])
        #expect(attempts.first?["errno"] as? String == "EPERM" && attempts.first?["stage"] as? String == "load")
        await probes.removeAll()
    }

    @Test("GET, metrics and DELETE of a probe; then 404 problems")
    func lifecycle() async throws {
        let (api, probes) = api()
        #expect(await send(api, .post, "/v1/probes", #"{"name":"m","target":{"type":"tracepoint","name":"sched:sched_switch"}}"#).status == .created)
        #expect(await send(api, .get, "/v1/probes/m").status == .ok)
        let metrics = try object(await send(api, .get, "/v1/probes/m/metrics"))
        #expect(metrics["mechanism"] as? String == "tp_btf" && metrics["latency_ns"] is NSNull && metrics["calls"] as? Int == 0)
        #expect(await send(api, .delete, "/v1/probes/m").status == .noContent)
        let missing = await send(api, .delete, "/v1/probes/m")
        #expect(missing.status == .notFound && missing.headers["Content-Type"] == Problem.mediaType)
        #expect(try object(missing)["type"] as? String == Problem.typeBase + "probe-not-found")
        #expect(await send(api, .get, "/v1/probes/m/metrics").status == .notFound)
        await probes.removeAll()
    }

    @Test("No flavour attaches: 422 with every attempt")
    func attachFailed() async throws {
        let (api, probes) = api()
        let response = await send(api, .put, "/v1/probes/f", #"{"target":{"type":"function","name":"vfs_read"}}"#)
        #expect(response.status == .unprocessableContent)
        let problem = try object(response)
        #expect(problem["type"] as? String == Problem.typeBase + "attach-failed")
        #expect((problem["attempts"] as? [[String: Any]])?.map { $0["mechanism"] as? String } == ["fentry", "kprobe"])
        #expect(await probes.count == 0)
    }

    @Test("The agent out of fds: 503 with Retry-After and the attempts, not 422; nothing kept")
    func exhaustionIs503() async throws {
        kernel.failLoad(object: SyscallHubBPF.object, with: KernelError(stage: .load, errno: .EMFILE, operation: "load hub"))
        let (api, probes) = api()
        let response = await send(api, .put, "/v1/probes/x", Self.read)
        #expect(response.status == .serviceUnavailable)
        #expect(response.headers["Retry-After"] == "5")
        let problem = try object(response)
        #expect(problem["type"] as? String == Problem.typeBase + "agent-resources-exhausted")
        #expect((problem["detail"] as? String)?.contains("EMFILE") == true)
        #expect((problem["attempts"] as? [[String: Any]])?.last?["errno"] as? String == "EMFILE")
        #expect(await probes.count == 0)
        reaper.drain()
        #expect(kernel.openObjects.filter { $0.spec.object != CapabilityBPF.object }.isEmpty)
    }

    @Test("A change that cannot be saved: 507 (disk full) or 503 with Retry-After, /readyz 503, and nothing changed")
    func unsavedChangeIsRefused() async throws {
        let dir = NSTemporaryDirectory() + "agent-api-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let (api, probes) = api(state: try StateStore(directory: dir))
        #expect(await send(api, .put, "/v1/probes/kept", Self.read).status == .created)
        #expect(await send(api, .get, "/readyz").status == .ok)
        try FileManager.default.removeItem(atPath: dir)
        #expect(FileManager.default.createFile(atPath: dir, contents: Data()))  // saves now fail with ENOTDIR
        let response = await send(api, .delete, "/v1/probes/kept")
        #expect(response.status == .serviceUnavailable && response.headers["Retry-After"] == "5")
        let problem = try object(response)
        #expect(problem["type"] as? String == Problem.typeBase + "state-not-saved" && problem["errno"] as? String == "ENOTDIR")
        #expect(await send(api, .get, "/v1/probes/kept").status == .ok, "the refused DELETE changed nothing")
        let ready = await send(api, .get, "/readyz")
        #expect(ready.status == .serviceUnavailable && ready.headers["Retry-After"] == "1")
        #expect((try object(ready)["detail"] as? String)?.contains("saving the desired probes") == true)
        await probes.removeAll()
    }

    @Test("A full disk is 507 Insufficient Storage")
    func fullDiskIs507() {
        let error = ProbeError(kind: .notSaved, detail: "x", errno: .ENOSPC)
        #expect(AgentAPI.problem(error).status == .insufficientStorage)
        #expect(AgentAPI.response(error).headers["Retry-After"] == "5")
        #expect(AgentAPI.problem(ProbeError(kind: .notSaved, detail: "x", errno: .EROFS)).status == .serviceUnavailable)
    }

    @Test("Before capabilities are probed, a change is 503 with Retry-After")
    func notProbedYet() async throws {
        let store = CapabilityStore(prober: CapabilityProber(backend: kernel, reaper: Reaper()))
        let probes = ProbeManager(planner: Planner(backend: kernel, reaper: reaper), report: { await store.current })
        let api = AgentAPI(capabilities: store, probes: probes)
        let response = await send(api, .put, "/v1/probes/early", Self.read)
        #expect(response.status == .serviceUnavailable && response.headers["Retry-After"] == "1")
        #expect(await send(api, .get, "/readyz").status == .serviceUnavailable)
    }

    @Test("Until saved probes are restored, changes are 503 with Retry-After (they would race the restore for the limit)")
    func changesWaitForStartUp() async throws {
        let capabilities = self.capabilities
        let probes = ProbeManager(planner: Planner(backend: kernel, reaper: reaper), report: { await capabilities.current })
        let api = AgentAPI(capabilities: capabilities, probes: probes, startupDone: { false })
        for (method, target) in [(HTTPMethod.put, "/v1/probes/x"), (.post, "/v1/probes"), (.delete, "/v1/probes/x")] {
            let response = await send(api, method, target, method == .delete ? nil : Self.read)
            #expect(response.status == .serviceUnavailable && response.headers["Retry-After"] == "1", "\(method)")
        }
        #expect(await send(api, .get, "/v1/probes").status == .ok, "reads are served meanwhile")
        #expect(await probes.count == 0)
    }

    @Test("Bad input is a 400 problem that names the field, and nothing reaches the kernel")
    func badInput() async throws {
        let (api, _) = api()
        let loads = kernel.loadedSpecs.count
        let response = await send(api, .put, "/v1/probes/b", #"{"target":{"type":"syscall","name":"read"},"mechanisms":["kprobe_multi"]}"#)
        #expect(response.status == .badRequest)
        let errors = try #require(try object(response)["errors"] as? [[String: Any]])
        #expect(errors.first?["field"] as? String == "mechanisms[0]")
        #expect((errors.first?["message"] as? String)?.contains("fentry (fexit, kfunc, kretfunc)") == true)
        #expect(kernel.loadedSpecs.count == loads)
    }

    @Test("An aggregate past its limits decodes, then is a 400 whose errors name aggregate.by and aggregate.max_keys")
    func aggregateLimits() async throws {
        let (api, _) = api()
        let loads = kernel.loadedSpecs.count
        let response = await send(api, .put, "/v1/probes/k",
                                  #"{"target":{"type":"syscall","name":"read"},"aggregate":{"by":["pid","tid","comm","cpu"],"max_keys":65537}}"#)
        #expect(response.status == .badRequest)
        let body = try object(response)
        #expect(body["type"] as? String == Problem.typeBase + "invalid-spec")
        let errors = try #require(body["errors"] as? [[String: Any]])
        #expect(errors.map { $0["field"] as? String } == ["aggregate.max_keys", "aggregate.by"])
        #expect(errors.last?["message"] as? String == "at most 3 keys, not 4")
        #expect(kernel.loadedSpecs.count == loads)
    }

    @Test("?top=N on metrics: 1 to 65536, anything else a bad-request problem naming top, checked before the name")
    func metricsTop() async throws {
        let (api, probes) = api()
        #expect(await send(api, .post, "/v1/probes", #"{"name":"t","target":{"type":"tracepoint","name":"sched:sched_switch"}}"#).status == .created)
        for top in ["1", "100", "65536"] {
            #expect(await send(api, .get, "/v1/probes/t/metrics?top=\(top)").status == .ok, "top=\(top)")
        }
        for top in ["0", "65537", "-1", "1.5", "ten", ""] {
            let response = await send(api, .get, "/v1/probes/t/metrics?top=\(top)")
            #expect(response.status == .badRequest, "top=\(top)")
            let body = try object(response)
            #expect(body["type"] as? String == Problem.typeBase + "bad-request")
            let errors = try #require(body["errors"] as? [[String: Any]])
            #expect(errors.map { $0["field"] as? String } == ["top"])
        }
        #expect(await send(api, .get, "/v1/probes/nope/metrics?top=0").status == .badRequest)
        #expect(await send(api, .get, "/v1/probes/nope/metrics?top=5").status == .notFound)
        await probes.removeAll()
    }

    @Test("Events: Last-Event-ID and last_event_id are each checked, also when the other is valid; follow is true or false; all before the name")
    func eventsParameters() async throws {
        let (api, _) = api()
        func get(_ query: String, lastEventID: String? = nil) async -> HTTPResponse {
            var headers = HTTPHeaders()
            if let lastEventID { headers["Last-Event-ID"] = lastEventID }
            return await api.router().respond(to: HTTPRequest(method: .get, target: "/v1/probes/nope/events" + query, headers: headers, body: []))
        }
        func field(_ response: HTTPResponse) throws -> String? {
            try #require((try object(response)["errors"] as? [[String: Any]])?.first?["field"] as? String)
        }
        // A valid id goes on to the name: 404.
        #expect(await get("?last_event_id=5").status == .notFound)
        #expect(await get("", lastEventID: "18446744073709551615").status == .notFound)
        #expect(await get("?last_event_id=3&follow=false", lastEventID: "7").status == .notFound)
        for (query, header) in [("?last_event_id=null", "5"), ("?last_event_id=5", "x1"), ("?last_event_id=-1", nil),
                                ("?last_event_id=18446744073709551616", nil), ("", ""), ("?last_event_id=", "5")] as [(String, String?)] {
            let response = await get(query, lastEventID: header)
            #expect(response.status == .badRequest, "\(query) with Last-Event-ID \(header ?? "absent")")
            #expect(try field(response) == "Last-Event-ID")
        }
        for follow in ["True", "1", "", "yes"] {
            let response = await get("?follow=\(follow)")
            #expect(response.status == .badRequest, "follow=\(follow)")
            #expect(try field(response) == "follow")
        }
    }
}
