import Foundation
import Glibc
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// The probe API over real HTTP against the real kernel (root).
@Suite(.serialized, .enabled(if: RootRequirement.check("ProbeAPITests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct ProbeAPITests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    @Test("A syscall probe created over HTTP with no mechanisms attaches, lists its failed attempts and serves exact counts")
    func syscallProbeOverHTTP() async throws {
        let agent = try await AgentHarness()
        let pid = getpid()
        let created = try await agent.request("POST", "/v1/probes",
            json: #"{"name":"ppid","target":{"type":"syscall","name":"getppid"},"filter":{"pid":\#(pid)},"labels":{"owner":"tests"}}"#)
        #expect(created.status == 201)
        #expect(created.headers["location"] == "/v1/probes/ppid")
        let probe = try #require(created.json)
        let attempts = try #require(probe["attempts"] as? [[String: Any]])
        let report = await agent.store.current!
        let chosen = try #require(probe["mechanism"] as? String)
        #expect(chosen == report.chains["syscall"]?.first { $0.usable }?.mechanism.rawValue)
        #expect(attempts.last?["outcome"] as? String == "attached")
        for failed in attempts.dropLast() {
            #expect(failed["outcome"] as? String != "attached")
            #expect(failed["errno"] is String)
        }
        if !report.supports(.fentry) {
            #expect(attempts.first?["mechanism"] as? String == "fentry")
        }
        for _ in 0..<500 { _ = getppid() }
        let metrics = try #require(try await agent.request("GET", "/v1/probes/ppid/metrics").json)
        #expect(metrics["calls"] as? Int == 500)
        let latency = try #require(metrics["latency_ns"] as? [String: Any])
        #expect(latency["count"] as? Int == 500)
        let buckets = try #require(latency["buckets"] as? [[String: Any]])
        #expect(buckets.reduce(0) { $0 + ($1["count"] as? Int ?? 0) } == 500)

        let listed = try #require(try await agent.request("GET", "/v1/probes").json)
        #expect((listed["probes"] as? [[String: Any]])?.map { $0["name"] as? String } == ["ppid"])
        let deleted = try await agent.request("DELETE", "/v1/probes/ppid")
        #expect(deleted.status == 204)
        #expect(try await agent.request("GET", "/v1/probes/ppid").status == 404)
        await agent.stop()
    }

    @Test("PUT is idempotent: the same spec answers 200 and leaves the probe alone; another spec replaces it and bumps generation")
    func putIsIdempotent() async throws {
        let agent = try await AgentHarness()
        let spec = #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"ttl_seconds":60}"#
        let first = try await agent.request("PUT", "/v1/probes/switches", json: spec)
        #expect(first.status == 201)
        let again = try await agent.request("PUT", "/v1/probes/switches", json: spec)
        #expect(again.status == 200)
        #expect(again.json?["generation"] as? Int == 1)
        #expect(again.json?["created_at"] as? String == first.json?["created_at"] as? String)
        let other = try await agent.request("PUT", "/v1/probes/switches",
                                            json: #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"mechanisms":["tracepoint"]}"#)
        #expect(other.status == 200)
        #expect(other.json?["generation"] as? Int == 2)
        #expect(other.json?["mechanism"] as? String == "tracepoint")
        #expect(other.json?["expires_at"] is NSNull)
        await agent.stop()
    }

    @Test("POST with an existing name: the same spec returns it, another spec is a 409 problem")
    func postConflicts() async throws {
        let agent = try await AgentHarness()
        let spec = #"{"name":"dup","target":{"type":"syscall","name":"getpid"}}"#
        #expect(try await agent.request("POST", "/v1/probes", json: spec).status == 201)
        #expect(try await agent.request("POST", "/v1/probes", json: spec).status == 200)
        let conflict = try await agent.request("POST", "/v1/probes", json: #"{"name":"dup","target":{"type":"syscall","name":"read"}}"#)
        #expect(conflict.status == 409)
        #expect(conflict.contentType.hasPrefix("application/problem+json"))
        await agent.stop()
    }

    @Test("function:vfs_read answers 422 with every attempt when no function mechanism works, and keeps nothing")
    func functionTargetFails() async throws {
        let agent = try await AgentHarness()
        let report = await agent.store.current!
        let reply = try await agent.request("POST", "/v1/probes", json: #"{"name":"vfs","target":{"type":"function","name":"vfs_read"}}"#)
        if report.supports(.fentry) || report.supports(.kprobe) {
            #expect(reply.status == 201)
        } else {
            #expect(reply.status == 422)
            #expect(reply.contentType.hasPrefix("application/problem+json"))
            let attempts = try #require(reply.json?["attempts"] as? [[String: Any]])
            #expect(attempts.map { $0["mechanism"] as? String } == ["fentry", "kprobe"])
            #expect(attempts[0]["outcome"] as? String == report.result(for: .fentry)?.status.rawValue)
            #expect(attempts[1]["outcome"] as? String == "unsupported")
            #expect(attempts[1]["stage"] as? String == "attach")
            #expect(try await agent.request("GET", "/v1/probes/vfs").status == 404)
        }
        await agent.stop()
    }

    @Test("Past the probe limit the API answers 429")
    func tooManyProbes() async throws {
        let agent = try await AgentHarness(maxProbes: 2)
        for name in ["a", "b"] {
            #expect(try await agent.request("PUT", "/v1/probes/\(name)", json: #"{"target":{"type":"syscall","name":"getpid"}}"#).status == 201)
        }
        let third = try await agent.request("PUT", "/v1/probes/c", json: #"{"target":{"type":"syscall","name":"getpid"}}"#)
        #expect(third.status == 429)
        await agent.stop()
    }

    @Test("50 concurrent clients creating and deleting probes leave the state consistent and nothing leaked")
    func concurrentClients() async throws {
        let agent = try await AgentHarness()
        Reaper.shared.drain()
        let before = FDCensus.take()
        // Each client creates its own probe, reads it, deletes it; every fifth keeps it.
        // Clients 0–9 also fight over one shared name.
        let kept = try await withThrowingTaskGroup(of: String?.self) { group in
            for client in 0..<50 {
                group.addTask {
                    let name = "client-\(client)"
                    let target = client % 2 == 0 ? #"{"type":"syscall","name":"getpid"}"# : #"{"type":"tracepoint","name":"sched:sched_switch"}"#
                    let created = try await agent.request("PUT", "/v1/probes/\(name)", json: #"{"target":\#(target)}"#)
                    #expect(created.status == 201, "client \(client): \(String(decoding: created.body, as: UTF8.self))")
                    #expect(try await agent.request("GET", "/v1/probes/\(name)/metrics").status == 200)
                    if client < 10 {
                        let shared = try await agent.request("PUT", "/v1/probes/shared", json: #"{"target":{"type":"syscall","name":"getppid"}}"#)
                        #expect([200, 201, 409].contains(shared.status), "shared PUT answered \(shared.status)")
                    }
                    if client % 5 == 0 { return name }
                    #expect(try await agent.request("DELETE", "/v1/probes/\(name)").status == 204)
                    return nil
                }
            }
            var kept: [String] = []
            for try await name in group { if let name { kept.append(name) } }
            return kept
        }
        let listed = try #require(try await agent.request("GET", "/v1/probes").json?["probes"] as? [[String: Any]])
        let names = Set(listed.compactMap { $0["name"] as? String })
        #expect(names == Set(kept + ["shared"]))
        #expect(await agent.manager.count == names.count)
        for name in names {
            #expect(try await agent.request("DELETE", "/v1/probes/\(name)").status == 204)
        }
        await agent.stop()
        #expect(FDCensus.take().bpfProgs == before.bpfProgs)
        #expect(FDCensus.take().bpfMaps == before.bpfMaps)
        #expect(FDCensus.take().bpfLinks == before.bpfLinks)
        #expect(FDCensus.take().perfEvents == before.perfEvents)
    }

    @Test("DELETE answers promptly and the kernel resources are freed for sure")
    func deleteFreesEverything() async throws {
        let agent = try await AgentHarness()
        Reaper.shared.drain()
        let before = FDCensus.take()
        #expect(try await agent.request("PUT", "/v1/probes/gone", json: #"{"target":{"type":"syscall","name":"read"}}"#).status == 201)
        #expect(FDCensus.take().bpfProgs > before.bpfProgs)
        #expect(try await agent.request("DELETE", "/v1/probes/gone").status == 204)
        Reaper.shared.drain()
        let after = FDCensus.take()
        #expect(after.bpfProgs == before.bpfProgs && after.bpfMaps == before.bpfMaps && after.bpfLinks == before.bpfLinks)
        await agent.stop()
    }
}
