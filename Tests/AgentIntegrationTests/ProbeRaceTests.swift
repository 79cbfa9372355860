import Foundation
import Glibc
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// Operations on one probe name over real HTTP against the real kernel: linearizable.
@Suite(.serialized, .enabled(if: RootRequirement.check("ProbeRaceTests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct ProbeRaceTests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    @Test("1,000 DELETEs racing a replacing PUT of the same name: the final state is always what the answers imply")
    func deleteRacingReplacingPut() async throws {
        let agent = try await AgentHarness()
        Reaper.shared.drain()
        let before = FDCensus.take()
        // Holds the shared syscall hook loaded, so each race costs map updates, not a load.
        #expect(try await agent.request("PUT", "/v1/probes/anchor", json: #"{"target":{"type":"syscall","name":"getppid"}}"#).status == 201)
        let original = #"{"target":{"type":"syscall","name":"read"}}"#
        var seen: [String: Int] = [:]
        for i in 0..<1_000 {
            #expect(try await agent.request("PUT", "/v1/probes/r", json: original).status == 201)
            let replacement = #"{"target":{"type":"syscall","name":"\#(i % 2 == 0 ? "write" : "pread64")"}}"#
            async let put = agent.request("PUT", "/v1/probes/r", json: replacement)
            async let delete = agent.request("DELETE", "/v1/probes/r")
            let (p, d) = try await (put, delete)
            let after = try await agent.request("GET", "/v1/probes/r")
            // Both operations found the name (created just before): the DELETE always succeeds.
            #expect(d.status == 204, "try \(i): DELETE answered \(d.status)")
            switch p.status {
            case 201:  // the DELETE went first; the PUT created the probe again
                #expect(p.headers["probe-outcome"] == "created")
                #expect(after.status == 200, "try \(i): PUT answered 201 after the DELETE, yet the probe is gone")
                let spec = after.json?["spec"] as? [String: Any]
                #expect((spec?["target"] as? [String: Any])?["name"] as? String == (i % 2 == 0 ? "write" : "pread64"))
                #expect(try await agent.request("DELETE", "/v1/probes/r").status == 204)
                seen["delete, then put", default: 0] += 1
            case 200:  // the PUT went first (replaced); the DELETE removed the replacement
                #expect(p.headers["probe-outcome"] == "replaced")
                #expect(after.status == 404, "try \(i): DELETE answered 204 after the replace, yet the probe exists (the defect)")
                if after.status == 200 { _ = try await agent.request("DELETE", "/v1/probes/r") }
                seen["put, then delete", default: 0] += 1
            default:
                Issue.record("try \(i): PUT answered \(p.status): \(String(decoding: p.body, as: UTF8.self))")
            }
        }
        print("1,000 PUT/DELETE races: \(seen)")
        #expect(try await agent.request("DELETE", "/v1/probes/anchor").status == 204)
        #expect(await agent.manager.count == 0)
        await agent.stop()
        #expect(FDCensus.take().kernelObjects == before.kernelObjects, "nothing of the races is left in the kernel")
    }

    @Test("Concurrent PUTs of one name queue instead of failing: every one answers 2xx and the last one wins")
    func concurrentPutsQueue() async throws {
        let agent = try await AgentHarness()
        let statuses = try await withThrowingTaskGroup(of: Int.self) { group in
            for pid in 1...16 {
                group.addTask {
                    try await agent.request("PUT", "/v1/probes/q", json: #"{"target":{"type":"syscall","name":"read"},"filter":{"pid":\#(pid)}}"#).status
                }
            }
            return try await group.reduce(into: [Int]()) { $0.append($1) }
        }
        #expect(statuses.filter { $0 == 201 }.count == 1 && statuses.filter { $0 == 200 }.count == 15, "\(statuses)")
        #expect(try await agent.request("GET", "/v1/probes/q").json?["generation"] as? Int == 16)
        await agent.stop()
    }
}
