import Foundation
import Testing
import TraceCore
import TraceCoreTestSupport

/// The four foundation endpoints over real HTTP (URLSession) against the real server and kernel.
@Suite(.serialized, .enabled(if: RootRequirement.check("CapabilityAPITests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct CapabilityAPITests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    @Test("healthz, readyz, the cached capability report and a refresh, on an ephemeral port")
    func foundationEndpoints() async throws {
        let agent = try await AgentHarness()
        let health = try await agent.request("GET", "/healthz")
        #expect(health.status == 200)
        #expect(health.json?["status"] as? String == "ok")
        #expect(try await agent.request("GET", "/readyz").status == 200)

        let cached = try await agent.request("GET", "/v1/capabilities")
        #expect(cached.status == 200)
        #expect(cached.contentType.hasPrefix("application/json"))
        let report = try #require(cached.json)
        let mechanisms = try #require(report["mechanisms"] as? [[String: Any]])
        #expect(Set(mechanisms.compactMap { $0["name"] as? String }) == Set(Mechanism.allCases.map(\.rawValue)))
        // The served report is the one the agent holds, entry by entry.
        let held = await agent.store.current!
        for entry in mechanisms {
            let name = try #require(entry["name"] as? String)
            let mine = try #require(held.result(for: Mechanism(rawValue: name)!))
            #expect(entry["status"] as? String == mine.status.rawValue, "\(name)")
            #expect(entry["errno"] as? String == mine.errno?.name, "\(name)")
            if mine.status != .supported { #expect((entry["message"] as? String)?.isEmpty == false) }
        }
        #expect((mechanisms.first { $0["name"] as? String == "fentry" }?["aliases"] as? [String]) == ["kfunc"])
        let kernel = try #require(report["kernel"] as? [String: Any])
        let release = try String(contentsOfFile: "/proc/sys/kernel/osrelease", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(kernel["release"] as? String == release)
        #expect(report["duration_ms"] is Double || report["duration_ms"] is Int)
        #expect(try await agent.request("GET", "/v1/capabilities").json?["probed_at"] as? String == report["probed_at"] as? String,
                "GET serves the cached report")

        try await Task.sleep(for: .milliseconds(1_100))  // probed_at has whole seconds over HTTP
        let refreshed = try await agent.request("POST", "/v1/capabilities/refresh")
        #expect(refreshed.status == 200)
        let before = try #require(report["probed_at"] as? String), after = try #require(refreshed.json?["probed_at"] as? String)
        #expect(after > before, "a refresh probes again")
        await agent.stop()
    }
}
