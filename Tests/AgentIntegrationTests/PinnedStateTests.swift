import CBPFLayouts
import CKernelOracle
import Foundation
import Glibc
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// `serve --pin-dir`: the real agent binary, restarted by SIGTERM and by kill -9, with real
/// HTTP, counted against a workload of known calls (root: BPF and bpffs).
///
/// The workload is `tp-sleeper burst N 1100000`: N nanosleep calls of 1.1 ms each (SCHED_FIFO,
/// so that wake-ups are prompt), none of them shorter than the bucket [1048576, 2097151] ns.
/// Two probes count them: one through the shared raw_syscalls hook, one with its own object
/// on the per-syscall tracepoints. While the agent is down the test reads the pinned maps
/// straight from bpffs (not through the agent): they hold what the agent last reported
/// plus exactly the calls made meanwhile, and the restarted agent reports exactly that,
/// bucket by bucket.
@Suite(.serialized, .enabled(if: RootRequirement.check("PinnedStateTests") || RootRequirement.mustRun, "needs root for BPF and bpffs"))
struct PinnedStateTests {
    let pinDir = "/sys/fs/bpf/traceplane-test-\(UUID().uuidString.prefix(8).lowercased())"
    let stateDir = NSTemporaryDirectory() + "traceplane-pins-\(UUID().uuidString)"
    static let sleepNs = 1_100_000
    static let bucketLower = 1 << 20

    static let hubProbe = #"{"target":{"type":"syscall","name":"nanosleep"},"filter":{"comm":"tp-sleeper"}}"#
    static let ownProbe = #"{"target":{"type":"syscall","name":"nanosleep"},"mechanisms":["tracepoint"],"filter":{"comm":"tp-sleeper"}}"#

    init() throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        try FileManager.default.createDirectory(atPath: stateDir, withIntermediateDirectories: true)
    }

    // MARK: - Helpers

    func start(_ extra: [String] = [], executable: String? = nil, state: String? = nil, pins: String? = nil) async throws -> AgentProcess {
        var arguments = ["--state-dir", state ?? stateDir]
        let pins = pins ?? pinDir
        if !pins.isEmpty { arguments += ["--pin-dir", pins] }
        return try await .started(arguments + extra, executable: executable)
    }

    func stop(_ agent: AgentProcess) async { await agent.stopCleanly() }

    func kill9(_ agent: AgentProcess) async {
        agent.signal(SIGKILL)
        _ = await agent.waitForExit(seconds: 30)
    }

    func request(_ agent: AgentProcess, _ method: String, _ path: String, _ json: String? = nil) throws -> CurlClient.Reply {
        try agent.request(method, path, json)
    }

    /// calls and the latency histogram (lower bound → count) of one probe.
    func counts(_ agent: AgentProcess, _ name: String) throws -> (calls: Int, buckets: [Int: Int]) {
        let reply = try request(agent, "GET", "/v1/probes/\(name)/metrics")
        let json = try #require(reply.json, "metrics of \(name): \(reply.status) \(reply.body)")
        let latency = try #require(json["latency_ns"] as? [String: Any])
        var buckets: [Int: Int] = [:]
        for bucket in latency["buckets"] as? [[String: Any]] ?? [] {
            buckets[bucket["lower"] as? Int ?? -1] = bucket["count"] as? Int ?? 0
        }
        return (json["calls"] as? Int ?? -1, buckets)
    }

    func restore(_ agent: AgentProcess, _ name: String) throws -> String? {
        try request(agent, "GET", "/v1/probes/\(name)").json?["restore"] as? String
    }

    func sleep(_ calls: Int) throws {
        let sleeper = try Sleeper(["burst", "\(calls)", "\(Self.sleepNs)"])
        var param = sched_param(sched_priority: 10)
        _ = sched_setscheduler(sleeper.tid, SCHED_FIFO, &param)
        try sleeper.go()
        sleeper.finish()
    }

    static let probes = ["via-hub": hubProbe, "own-object": ownProbe]

    /// Both probes' histograms, checked: exactly `calls` calls, none below the 1.1 ms call's
    /// bucket, and, with `expected`, equal to it bucket by bucket.
    func expectExact(_ agent: AgentProcess, calls: Int, expected: [String: [Int: Int]]? = nil, _ when: String) throws -> [String: [Int: Int]] {
        var histograms: [String: [Int: Int]] = [:]
        for name in Self.probes.keys.sorted() {
            let seen = try counts(agent, name)
            histograms[name] = seen.buckets
            print("\(name) \(when): \(seen.calls) calls, buckets \(seen.buckets.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))")
            #expect(seen.calls == calls, "\(name) \(when): \(seen.calls) calls, the workload made \(calls)")
            #expect(seen.buckets.values.reduce(0, +) == calls, "\(name) \(when): histogram \(seen.buckets) does not hold \(calls)")
            #expect(seen.buckets.keys.allSatisfy { $0 >= Self.bucketLower }, "\(name) \(when): calls shorter than the 1.1 ms sleep: \(seen.buckets)")
            if let want = expected?[name] {
                #expect(seen.buckets == want, "\(name) \(when): histogram \(seen.buckets.sorted { $0.key < $1.key }), expected \(want.sorted { $0.key < $1.key })")
            }
        }
        return histograms
    }

    /// What the kernel holds in the pinned maps now, per probe: calls and the latency
    /// histogram (bucket lower bound → count). Read with raw bpf() calls on the pinned
    /// files (CKernelOracle: BPF_OBJ_GET, BPF_MAP_LOOKUP_ELEM, summed over every possible
    /// CPU), not through the agent nor its libbpf code; only the manifests say where.
    func kernelCounts() throws -> [String: (calls: Int, buckets: [Int: Int])] {
        var result: [String: (calls: Int, buckets: [Int: Int])] = [:]
        for name in Self.probes.keys.sorted() {
            let data = try #require(FileManager.default.contents(atPath: "\(stateDir)/pins/\(name).json"), "no manifest for \(name)")
            let manifest = try PinManifest.decode(data)
            var calls: UInt64 = 0
            var slots = [UInt64](repeating: 0, count: Int(TP_HIST_SLOTS))
            switch manifest.object {
            case .own:
                let dir = "\(pinDir)/\(name)/\(try #require(manifest.directory))"
                calls = try Self.pinnedWords("\(dir)/map_stats", key: 0, offset: 0, count: 1)[0]
                for slot in 0..<slots.count {
                    slots[slot] = try Self.pinnedWords("\(dir)/map_hist", key: UInt32(slot), offset: 0, count: 1)[0]
                }
            case .hub:
                let slot = UInt32(try #require(manifest.hub).slot)
                let aggs = "\(pinDir)/_hub-syscallHubBTF/map_aggs"
                calls = try Self.pinnedWords(aggs, key: slot, offset: 0, count: 1)[0]
                slots = try Self.pinnedWords(aggs, key: slot, offset: MemoryLayout<tp_stats>.size, count: Int(TP_HIST_SLOTS))
            }
            var buckets: [Int: Int] = [:]
            // log2 slots: slot 0 holds 0–1 ns, slot i ≥ 1 holds [2^i, 2^(i+1) − 1].
            for (slot, count) in slots.enumerated() where count > 0 { buckets[slot == 0 ? 0 : 1 << slot] = Int(count) }
            result[name] = (Int(calls), buckets)
        }
        return result
    }

    /// `count` u64 words at `offset` of the value at `key` of the map pinned at `path`.
    static func pinnedWords(_ path: String, key: UInt32, offset: Int, count: Int) throws -> [UInt64] {
        var words = [UInt64](repeating: 0, count: count)
        let rc = oracle_pinned_map_u64s(path, key, offset, count, &words)
        try #require(rc == 0, "reading \(path) key \(key) with raw bpf(): \(String(cString: strerror(-rc)))")
        return words
    }

    func kernelHistograms() throws -> [String: [Int: Int]] {
        let counts = try kernelCounts()
        for (name, seen) in counts {
            #expect(seen.buckets.values.reduce(0, +) == seen.calls, "\(name): the pinned histogram holds \(seen.buckets.values.reduce(0, +)) calls, the pinned stats \(seen.calls)")
        }
        return counts.mapValues(\.buckets)
    }

    /// With the agent down: the pinned maps hold what it reported last (`reported`); after
    /// `calls` more calls, exactly those more, none shorter than the sleep. Returns what
    /// the kernel holds then.
    func sleepWhileDown(_ calls: Int, reported: [String: [Int: Int]], _ when: String) throws -> [String: [Int: Int]] {
        let atStop = try kernelHistograms()
        #expect(atStop == reported, "\(when): the pinned maps hold \(atStop), the agent reported \(reported) before it stopped")
        try sleep(calls)
        let after = try kernelHistograms()
        for (name, buckets) in after {
            let before = atStop[name] ?? [:]
            let added = buckets.merging(before.mapValues { -$0 }, uniquingKeysWith: +).filter { $0.value != 0 }
            print("\(name) \(when), counted in the kernel while the agent was down: \(added.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", "))")
            #expect(added.values.allSatisfy { $0 > 0 } && added.values.reduce(0, +) == calls,
                    "\(name) \(when): the pinned maps counted \(added) while the agent was down, the workload made \(calls) calls")
            #expect(added.keys.allSatisfy { $0 >= Self.bucketLower }, "\(name) \(when): calls shorter than the sleep: \(added)")
        }
        return after
    }

    func pinned(_ path: String) -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: path) else { return [] }
        return enumerator.compactMap { $0 as? String }.sorted()
    }

    func cleanUp() {
        PinStore.removeTree(pinDir)
        try? FileManager.default.removeItem(atPath: stateDir)
    }

    // MARK: - Tests

    @Test("SIGTERM then kill -9 with --pin-dir: a hub probe and an own-object probe continue exactly (10,000, 15,000, 20,000 calls, bucket by bucket); DELETE unpins and the kernel holds none of our programs")
    func restartsKeepCounting() async throws {
        defer { cleanUp() }
        let before = KernelCensus.programIDs()
        var agent = try await start()
        #expect(try request(agent, "PUT", "/v1/probes/via-hub", Self.hubProbe).status == 201)
        #expect(try request(agent, "PUT", "/v1/probes/own-object", Self.ownProbe).status == 201)
        #expect(try request(agent, "GET", "/v1/probes/via-hub").json?["mechanism"] as? String == "tp_btf")
        #expect(try request(agent, "GET", "/v1/probes/own-object").json?["mechanism"] as? String == "tracepoint")
        #expect(pinned(pinDir).contains("own-object/g1/link_0"), "own object pins: \(pinned(pinDir))")
        #expect(pinned(pinDir).contains("_hub-syscallHubBTF/link_0"), "hub pins: \(pinned(pinDir))")
        try sleep(10_000)
        let first = try expectExact(agent, calls: 10_000, "before the restart")

        await stop(agent)
        let down = try sleepWhileDown(5_000, reported: first, "after SIGTERM")
        // What an agent killed between pinning a replacement and saving it leaves: another
        // generation's pins, which no manifest names. The restart removes them.
        try FileManager.default.createDirectory(atPath: "\(pinDir)/own-object/g7", withIntermediateDirectories: false)
        let stray = oracle_pin_new_map("\(pinDir)/own-object/g7/map_stats", "tp_stray")
        try #require(stray > 0, "pinning a stray map: \(String(cString: strerror(-stray)))")
        agent = try await start()
        #expect(!pinned(pinDir).contains { $0.hasPrefix("own-object/g7") }, "a stray generation stays pinned: \(pinned(pinDir))")
        #expect(agent.log.contains("probe own-object: pins of g7 removed"), "not reported: \(agent.log)")
        var strayGone = false
        for _ in 0..<50 where !strayGone {
            strayGone = oracle_map_exists(UInt32(stray)) == 0
            if !strayGone { try await Task.sleep(for: .milliseconds(100)) }
        }
        #expect(strayGone, "the stray map \(stray) still exists")
        #expect(try restore(agent, "via-hub") == "adopted")
        #expect(try restore(agent, "own-object") == "adopted")
        let second = try expectExact(agent, calls: 15_000, expected: down, "after SIGTERM, 5,000 calls while down, and a restart")

        await kill9(agent)
        let downAgain = try sleepWhileDown(5_000, reported: second, "after kill -9")
        agent = try await start()
        #expect(try restore(agent, "via-hub") == "adopted")
        #expect(try restore(agent, "own-object") == "adopted")
        _ = try expectExact(agent, calls: 20_000, expected: downAgain, "after kill -9, 5,000 calls while down, and a restart")

        #expect(try request(agent, "DELETE", "/v1/probes/own-object").status == 204)
        #expect(try request(agent, "DELETE", "/v1/probes/via-hub").status == 204)
        #expect(pinned(pinDir).isEmpty, "left pinned after DELETE: \(pinned(pinDir))")
        #expect(!FileManager.default.fileExists(atPath: "\(stateDir)/pins/own-object.json"))
        let leaked = await KernelCensus.settledPrograms(excluding: before)
        #expect(leaked.isEmpty, "programs of ours still loaded after DELETE: \(leaked.map(KernelCensus.programName))")
        await stop(agent)
    }

    /// A probe's metrics JSON.
    func metrics(_ agent: AgentProcess, _ name: String) throws -> [String: Any] {
        let reply = try request(agent, "GET", "/v1/probes/\(name)/metrics")
        return try #require(reply.json, "metrics of \(name): \(reply.status) \(reply.body)")
    }

    /// `traceplane_probe_calls_total` of a probe from a scrape: a profile's metrics JSON
    /// symbolizes every stack sampled first, which can take long on a busy host, and only
    /// the count is wanted here.
    func scrapedCalls(_ agent: AgentProcess, _ name: String) throws -> Int? {
        let scrape = try request(agent, "GET", "/metrics").body
        let line = scrape.split(separator: "\n").first { $0.hasPrefix("traceplane_probe_calls_total{probe=\"\(name)\",") }
        return line.flatMap { $0.split(separator: " ").last }.flatMap { Int($0) }
    }

    func state(_ agent: AgentProcess, _ name: String) throws -> String? {
        try request(agent, "GET", "/v1/probes/\(name)").json?["state"] as? String
    }

    /// The libc.so.6 python3 maps (from its /proc/self/maps).
    static func pythonLibc() throws -> String {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", "print(next(l.split()[-1] for l in open('/proc/self/maps') if l.rstrip().endswith('/libc.so.6')))"]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        let output = String(decoding: pipe.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let path = output.trimmingCharacters(in: .whitespacesAndNewlines)
        try #require(process.terminationStatus == 0 && path.hasPrefix("/"), "python3 maps no libc.so.6: \(output)")
        return path
    }

    /// `n` getppid() calls through libc from a python3 process (the uprobe's workload).
    static func pythonGetppid(_ n: Int) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        process.arguments = ["-c", "import os\nfor _ in range(\(n)): os.getppid()"]
        try process.run()
        process.waitUntilExit()
        try #require(process.terminationStatus == 0)
    }

    @Test("Every kind of probe is adopted after SIGTERM: a uprobe, a profile, a keyed tracepoint target, an events probe and a budgeted probe that was suspended; each counts on exactly where it was")
    func everyKindIsAdopted() async throws {
        defer { cleanUp() }
        let before = KernelCensus.programIDs()
        let libc = try Self.pythonLibc()
        let specs: [(String, String)] = [
            ("up", #"{"target":{"type":"uprobe","path":"\#(libc)","symbol":"getppid"},"filter":{"comm":"python3"}}"#),
            ("prof", #"{"target":{"type":"profile","frequency_hz":49}}"#),
            ("switches", #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"aggregate":{"by":["comm"]}}"#),
            ("slow", #"{"target":{"type":"syscall","name":"nanosleep"},"mechanisms":["tracepoint"],"filter":{"comm":"tp-sleeper"},"events":{"min_latency_ns":1000000}}"#),
            ("bud", #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\#(BudgetAPITests.comm)"},"budget":{"max_events_per_second":1000}}"#),
        ]
        var agent = try await start(["--budget-hold-off", "120"])
        for (name, spec) in specs {
            let reply = try request(agent, "PUT", "/v1/probes/\(name)", spec)
            #expect(reply.status == 201, "\(name): \(reply.status) \(reply.body)")
        }
        try Self.pythonGetppid(1_000)
        try sleep(20)
        let loop = try BudgetAPITests.loop(["--seconds", "3", "--spin", "500"])
        var suspended = false
        for _ in 0..<100 where !suspended {
            try await Task.sleep(for: .milliseconds(50))
            suspended = try state(agent, "bud") == "suspended"
        }
        _ = try BudgetAPITests.result(loop)
        #expect(suspended, "the budgeted probe was never suspended")
        let up = try metrics(agent, "up")["calls"] as? Int
        #expect(up == 1_000, "uprobe: \(String(describing: up)) calls, python made 1,000")
        let slow = try metrics(agent, "slow")
        #expect(slow["calls"] as? Int == 20 && (slow["events"] as? [String: Any])?["emitted"] as? Int == 20, "\(slow)")
        let profile = try scrapedCalls(agent, "prof") ?? 0
        let switches = try metrics(agent, "switches")["calls"] as? Int ?? 0
        #expect(profile > 0 && switches > 0)
        let budgeted = try metrics(agent, "bud")["calls"] as? Int ?? -1
        // Suspended by the flag in its (pinned) budget map: nothing more is recorded.
        _ = try BudgetAPITests.result(try BudgetAPITests.loop(["--calls", "10000"]))
        #expect(try metrics(agent, "bud")["calls"] as? Int == budgeted, "a suspended pinned probe recorded calls")
        await stop(agent)

        // While the agent is down: the pins keep every probe counting (the budgeted one
        // stays suspended: its map's flag is pinned with it).
        try Self.pythonGetppid(1_000)
        try sleep(20)
        _ = try BudgetAPITests.result(try BudgetAPITests.loop(["--calls", "10000"]))

        agent = try await start(["--budget-hold-off", "120"])
        for (name, _) in specs {
            let restored = try restore(agent, name)
            #expect(restored == "adopted", "\(name): \(String(describing: restored))")
        }
        #expect(try metrics(agent, "up")["calls"] as? Int == 2_000)
        let slowAfter = try metrics(agent, "slow")
        #expect(slowAfter["calls"] as? Int == 40 && (slowAfter["events"] as? [String: Any])?["emitted"] as? Int == 40, "\(slowAfter)")
        #expect(try scrapedCalls(agent, "prof") ?? 0 > profile)
        #expect(try metrics(agent, "switches")["calls"] as? Int ?? 0 > switches)
        // The budget starts over: active, every call recorded again.
        #expect(try state(agent, "bud") == "active")
        #expect(try metrics(agent, "bud")["calls"] as? Int == budgeted, "calls recorded while suspended and down")
        _ = try BudgetAPITests.result(try BudgetAPITests.loop(["--calls", "500"]))
        #expect(try metrics(agent, "bud")["calls"] as? Int == budgeted + 500)

        for (name, _) in specs { #expect(try request(agent, "DELETE", "/v1/probes/\(name)").status == 204) }
        #expect(pinned(pinDir).isEmpty, "left pinned after DELETE: \(pinned(pinDir))")
        let leaked = await KernelCensus.settledPrograms(excluding: before)
        #expect(leaked.isEmpty, "programs of ours still loaded after DELETE: \(leaked.map(KernelCensus.programName))")
        await stop(agent)
    }

    @Test("A corrupt manifest is kept aside and reported; the probe is attached anew (restore says why) and the agent stays up")
    func corruptManifest() async throws {
        defer { cleanUp() }
        var agent = try await start()
        #expect(try request(agent, "PUT", "/v1/probes/own-object", Self.ownProbe).status == 201)
        await stop(agent)
        let manifest = "\(stateDir)/pins/own-object.json"
        try Data("{ not json".utf8).write(to: URL(fileURLWithPath: manifest))
        agent = try await start()
        let restore = try self.restore(agent, "own-object") ?? ""
        #expect(restore.hasPrefix("replaced: its manifest cannot be decoded"), "restore: \(restore)")
        let kept = try FileManager.default.contentsOfDirectory(atPath: "\(stateDir)/pins").filter { $0.hasPrefix("own-object.json.corrupt-") }
        #expect(kept.count == 1, "the corrupt manifest was not kept aside: \(kept)")
        #expect(agent.log.contains("kept aside as"), "not logged: \(agent.log)")
        #expect(try request(agent, "GET", "/healthz").status == 200)
        // Attached anew, and pinned anew: the next restart adopts it.
        #expect(try counts(agent, "own-object").calls == 0)
        #expect(pinned(pinDir).contains("own-object/g1/link_0"))
        await stop(agent)
        agent = try await start()
        #expect(try self.restore(agent, "own-object") == "adopted")
        await stop(agent)
        let cleanup = try Self.runCLI(["cleanup", "--pin-dir", pinDir])
        #expect(cleanup.status == 0 && cleanup.output.contains("removed probe own-object"), "cleanup: \(cleanup.output)")
    }

    @Test("Pins that no saved probe claims (unknown probe, a TTL that ran out while the agent was down) are removed at start and reported")
    func unknownAndExpiredPins() async throws {
        defer { cleanUp() }
        var agent = try await start()
        #expect(try request(agent, "PUT", "/v1/probes/own-object", Self.ownProbe).status == 201)
        let shortLived = #"{"target":{"type":"syscall","name":"getppid"},"mechanisms":["tracepoint"],"ttl_seconds":2}"#
        #expect(try request(agent, "PUT", "/v1/probes/short-lived", shortLived).status == 201)
        await stop(agent)
        #expect(pinned(pinDir).contains("short-lived/g1/link_0"))
        try await Task.sleep(for: .seconds(3))
        // Another state directory: nothing saved there claims the pins of own-object.
        let otherState = stateDir + "/other"
        agent = try await start(state: otherState)
        #expect(try request(agent, "GET", "/v1/probes").json?["probes"] as? [Any] != nil)
        #expect(agent.log.contains("pins of probe own-object removed: no saved probe to adopt them"), "not reported: \(agent.log)")
        #expect(pinned(pinDir).isEmpty, "left pinned: \(pinned(pinDir))")
        await stop(agent)

        // The TTL that ran out while the agent was down, with its own state directory.
        agent = try await start()
        #expect(try request(agent, "PUT", "/v1/probes/short-lived", shortLived).status == 201)
        await stop(agent)
        try await Task.sleep(for: .seconds(3))
        agent = try await start()
        #expect(try request(agent, "GET", "/v1/probes/short-lived").status == 404)
        #expect(!pinned(pinDir).contains { $0.hasPrefix("short-lived") }, "the expired probe is still pinned: \(pinned(pinDir))")
        #expect(!FileManager.default.fileExists(atPath: "\(stateDir)/pins/short-lived.json"))

        // A TTL that runs out while the agent runs unpins too.
        #expect(try request(agent, "PUT", "/v1/probes/short-lived", shortLived).status == 201)
        #expect(pinned(pinDir).contains("short-lived/g1/link_0"))
        try await Task.sleep(for: .seconds(3.5))
        #expect(try request(agent, "GET", "/v1/probes/short-lived").status == 404)
        #expect(!pinned(pinDir).contains { $0.hasPrefix("short-lived") }, "the expired probe is still pinned: \(pinned(pinDir))")
        await stop(agent)
    }

    @Test("A build with another layout version replaces the pins and says so; the same build adopts them (two builds: -DTRACEPLANE_LAYOUT_BUMP_TEST)")
    func layoutUpgrade() async throws {
        defer { cleanUp() }
        let bumped = try Self.layoutBumpBuild()
        var agent = try await start()
        #expect(try request(agent, "PUT", "/v1/probes/via-hub", Self.hubProbe).status == 201)
        #expect(try request(agent, "PUT", "/v1/probes/own-object", Self.ownProbe).status == 201)
        try sleep(200)
        await stop(agent)

        agent = try await start(executable: bumped)
        for name in ["via-hub", "own-object"] {
            let restore = try self.restore(agent, name) ?? ""
            #expect(restore == "replaced: layout version \(PinLayout.version) pinned, this build uses \(PinLayout.version + 1_000)", "\(name): \(restore)")
            #expect(try counts(agent, name).calls == 0, "\(name) was not attached anew")
        }
        #expect(agent.log.contains("its pins were not adopted (layout version"), "not logged: \(agent.log)")
        try sleep(100)
        await stop(agent)

        // The same (bumped) build again: adopted, counting on.
        agent = try await start(executable: bumped)
        #expect(try restore(agent, "via-hub") == "adopted")
        #expect(try restore(agent, "own-object") == "adopted")
        #expect(try counts(agent, "own-object").calls == 100)
        await stop(agent)

        // Back to this build: replaced again.
        agent = try await start()
        #expect((try restore(agent, "via-hub") ?? "").hasPrefix("replaced: layout version \(PinLayout.version + 1_000) pinned"))
        #expect(try request(agent, "DELETE", "/v1/probes/via-hub").status == 204)
        #expect(try request(agent, "DELETE", "/v1/probes/own-object").status == 204)
        #expect(pinned(pinDir).isEmpty, "left pinned after DELETE: \(pinned(pinDir))")
        await stop(agent)
    }

    @Test("A newer build with the same layout version adopts the pins of this one and counts on exactly; this build adopts them back (two builds: -DTRACEPLANE_NEWER_BUILD_TEST)")
    func sameLayoutUpgrade() async throws {
        defer { cleanUp() }
        let newer = try Self.variantBuild(flag: "TRACEPLANE_NEWER_BUILD_TEST", directory: "newer-build")
        var agent = try await start()
        #expect(try request(agent, "PUT", "/v1/probes/via-hub", Self.hubProbe).status == 201)
        #expect(try request(agent, "PUT", "/v1/probes/own-object", Self.ownProbe).status == 201)
        try sleep(200)
        _ = try expectExact(agent, calls: 200, "before the upgrade")
        await stop(agent)

        agent = try await start(executable: newer)
        let version = try request(agent, "GET", "/metrics").body.split(separator: "\n").first { $0.hasPrefix("traceplane_build_info{") }
        #expect(version?.contains(#"version="0.1.1-dev""#) == true, "not the newer build: \(String(describing: version))")
        for name in ["via-hub", "own-object"] {
            let restored = try restore(agent, name)
            #expect(restored == "adopted", "\(name) after the upgrade: \(String(describing: restored))")
        }
        try sleep(100)
        _ = try expectExact(agent, calls: 300, "after the upgrade and 100 more calls")
        await stop(agent)

        // And back (a roll-back): this build adopts what the newer one pinned.
        agent = try await start()
        #expect(try restore(agent, "via-hub") == "adopted")
        #expect(try restore(agent, "own-object") == "adopted")
        _ = try expectExact(agent, calls: 300, "after the roll-back")
        #expect(try request(agent, "DELETE", "/v1/probes/via-hub").status == 204)
        #expect(try request(agent, "DELETE", "/v1/probes/own-object").status == 204)
        #expect(pinned(pinDir).isEmpty, "left pinned after DELETE: \(pinned(pinDir))")
        await stop(agent)
    }

    @Test("traceplane cleanup removes what a killed agent left pinned (and says what), refuses while an agent uses the directory (so does a second agent) and a directory that is not on bpffs, and is safe when there is none")
    func cleanupCommand() async throws {
        defer { cleanUp() }
        let before = KernelCensus.programIDs()
        let agent = try await start()
        #expect(try request(agent, "PUT", "/v1/probes/via-hub", Self.hubProbe).status == 201)
        #expect(try request(agent, "PUT", "/v1/probes/own-object", Self.ownProbe).status == 201)
        // While the agent runs, the directory is its own: cleanup and a second agent refuse.
        let busy = try Self.runCLI(["cleanup", "--pin-dir", pinDir])
        #expect(busy.status != 0 && busy.output.contains("in use by another TracePlane agent"), "cleanup while running: \(busy.output)")
        let second = try Self.runCLI(["serve", "--listen", "127.0.0.1:0", "--state-dir", stateDir + "/second", "--pin-dir", pinDir])
        #expect(second.status != 0 && second.output.contains("in use by another TracePlane agent"), "a second agent: \(second.output)")
        #expect(try request(agent, "GET", "/v1/probes/own-object").json?["state"] as? String == "active")
        #expect(pinned(pinDir).contains("own-object/g1/link_0"), "the second agent touched the pins: \(pinned(pinDir))")
        await kill9(agent)
        #expect(!pinned(pinDir).isEmpty)
        let run = try Self.runCLI(["cleanup", "--pin-dir", pinDir, "--state-dir", stateDir])
        #expect(run.status == 0, "cleanup: \(run.output)")
        #expect(run.output.contains("removed probe own-object"), "\(run.output)")
        #expect(run.output.contains("removed shared hook syscallHubBTF"), "\(run.output)")
        #expect(run.output.contains("removed manifest"), "\(run.output)")
        #expect(!FileManager.default.fileExists(atPath: pinDir))
        let leaked = await KernelCensus.settledPrograms(excluding: before)
        #expect(leaked.isEmpty, "programs of ours still loaded after cleanup: \(leaked.map(KernelCensus.programName))")

        let again = try Self.runCLI(["cleanup", "--pin-dir", pinDir])
        #expect(again.status == 0 && again.output.contains("does not exist"), "\(again.output)")
        let notBPF = try Self.runCLI(["cleanup", "--pin-dir", stateDir])
        #expect(notBPF.status != 0 && notBPF.output.contains("is not on bpffs"), "\(notBPF.output)")
    }

    @Test("serve --pin-dir on another file system refuses to start, saying why; --pin-dir needs --state-dir")
    func refusesPinDirOffBPFFS() async throws {
        defer { cleanUp() }
        let refused = try Self.runCLI(["serve", "--listen", "127.0.0.1:0", "--state-dir", stateDir, "--pin-dir", stateDir + "/pins-here"])
        #expect(refused.status != 0 && refused.output.contains("is not on bpffs"), "\(refused.output)")
        let noState = try Self.runCLI(["serve", "--listen", "127.0.0.1:0", "--pin-dir", pinDir])
        #expect(noState.status != 0 && noState.output.contains("--pin-dir needs --state-dir"), "\(noState.output)")
    }

    @Test("Without --pin-dir nothing is pinned: a run leaves nothing under /sys/fs/bpf/traceplane")
    func nothingPinnedByDefault() async throws {
        defer { cleanUp() }
        let standard = "/sys/fs/bpf/traceplane"
        let existing = pinned(standard)
        let agent = try await start(pins: "")
        #expect(try request(agent, "PUT", "/v1/probes/via-hub", Self.hubProbe).status == 201)
        #expect(try request(agent, "PUT", "/v1/probes/own-object", Self.ownProbe).status == 201)
        #expect(pinned(standard) == existing)
        await stop(agent)
        #expect(pinned(standard) == existing, "pinned by a run without --pin-dir: \(pinned(standard))")
        #expect(!FileManager.default.fileExists(atPath: "\(stateDir)/pins"))
    }

    // MARK: - Processes

    /// Runs the agent binary with `arguments` to its end (at most 60 s): status and output.
    static func runCLI(_ arguments: [String], executable: String = AgentProcess.executable) throws -> (status: Int32, output: String) {
        try Command.run(executable, arguments)
    }

    /// The agent built with `-DTRACEPLANE_LAYOUT_BUMP_TEST` into `.build/layout-bump`
    /// (incremental after the first time). A build that fails fails the test.
    static func layoutBumpBuild() throws -> String {
        try variantBuild(flag: "TRACEPLANE_LAYOUT_BUMP_TEST", directory: "layout-bump")
    }

    /// The agent built with `-D<flag>` into `.build/<directory>`.
    static func variantBuild(flag: String, directory: String) throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().path
        let swift = ["/opt/swift/usr/bin/swift", "/usr/bin/swift"].first { FileManager.default.isExecutableFile(atPath: $0) } ?? "swift"
        let buildPath = "\(root)/.build/\(directory)"
        let (status, output) = try Command.run("/usr/bin/env", [swift, "build", "--package-path", root, "--build-path", buildPath,
                                                "--product", "traceplane", "-Xswiftc", "-D\(flag)"])
        try #require(status == 0, "the \(directory) build failed (\(status)): \(output.suffix(3000))")
        let executable = "\(buildPath)/debug/traceplane"
        try #require(FileManager.default.isExecutableFile(atPath: executable), "no \(executable) after the build: \(output.suffix(2000))")
        return executable
    }
}
