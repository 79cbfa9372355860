import Foundation
import Glibc
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// Budgets on the real agent and the real kernel (root): probes made over real HTTP on a
/// getppid loop (tests/budget/syscall_loop.c) of a known number of calls, their state read
/// back over HTTP and from a Prometheus scrape.
@Suite(.serialized, .enabled(if: RootRequirement.check("BudgetAPITests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct BudgetAPITests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    static let comm = "tp-budget-loop"
    static let binary = CallChains.build(source: "tests/budget/syscall_loop.c", name: comm, flags: ["-O2"])

    /// Runs the loop with `arguments` and returns its JSON line (calls, calls_per_second).
    static func loop(_ arguments: [String]) throws -> Process {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: try binary.get())
        process.arguments = arguments
        process.standardOutput = Pipe()
        try process.run()
        return process
    }

    static func result(_ process: Process) throws -> [String: Any] {
        process.waitUntilExit()
        let data = (process.standardOutput as! Pipe).fileHandleForReading.readDataToEndOfFile()
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    static func probe(_ agent: AgentHarness, _ name: String) async throws -> [String: Any] {
        try #require(try await agent.request("GET", "/v1/probes/\(name)").json)
    }

    @Test("a budget never reached: the budgeted programs count exactly (calls = seen = 100,000, nothing estimated)",
          arguments: [nil, "tracepoint"] as [String?])
    func exactUnderBudget(mechanism: String?) async throws {
        let agent = try await AgentHarness()
        do {
            let name = "budget-exact-\(mechanism ?? "hub")"
            let mechanisms = mechanism.map { #","mechanisms":["\#($0)"]"# } ?? ""
            let put = try await agent.request("PUT", "/v1/probes/\(name)", json: """
                {"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\(Self.comm)"}\(mechanisms),
                 "budget":{"max_cpu_percent":100}}
                """)
            #expect(put.status == 201, "\(String(decoding: put.body, as: UTF8.self))")
            _ = try Self.result(try Self.loop(["--calls", "100000"]))
            let metrics = try await agent.manager.metrics(name)
            #expect(metrics.calls == 100_000 && metrics.errors == 0)
            #expect(metrics.latencyNanoseconds?.buckets.reduce(0) { $0 + $1.count } == 100_000)
            #expect(metrics.sampling == ProbeMetrics.Sampling(sampled: 1, estimatedCalls: 0, seenCalls: 100_000, state: .active))
            let probe = try await Self.probe(agent, name)
            #expect(probe["state"] as? String == "active" && probe["state_reason"] is NSNull)
            let cost = try #require(probe["cost"] as? [String: Any])
            #expect(cost["sample_every"] as? Int == 1 && cost["source"] as? String == "bpf_stats", "\(cost)")
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("a ~1M calls/s loop with max_cpu_percent 1: throttled within 2 s, then its measured cost under the budget (suspended: hook detached); API and Prometheus say so")
    func throttlesWithinTwoSeconds() async throws {
        let agent = try await AgentHarness()
        do {
            let loop = try Self.loop(["--seconds", "10", "--spin", "500"])
            try await Task.sleep(for: .milliseconds(300))
            let linksBefore = FDCensus.take().bpfLinks
            let put = try await agent.request("PUT", "/v1/probes/budget-cpu", json: """
                {"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\(Self.comm)"},"budget":{"max_cpu_percent":1}}
                """)
            #expect(put.status == 201, "\(String(decoding: put.body, as: UTF8.self))")
            let created = ContinuousClock.now
            var first: (state: String, after: Duration)?
            var under: [String: Any]?
            while under == nil && ContinuousClock.now - created < .seconds(8) {
                let probe = try await Self.probe(agent, "budget-cpu")
                if first == nil, let state = probe["state"] as? String, state != "active" { first = (state, ContinuousClock.now - created) }
                if first != nil, let cost = probe["cost"] as? [String: Any], let cpu = cost["cpu_percent"] as? Double, cpu <= 1 { under = probe }
                try await Task.sleep(for: .milliseconds(50))
            }
            let entered = try #require(first, "the probe never left the active state")
            #expect(entered.state == "throttled", "sampling comes before suspension")
            #expect(entered.after < .seconds(2), "throttled after \(entered.after)")
            let settled = try #require(under, "the measured cost never got under 1 % of a CPU")
            let reason = settled["state_reason"] as? String ?? ""
            #expect(reason.contains("over max_cpu_percent 1"), "\(reason)")
            let cost = try #require(settled["cost"] as? [String: Any])
            if settled["state"] as? String == "suspended", cost["parked"] as? Bool == true {
                // Suspended: the shared hook's two links are gone (its only member is parked).
                #expect(FDCensus.take().bpfLinks == linksBefore, "links left while parked")
            } else {
                #expect(settled["state"] as? String == "throttled" && (cost["sample_every"] as? Int ?? 0) > 1, "\(settled)")
            }

            let scrape = String(decoding: try await agent.request("GET", "/metrics").body, as: UTF8.self)
            let labels = #"probe="budget-cpu",target="syscall:getppid",mechanism="tp_btf""#
            #expect(scrape.contains(#"traceplane_probe_budget_transitions_total{\#(labels),to="throttled"} "#))
            #expect(!scrape.contains(#"traceplane_probe_budget_transitions_total{\#(labels),to="throttled"} 0"#))
            #expect(scrape.contains("traceplane_probe_sample_every{\(labels)} "))
            #expect(scrape.contains("traceplane_agent_cpu_ratio "))
            let states = scrape.split(separator: "\n").filter { $0.hasPrefix("traceplane_probe_budget_state{\(labels)") }
            #expect(states.count == 3 && states.filter { $0.hasSuffix(" 1") }.count == 1, "\(states)")
            loop.terminate()
            loop.waitUntilExit()
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("serve --budget-cost calibration (what the agent does where BPF_ENABLE_STATS is refused): no stats windows, the flavour calibrated once, and the ~1M calls/s loop throttled on that cost; the status says where the cost came from")
    func calibratedCost() async throws {
        var budgets = BudgetController.Configuration()
        budgets.costSource = .calibration
        let agent = try await AgentHarness(budgets: budgets)
        do {
            let loop = try Self.loop(["--seconds", "8", "--spin", "500"])
            try await Task.sleep(for: .milliseconds(300))
            let put = try await agent.request("PUT", "/v1/probes/budget-calibrated", json: """
                {"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\(Self.comm)"},"budget":{"max_cpu_percent":1}}
                """)
            #expect(put.status == 201, "\(String(decoding: put.body, as: UTF8.self))")
            // Throttled (or suspended), with the cost at that setting known again.
            var probe: [String: Any] = [:]
            for _ in 0..<120 {
                probe = try await Self.probe(agent, "budget-calibrated")
                let known = (probe["cost"] as? [String: Any])?["ns_per_call"] as? Double != nil
                if probe["state"] as? String != "active", known { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect((probe["state_reason"] as? String ?? "").contains(", calibration)"), "\(probe)")
            let cost = try #require(probe["cost"] as? [String: Any], "\(probe)")
            let source = cost["source"] as? String ?? ""
            print("calibrated: state \(probe["state"] ?? "-"), \(cost)")
            #expect(source.hasPrefix("calibration: syscallHubBTF measured by the agent (serve --budget-cost calibration)"), "\(source)")
            #expect((cost["ns_per_call"] as? Double ?? 0) > 0, "\(cost)")
            #expect(["throttled", "suspended"].contains(probe["state"] as? String ?? ""), "not throttled on the calibrated cost: \(probe)")
            #expect(agent.manager.budgets?.windows.count == 0, "BPF stats windows were taken")
            loop.terminate()
            loop.waitUntilExit()
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("max_events_per_second: suspended while over it (programs detached: nothing runs), measured again after the hold-off and resumed once the loop stops")
    func suspendsAndResumes() async throws {
        var budgets = BudgetController.Configuration()
        budgets.policy.holdOff = .seconds(2)
        let agent = try await AgentHarness(budgets: budgets)
        do {
            let put = try await agent.request("PUT", "/v1/probes/budget-rate", json: """
                {"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\(Self.comm)"},"budget":{"max_events_per_second":1000}}
                """)
            #expect(put.status == 201)
            let loop = try Self.loop(["--seconds", "5", "--spin", "500"])
            var suspended = false
            for _ in 0..<80 where !suspended {
                try await Task.sleep(for: .milliseconds(50))
                suspended = try await Self.probe(agent, "budget-rate")["state"] as? String == "suspended"
            }
            #expect(suspended, "never suspended")
            let reason = try await Self.probe(agent, "budget-rate")["state_reason"] as? String ?? ""
            #expect(reason.contains("over max_events_per_second 1000"), "\(reason)")
            // Suspended and parked: nothing runs, so neither calls nor seen_calls move, and
            // the shared hook's links are gone (this process holds the agent's fds).
            let linksParked = FDCensus.take().bpfLinks
            let a = try await agent.manager.metrics("budget-rate")
            try await Task.sleep(for: .milliseconds(300))
            let b = try await agent.manager.metrics("budget-rate")
            let parked = try #require(try await Self.probe(agent, "budget-rate")["cost"] as? [String: Any])
            if parked["parked"] as? Bool == true && FDCensus.take().bpfLinks == linksParked {
                #expect(b.calls == a.calls && b.sampling?.seenCalls == a.sampling?.seenCalls, "\(a.sampling!) then \(b.sampling!)")
                #expect(b.sampling?.state == .suspended)
            }
            _ = try Self.result(loop)
            var resumed = false
            for _ in 0..<200 where !resumed {
                try await Task.sleep(for: .milliseconds(50))
                resumed = try await Self.probe(agent, "budget-rate")["state"] as? String == "active"
            }
            #expect(resumed, "not resumed 10 s after the loop stopped")
            #expect(FDCensus.take().bpfLinks == linksParked + 2, "attached again")
            let cost = try #require(try await Self.probe(agent, "budget-rate")["cost"] as? [String: Any])
            let transitions = cost["transitions"] as? [String: Int] ?? [:]
            #expect((transitions["suspended"] ?? 0) >= 1 && (transitions["active"] ?? 0) >= 1, "\(transitions)")
            // Recording again: calls made now are counted.
            let before = try await agent.manager.metrics("budget-rate").calls
            _ = try Self.result(try Self.loop(["--calls", "500"]))
            #expect(try await agent.manager.metrics("budget-rate").calls == before + 500)
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("serve --max-cpu-percent 1: a probe without a budget of its own is throttled on its share, and says so")
    func agentWideBudget() async throws {
        let agent = try await AgentHarness(budgets: BudgetController.Configuration(maxCPUPercent: 1))
        do {
            let loop = try Self.loop(["--seconds", "8", "--spin", "500"])
            try await Task.sleep(for: .milliseconds(300))
            let put = try await agent.request("PUT", "/v1/probes/budget-global", json: """
                {"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\(Self.comm)"}}
                """)
            #expect(put.status == 201)
            var probe: [String: Any] = [:]
            for _ in 0..<80 {
                probe = try await Self.probe(agent, "budget-global")
                if probe["state"] as? String != "active" { break }
                try await Task.sleep(for: .milliseconds(50))
            }
            #expect(probe["state"] as? String == "throttled", "\(probe)")
            let reason = probe["state_reason"] as? String ?? ""
            #expect(reason.contains("its share of serve --max-cpu-percent 1"), "\(reason)")
            let cost = try #require(probe["cost"] as? [String: Any])
            #expect((cost["max_cpu_percent"] as? Double ?? 99) <= 1, "the limit in force is at most the agent-wide one: \(cost)")
            loop.terminate()
            loop.waitUntilExit()
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }
}
