import CLibBPF
import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// Signals against the real agent binary (root: BPF, bpffs): SIGKILL at random points of
/// probe creation (with and without `--pin-dir`), SIGHUP, and clients that vanish in the
/// middle of a response (SIGPIPE). The oracles are the kernel's own census of BPF objects
/// (system-wide ids), what is pinned on a private bpffs, `/proc/PID` and curl.
@Suite(.serialized, .enabled(if: RootRequirement.check("FaultSignalTests") || RootRequirement.mustRun, "needs root for BPF, bpffs and signals"))
struct FaultSignalTests {
    let dir = NSTemporaryDirectory() + "traceplane-sig-\(UUID().uuidString)"

    init() throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    /// The probes each kill loop creates: one on the shared syscall hook, one with its own
    /// object on the per-syscall tracepoints, a tracepoint target, a keyed one.
    static let killProbes: [(name: String, json: String)] = [
        ("hub", #"{"target":{"type":"syscall","name":"getppid"}}"#),
        ("own", #"{"target":{"type":"syscall","name":"getuid"},"mechanisms":["tracepoint"]}"#),
        ("switch", #"{"target":{"type":"tracepoint","name":"sched:sched_switch"}}"#),
        ("keyed", #"{"target":{"type":"syscall","name":"read"},"aggregate":{"by":["comm"]}}"#),
        ("hub-keyed", #"{"target":{"type":"syscall","name":"getgid"},"aggregate":{"by":["comm"]}}"#),
    ]
    static var requested: Set<String> { Set(killProbes.map(\.name)) }

    // MARK: - SIGKILL during attaches

    @Test("SIGKILL at random points of 5 creates, 100 loops: the kernel then holds nothing of ours (programs, maps, links), and a restart with the same --state-dir restores every acknowledged probe and nothing that was not requested")
    func sigkillDuringAttaches() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let started = ContinuousClock.now
        let before = KernelCensus.objects()
        let seed = UInt64(Date().timeIntervalSince1970)
        var random = SplitMix(seed)
        let window = try await calibrate(pinned: false)
        print("kill loops: seed \(seed), all 5 creates take \(window) ms unkilled; kills at 0–\(window * 3 / 2) ms")
        var tally = KillTally()
        for loop in 0..<100 {
            let state = "\(dir)/state-\(loop)"
            let agent = try await startAgent(["--state-dir", state])
            let delay = Int.random(in: 0...(window * 3 / 2), using: &random)
            let acked = try await createAndKill(agent, parallel: loop % 2 == 0, delayMs: delay)
            let left = await KernelCensus.settledObjects(since: before, seconds: 30)
            #expect(left.isEmpty, "loop \(loop) (kill at \(delay) ms, \(acked.count) acknowledged): the kernel still holds \(left)")

            let second = try await startAgent(["--state-dir", state])
            let listed = try probes(second)
            let names = Set(listed.keys)
            #expect(acked.isSubset(of: names), "loop \(loop): acknowledged \(acked.sorted()), restored \(names.sorted())")
            #expect(names.isSubset(of: Self.requested), "loop \(loop): restored \(names.sorted()), never requested")
            for (name, probe) in listed {
                #expect(probe["state"] as? String == "active", "loop \(loop): \(name) restored as \(probe["state"] ?? "?")")
            }
            tally.add(delayMs: delay, acked: acked.count, restored: names.count)
            await stop(second)
            let afterStop = await KernelCensus.settledObjects(since: before, seconds: 30)
            #expect(afterStop.isEmpty, "loop \(loop): after SIGTERM the kernel still holds \(afterStop)")
            try? FileManager.default.removeItem(atPath: state)
        }
        print(tally.report("without --pin-dir"))
        print("kill loops without --pin-dir took \(ContinuousClock.now - started)")
        #expect(tally.byAcked[0, default: 0] > 0 && tally.byAcked[Self.killProbes.count, default: 0] > 0,
                "kills must land before the first and after the last acknowledgement: \(tally.byAcked)")
        #expect(tally.byAcked.filter { $0.key > 0 && $0.key < Self.killProbes.count }.values.reduce(0, +) > 0,
                "kills must land between acknowledgements: \(tally.byAcked)")
    }

    @Test("SIGKILL at random points of 5 creates with --pin-dir on a private bpffs, 20 loops: the kernel then holds exactly what is pinned, the pins are what the manifests say; a restart adopts every saved probe, removes the rest, and holds exactly the pins of the probes it lists; cleanup or DELETE leaves nothing")
    func sigkillDuringAttachesPinned() async throws {
        let bpffs = "\(dir)/bpffs"
        try FileManager.default.createDirectory(atPath: bpffs, withIntermediateDirectories: true)
        guard mount("bpf", bpffs, "bpf", 0, nil) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
        defer {
            umount2(bpffs, Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: dir)
        }
        let pinDir = "\(bpffs)/tp"
        let started = ContinuousClock.now
        let before = KernelCensus.objects()
        let seed = UInt64(Date().timeIntervalSince1970)
        var random = SplitMix(seed)
        let window = try await calibrate(pinned: true, pinDir: pinDir)
        print("pinned kill loops: seed \(seed), all 5 creates take \(window) ms unkilled; kills at 0–\(window * 3 / 2) ms")
        var tally = KillTally()
        for loop in 0..<20 {
            let state = "\(dir)/pstate-\(loop)"
            let args = ["--state-dir", state, "--pin-dir", pinDir]
            let agent = try await startAgent(args)
            let delay = Int.random(in: 0...(window * 3 / 2), using: &random)
            let acked = try await createAndKill(agent, parallel: loop % 2 == 0, delayMs: delay)

            // Killed: what stays in the kernel is exactly what the pins hold, and the pins
            // are what the manifests name (plus, at most, a probe pinned whose manifest or
            // state was not written yet: requested, never acknowledged).
            let manifests = try Self.manifests(state)
            let saved = try Self.savedNames(state)
            let pinnedProbes = Self.pinnedProbeDirectories(pinDir)
            #expect(acked.isSubset(of: saved) && saved.isSubset(of: Set(manifests.keys)),
                    "loop \(loop): acknowledged \(acked.sorted()), saved \(saved.sorted()), manifests \(manifests.keys.sorted())")
            #expect(pinnedProbes.isSubset(of: Self.requested), "loop \(loop): pinned \(pinnedProbes.sorted())")
            for (name, manifest) in manifests {
                let missing = Self.missingPins(manifest, pinDir: pinDir)
                #expect(missing.isEmpty, "loop \(loop): \(name)'s manifest names pins that are not there: \(missing)")
            }
            let (killedMatch, killedHeld, killedPinned) = await Self.settle(since: before, toPinsIn: pinDir)
            #expect(killedMatch, "loop \(loop) (kill at \(delay) ms): the kernel holds \(killedHeld), the pins hold \(killedPinned)")

            let second = try await startAgent(args)
            let listed = try probes(second)
            let names = Set(listed.keys)
            #expect(acked.isSubset(of: names) && names == saved, "loop \(loop): acknowledged \(acked.sorted()), saved \(saved.sorted()), restored \(names.sorted())")
            for (name, probe) in listed {
                #expect(probe["state"] as? String == "active" && probe["restore"] as? String == "adopted",
                        "loop \(loop): \(name) restored \(probe["state"] ?? "?"), \(probe["restore"] ?? "?")")
            }
            let adopted = try Self.manifests(state)
            let ownObjects = Set(adopted.filter { $0.value.object == .own }.keys)
            #expect(Set(adopted.keys) == names, "loop \(loop): manifests \(adopted.keys.sorted()) for probes \(names.sorted())")
            #expect(Self.pinnedProbeDirectories(pinDir) == ownObjects, "loop \(loop): pinned \(Self.pinnedProbeDirectories(pinDir).sorted()), own objects listed \(ownObjects.sorted())")
            let (runningMatch, runningHeld, runningPinned) = await Self.settle(since: before, toPinsIn: pinDir)
            #expect(runningMatch, "loop \(loop), restarted: the kernel holds \(runningHeld), the pins \(runningPinned)")
            tally.add(delayMs: delay, acked: acked.count, restored: names.count)

            // Odd loops: DELETE everything; even loops: SIGTERM (pins stay), then `traceplane cleanup`.
            if loop % 2 == 1 {
                for name in names { #expect(try request(second, "DELETE", "/v1/probes/\(name)").status == 204) }
                await stop(second)
            } else {
                await stop(second)
                #expect(!Self.pinned(pinDir).isEmpty == !names.isEmpty, "loop \(loop): SIGTERM keeps the pins")
                let cleanup = try Self.runCLI(["cleanup", "--pin-dir", pinDir, "--state-dir", state])
                #expect(cleanup.status == 0, "loop \(loop): cleanup: \(cleanup.output)")
            }
            #expect(Self.pinned(pinDir).isEmpty, "loop \(loop): still pinned: \(Self.pinned(pinDir))")
            let left = await KernelCensus.settledObjects(since: before, seconds: 30)
            #expect(left.isEmpty, "loop \(loop): the kernel still holds \(left)")
            try? FileManager.default.removeItem(atPath: state)
        }
        print(tally.report("with --pin-dir"))
        print("kill loops with --pin-dir took \(ContinuousClock.now - started)")
    }

    // MARK: - SIGHUP

    @Test("SIGHUP (a closed terminal) leaves the agent running and says so: the probe keeps counting exactly, nothing re-attached; SIGTERM still stops it")
    func sighupKeepsRunning() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let agent = try await startAgent(["--state-dir", "\(dir)/state"])
        let spec = #"{"target":{"type":"syscall","name":"nanosleep"},"filter":{"comm":"tp-sleeper"}}"#
        #expect(try request(agent, "PUT", "/v1/probes/hup", spec).status == 201)
        try Sleeper(["burst", "300", "100000"]).run()
        #expect(try calls(agent, "hup") == 300)
        let held = KernelCensus.objects()
        let created = try request(agent, "GET", "/v1/probes/hup").json?["created_at"] as? String

        for n in 1...3 {
            agent.signal(SIGHUP)
            let line = await agent.waitForOutput(matching: "(?s)(received SIGHUP.*){\(n)}")
            #expect(line != nil, "no log line for SIGHUP \(n): \(agent.log)")
            #expect(agent.isRunning, "SIGHUP \(n) ended the agent: \(agent.log)")
        }
        try #require(agent.isRunning)
        #expect(Self.disposition(agent.pid, SIGHUP) != .default, "SIGHUP keeps its default action (terminate)")
        #expect(try request(agent, "GET", "/healthz").status == 200)
        #expect(try calls(agent, "hup") == 300, "the counts survived SIGHUP")
        try Sleeper(["burst", "200", "100000"]).run()
        #expect(try calls(agent, "hup") == 500, "and go on exactly")
        let probe = try request(agent, "GET", "/v1/probes/hup").json
        #expect(probe?["generation"] as? Int == 1 && probe?["created_at"] as? String == created && probe?["state"] as? String == "active")
        #expect(KernelCensus.objects() == held, "SIGHUP changed what the kernel holds: \(KernelCensus.objects().subtracting(held)) new, \(held.subtracting(KernelCensus.objects())) gone")
        await stop(agent)
    }

    // MARK: - SIGPIPE

    @Test("Clients vanishing mid-response, 20 rounds: /metrics of 40 probes and a stack SVG read in part and reset, SSE and NDJSON subscribers killed while events flow; the agent stays up, /healthz 200, subscribers back to 0, fds back to the baseline")
    func clientsVanishMidResponse() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let started = ContinuousClock.now
        let agent = try await startAgent([])
        #expect(Self.disposition(agent.pid, SIGPIPE) == .ignored, "SIGPIPE keeps its default action (terminate)")
        // A stream of events: every nanosleep of the sleeper, ~1,600 a second.
        #expect(try request(agent, "PUT", "/v1/probes/ev", #"{"target":{"type":"syscall","name":"nanosleep"},"filter":{"comm":"tp-sleeper"},"events":{"min_latency_ns":0,"max_per_second":5000}}"#).status == 201)
        #expect(try request(agent, "PUT", "/v1/probes/stacks", #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"aggregate":{"by":["comm","kstack"]}}"#).status == 201)
        for i in 0..<38 {
            let put = try request(agent, "PUT", "/v1/probes/bulk-\(i)", #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"bulk-\#(i)"},"aggregate":{"by":["comm"]}}"#)
            #expect(put.status == 201, "bulk-\(i): \(put.status) \(put.body)")
        }
        let workload = try Workload.start(["burst", "1000000", "500000"])
        defer { workload.stop() }
        let metricsSize = try request(agent, "GET", "/metrics").body.utf8.count
        let svgSize = try request(agent, "GET", "/v1/probes/stacks/stacks?format=svg").body.utf8.count
        print("/metrics is \(metricsSize) bytes, the stack SVG \(svgSize) bytes")
        #expect(metricsSize > 128 * 1024 && svgSize > 16 * 1024, "responses too small to be cut: \(metricsSize), \(svgSize)")

        // The baseline: every probe made, a subscriber served and gone once.
        try await subscribeAndKill(agent, round: -1)
        #expect(await waitUntil(10) { (try? self.subscribers(agent)) == 0 })
        let baseline = Self.fdCount(agent.pid)
        print("agent fds at baseline: \(baseline)")
        var cut: [String: [Int]] = [:]
        for round in 0..<20 {
            for path in ["/metrics", "/v1/probes/stacks/stacks?format=svg"] {
                let read = try RawClient.readPartly(port: agent.port, path: path, bytes: 2048 + round * 512)
                #expect(read.bytes < (path == "/metrics" ? metricsSize : svgSize), "round \(round) \(path): the whole response (\(read.bytes) bytes) arrived before the reset")
                #expect(read.status == 200, "round \(round) \(path): \(read.status)")
                cut[path, default: []].append(read.bytes)
            }
            try await subscribeAndKill(agent, round: round)
            try #require(agent.isRunning, "round \(round): the agent died: \(agent.log.suffix(2000))")
            #expect(try request(agent, "GET", "/healthz").status == 200)
            #expect(await waitUntil(10) { (try? self.subscribers(agent)) == 0 }, "round \(round): subscribers \(String(describing: try? subscribers(agent)))")
            #expect(await waitUntil(10) { Self.fdCount(agent.pid) == baseline }, "round \(round): \(Self.fdCount(agent.pid)) fds, baseline \(baseline): \(Self.fds(agent.pid))")
        }
        let ev = try request(agent, "GET", "/v1/probes/ev/metrics").json?["events"] as? [String: Any]
        print("events after 20 rounds: \(ev ?? [:]); bytes read before each reset: \(cut)")
        #expect((ev?["consumed"] as? Int ?? 0) > 0)
        print("clients vanishing took \(ContinuousClock.now - started)")
        await stop(agent)
    }

    @Test("The agent's log reader vanishing (stderr a pipe whose reader exited) does not kill it: SIGPIPE is ignored, later log lines are dropped, requests are served")
    func logReaderVanishes() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let before = KernelCensus.objects()
        let pipe = Pipe()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: Self.defaultSignals[0])
        process.arguments = Array(Self.defaultSignals.dropFirst()) + [AgentProcess.executable, "serve", "--listen", "127.0.0.1:0", "--log-level", "debug"]
        process.standardOutput = pipe
        process.standardError = pipe
        try process.run()
        defer { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
        // Read until the agent is ready, then close the only read end.
        var text = ""
        var port = 0
        while !text.contains("ready: 0 probes") {
            let data = pipe.fileHandleForReading.availableData
            try #require(!data.isEmpty, "the agent exited: \(text)")
            text += String(decoding: data, as: UTF8.self)
        }
        if let range = text.range(of: #"listening on 127\.0\.0\.1:(\d+)"#, options: .regularExpression) {
            port = Int(text[range].split(separator: ":").last ?? "") ?? 0
        }
        try #require(port > 0, "\(text)")
        #expect(Self.disposition(process.processIdentifier, SIGPIPE) == .ignored, "SIGPIPE keeps its default action (terminate)")
        try pipe.fileHandleForReading.close()
        let base = "http://127.0.0.1:\(port)"
        // Every request logs a debug line, now written to a pipe nobody reads.
        for _ in 0..<5 { _ = try CurlClient.run("GET", "\(base)/healthz") }
        #expect(process.isRunning, "the agent died writing its log: \(process.isRunning ? "" : "\(process.terminationReason == .uncaughtSignal ? "signal" : "exit") \(process.terminationStatus)")")
        try #require(process.isRunning)
        #expect(try CurlClient.run("GET", "\(base)/healthz").status == 200)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/quiet", json: #"{"target":{"type":"syscall","name":"getppid"}}"#).status == 201)
        #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/quiet").status == 204)
        kill(process.processIdentifier, SIGTERM)
        process.waitUntilExit()
        let reason = process.terminationReason == .exit ? "exit" : "signal"
        #expect(process.terminationReason == .exit && process.terminationStatus == 0, "SIGTERM: \(reason) \(process.terminationStatus)")
        let left = await KernelCensus.settledObjects(since: before, seconds: 30)
        #expect(left.isEmpty, "the kernel still holds \(left)")
    }

    // MARK: - Helpers

    /// Runs the agent as a shell would start it: this test process's children inherit a
    /// blocked signal mask (Dispatch's) and SIGPIPE ignored, which would hide what SIGHUP and
    /// SIGPIPE do to a daemon; the wrapper resets both, then execs the agent (same pid).
    static let defaultSignals = ["/usr/bin/python3", "-c", """
        import os, signal, sys
        for s in (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGPIPE, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2):
            signal.signal(s, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, [])
        os.execv(sys.argv[1], sys.argv[1:])
        """]

    func startAgent(_ args: [String]) async throws -> AgentProcess { try await .started(args, wrapper: Self.defaultSignals) }

    func stop(_ agent: AgentProcess) async { await agent.stopCleanly() }

    func request(_ agent: AgentProcess, _ method: String, _ path: String, _ json: String? = nil) throws -> CurlClient.Reply {
        try agent.request(method, path, json)
    }

    func probes(_ agent: AgentProcess) throws -> [String: [String: Any]] {
        let list = try #require(request(agent, "GET", "/v1/probes").json?["probes"] as? [[String: Any]])
        return Dictionary(uniqueKeysWithValues: list.map { ($0["name"] as? String ?? "?", $0) })
    }

    func calls(_ agent: AgentProcess, _ name: String) throws -> Int {
        try #require(request(agent, "GET", "/v1/probes/\(name)/metrics").json?["calls"] as? Int)
    }

    func subscribers(_ agent: AgentProcess) throws -> Int {
        let events = try #require(request(agent, "GET", "/v1/probes/ev/metrics").json?["events"] as? [String: Any])
        return try #require(events["subscribers"] as? Int)
    }

    /// How long the 5 creates take when nothing kills the agent (ms, the slower of the two ways of sending them).
    func calibrate(pinned: Bool, pinDir: String? = nil) async throws -> Int {
        var slowest = 0
        for parallel in [true, false] {
            let state = "\(dir)/calibrate-\(parallel)"
            var args = ["--state-dir", state]
            if let pinDir { args += ["--pin-dir", pinDir] }
            let agent = try await startAgent(args)
            let began = ContinuousClock.now
            let batch = try CreateBatch(port: agent.port, probes: Self.killProbes, parallel: parallel, dir: dir)
            let codes = batch.finish()
            let took = ContinuousClock.now - began
            #expect(codes.values.allSatisfy { $0 == 201 }, "unkilled creates: \(codes)")
            slowest = max(slowest, Int(took.components.seconds * 1000 + took.components.attoseconds / 1_000_000_000_000_000))
            for probe in Self.killProbes { _ = try request(agent, "DELETE", "/v1/probes/\(probe.name)") }
            await stop(agent)
            try? FileManager.default.removeItem(atPath: state)
        }
        return max(slowest, 20)
    }

    /// Sends the creates (all at once or one after another), SIGKILLs the agent `delayMs`
    /// after the first went out, and returns the names the agent answered 201 for.
    func createAndKill(_ agent: AgentProcess, parallel: Bool, delayMs: Int) async throws -> Set<String> {
        let batch = try CreateBatch(port: agent.port, probes: Self.killProbes, parallel: parallel, dir: dir)
        // The delay only places the kill; nothing is asserted on it.
        if delayMs > 0 { try await Task.sleep(for: .milliseconds(delayMs)) }
        agent.signal(SIGKILL)
        _ = await agent.waitForExit(seconds: 30)
        let codes = batch.finish()
        #expect(codes.count == Self.killProbes.count && codes.values.allSatisfy { $0 == 201 || $0 == 0 },
                "a create answered something else than 201 or nothing: \(codes)")
        return Set(codes.filter { $0.value == 201 }.keys)
    }

    /// Two subscribers (SSE and NDJSON, curl -N) that get events, then are SIGKILLed.
    func subscribeAndKill(_ agent: AgentProcess, round: Int) async throws {
        let url = "http://127.0.0.1:\(agent.port)/v1/probes/ev/events"
        let sse = try Subscriber(url, accept: nil, dir: dir)
        let ndjson = try Subscriber(url, accept: "application/x-ndjson", dir: dir)
        #expect(await waitUntil(10) { (try? self.subscribers(agent)) == 2 }, "round \(round): subscribers \(String(describing: try? subscribers(agent)))")
        #expect(await waitUntil(10) { sse.received.contains("event: call") && ndjson.received.contains(#""event":"call""#) },
                "round \(round): no events reached the subscribers: \(sse.received.prefix(300)) | \(ndjson.received.prefix(300))")
        sse.kill()
        ndjson.kill()
    }

    /// `condition` true within `seconds` (checked every 20 ms).
    func waitUntil(_ seconds: Double, _ condition: () -> Bool) async -> Bool {
        let deadline = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < deadline {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(20))
        }
        return condition()
    }

    // MARK: - Oracles

    static func fds(_ pid: Int32) -> [String] {
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []
        return entries.sorted { Int($0) ?? 0 < Int($1) ?? 0 }.map { "\($0)→\((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/fd/\($0)")) ?? "?")" }
    }

    static func fdCount(_ pid: Int32) -> Int {
        (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd"))?.count ?? -1
    }

    enum Disposition { case `default`, ignored, caught }

    /// What `/proc/PID/status` says the process does with `sig` (SigIgn, SigCgt).
    static func disposition(_ pid: Int32, _ sig: Int32) -> Disposition {
        let status = (try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8)) ?? ""
        func mask(_ field: String) -> UInt64 {
            let line = status.split(separator: "\n").first { $0.hasPrefix(field + ":") } ?? ""
            return UInt64(line.split(separator: "\t").last ?? "", radix: 16) ?? 0
        }
        let bit = UInt64(1) << UInt64(sig - 1)
        if mask("SigIgn") & bit != 0 { return .ignored }
        if mask("SigCgt") & bit != 0 { return .caught }
        return .default
    }

    static func manifests(_ state: String) throws -> [String: PinManifest] {
        let dir = "\(state)/pins"
        var result: [String: PinManifest] = [:]
        for file in (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? [] where file.hasSuffix(".json") {
            let manifest = try PinManifest.decode(try #require(FileManager.default.contents(atPath: "\(dir)/\(file)")))
            result[manifest.name] = manifest
        }
        return result
    }

    static func savedNames(_ state: String) throws -> Set<String> {
        guard let data = FileManager.default.contents(atPath: "\(state)/probes.json") else { return [] }
        return Set(try ReportJSON.decoder().decode(PersistedState.self, from: data).probes.compactMap(\.spec.name))
    }

    static func pinned(_ path: String) -> [String] {
        guard let enumerator = FileManager.default.enumerator(atPath: path) else { return [] }
        return enumerator.compactMap { $0 as? String }.sorted()
    }

    /// The probes with an own object pinned (`<pin-dir>/<name>/`; the hub is `_hub-*`).
    static func pinnedProbeDirectories(_ pinDir: String) -> Set<String> {
        Set(((try? FileManager.default.contentsOfDirectory(atPath: pinDir)) ?? []).filter { !$0.hasPrefix("_hub-") && !$0.hasPrefix(".") }
            .map { $0.replacingOccurrences(of: "+", with: ".") })
    }

    /// The pins a manifest names that are not on bpffs.
    static func missingPins(_ manifest: PinManifest, pinDir: String) -> [String] {
        var paths: [String] = []
        switch manifest.object {
        case .own:
            let base = "\(pinDir)/\(manifest.name.replacingOccurrences(of: ".", with: "+"))/\(manifest.directory ?? "?")"
            paths = (0..<manifest.links).map { "\(base)/link_\($0)" } + manifest.programs.map { "\(base)/prog_\($0)" }
        case .hub:
            paths = [pinDir + "/_hub-" + manifest.flavour]
        }
        return paths.filter { !FileManager.default.fileExists(atPath: $0) }
    }

    /// Every object the pins under `root` keep alive, found through the kernel: each pinned
    /// file opened with BPF_OBJ_GET, its id read from `/proc/self/fdinfo`, a link's
    /// program and a program's maps (`bpf_prog_info.map_ids`) added.
    static func heldByPins(_ root: String) -> KernelCensus.Objects {
        // (Objects has no public initializer: start from a census and empty it.)
        var held = KernelCensus.objects()
        held.programs = []
        held.maps = []
        held.links = []
        func addProgram(fd: Int32, id: UInt32) {
            guard held.programs.insert(id).inserted else { return }
            var ids = [UInt32](repeating: 0, count: 64)
            var info = bpf_prog_info()
            var len = UInt32(MemoryLayout<bpf_prog_info>.size)
            ids.withUnsafeMutableBufferPointer { buffer in
                info.nr_map_ids = UInt32(buffer.count)
                info.map_ids = UInt64(UInt(bitPattern: buffer.baseAddress))
                _ = bpf_obj_get_info_by_fd(fd, &info, &len)
            }
            for map in ids.prefix(Int(min(info.nr_map_ids, 64))) { held.maps.insert(map) }
        }
        for path in pinned(root) {
            let fd = bpf_obj_get("\(root)/\(path)")
            guard fd >= 0 else { continue }  // a directory
            defer { close(fd) }
            let info = (try? String(contentsOfFile: "/proc/self/fdinfo/\(fd)", encoding: .utf8)) ?? ""
            func field(_ name: String) -> UInt32? {
                let line = info.split(separator: "\n").first { $0.hasPrefix(name + ":") }
                return line.flatMap { UInt32($0.split(separator: "\t").last?.trimmingCharacters(in: .whitespaces) ?? "") }
            }
            if let link = field("link_id") {
                held.links.insert(link)
                if let program = field("prog_id") {
                    let pfd = bpf_prog_get_fd_by_id(program)
                    if pfd >= 0 { addProgram(fd: pfd, id: program); close(pfd) }
                }
            } else if let program = field("prog_id") {
                addProgram(fd: fd, id: program)
            } else if let map = field("map_id") {
                held.maps.insert(map)
            }
        }
        // Maps of maps (the hub's per-slot key tables and rings) keep their inner maps alive:
        // a lookup from user space answers the inner map's id.
        var queue = Array(held.maps)
        while let id = queue.popLast() {
            let fd = bpf_map_get_fd_by_id(id)
            guard fd >= 0 else { continue }
            defer { close(fd) }
            var info = bpf_map_info()
            var len = UInt32(MemoryLayout<bpf_map_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &len) == 0,
                  info.type == BPF_MAP_TYPE_ARRAY_OF_MAPS.rawValue || info.type == BPF_MAP_TYPE_HASH_OF_MAPS.rawValue,
                  info.key_size <= 64 else { continue }
            var key = [UInt8](repeating: 0, count: Int(info.key_size))
            var next = key
            var first = true
            while (first ? bpf_map_get_next_key(fd, nil, &next) : bpf_map_get_next_key(fd, &key, &next)) == 0 {
                first = false
                key = next
                var inner: UInt32 = 0
                if bpf_map_lookup_elem(fd, &key, &inner) == 0, inner != 0, held.maps.insert(inner).inserted { queue.append(inner) }
            }
        }
        return held
    }

    /// Waits (≤ 30 s: the kernel frees closed objects lazily) for the objects made since
    /// `before` to be exactly those the pins keep alive.
    static func settle(since before: KernelCensus.Objects, toPinsIn pinDir: String) async -> (Bool, KernelCensus.Objects, KernelCensus.Objects) {
        let deadline = ContinuousClock.now + .seconds(30)
        while true {
            let held = KernelCensus.objects().subtracting(before)
            let pinned = heldByPins(pinDir)
            if held == pinned { return (true, held, pinned) }
            if ContinuousClock.now > deadline { return (false, held, pinned) }
            try? await Task.sleep(for: .milliseconds(50))
        }
    }

    static func runCLI(_ arguments: [String]) throws -> (status: Int32, output: String) {
        try Command.run(AgentProcess.executable, arguments)
    }
}

// MARK: - Clients and workloads

/// The creates of one loop, sent by one curl: in parallel (`--parallel`, one connection
/// each) or one after another on one connection. Each transfer prints its URL and status
/// (000 when the agent died before answering).
private final class CreateBatch {
    let process = Process()
    let output: String

    init(port: Int, probes: [(name: String, json: String)], parallel: Bool, dir: String) throws {
        output = "\(dir)/batch-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        var args = parallel ? ["--parallel", "--parallel-immediate", "--parallel-max", "16"] : []
        for (i, probe) in probes.enumerated() {
            if i > 0 { args.append("--next") }
            args += ["-s", "--max-time", "30", "-o", "/dev/null", "-w", "%{url_effective} %{http_code}\\n", "-X", "PUT",
                     "-H", "Content-Type: application/json", "--data-binary", probe.json, "http://127.0.0.1:\(port)/v1/probes/\(probe.name)"]
        }
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = args
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    /// Name → HTTP status (0: no answer).
    func finish() -> [String: Int] {
        process.waitUntilExit()
        defer { try? FileManager.default.removeItem(atPath: output) }
        var codes: [String: Int] = [:]
        for line in ((try? String(contentsOfFile: output, encoding: .utf8)) ?? "").split(separator: "\n") {
            let parts = line.split(separator: " ")
            guard parts.count == 2, let name = parts[0].split(separator: "/").last else { continue }
            codes[String(name)] = Int(parts[1]) ?? -1
        }
        return codes
    }
}

/// `curl -N` on an event stream, writing what it gets to a file.
private final class Subscriber {
    let process = Process()
    let output: String

    init(_ url: String, accept: String?, dir: String) throws {
        output = "\(dir)/sub-\(UUID().uuidString)"
        _ = FileManager.default.createFile(atPath: output, contents: nil)
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = ["-sN"] + (accept.map { ["-H", "Accept: \($0)"] } ?? []) + [url]
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardError = FileHandle.nullDevice
        try process.run()
    }

    var received: String { (try? String(contentsOfFile: output, encoding: .utf8)) ?? "" }

    func kill() {
        Glibc.kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
        try? FileManager.default.removeItem(atPath: output)
    }
}

/// The sleeper (tests/events/sleeper.c) running in the background until stopped.
private final class Workload {
    let process = Process()
    let input = Pipe()

    static func start(_ arguments: [String]) throws -> Workload {
        let workload = Workload()
        workload.process.executableURL = URL(fileURLWithPath: try Sleeper.binary.get())
        workload.process.arguments = arguments
        workload.process.standardInput = workload.input
        workload.process.standardOutput = FileHandle.nullDevice
        try workload.process.run()
        workload.input.fileHandleForWriting.write(Data("go\n".utf8))
        return workload
    }

    func stop() {
        kill(process.processIdentifier, SIGKILL)
        process.waitUntilExit()
    }
}

/// A client that reads part of a response through a small receive buffer, then resets the
/// connection (SO_LINGER 0) while the agent is still writing.
private enum RawClient {
    static func readPartly(port: Int, path: String, bytes: Int) throws -> (status: Int, bytes: Int) {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.EIO) }
        var small: Int32 = 4096
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, socklen_t(MemoryLayout<Int32>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else { close(fd); throw POSIXError(.ECONNREFUSED) }
        let head = "GET \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        _ = head.withCString { send(fd, $0, strlen($0), 0) }
        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 512)
        while received.count < bytes {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n <= 0 { break }
            received += buffer.prefix(n)
        }
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        close(fd)
        let text = String(decoding: received, as: UTF8.self)
        let status = Int(text.split(separator: " ").dropFirst().first ?? "") ?? 0
        // The body's bytes: what came after the head.
        let body = text.range(of: "\r\n\r\n").map { text.utf8.distance(from: $0.upperBound, to: text.endIndex) } ?? 0
        return (status, body)
    }
}

/// Kills landed where: delays and how many creates had been acknowledged.
private struct KillTally {
    var byAcked: [Int: Int] = [:]
    var savedUnacknowledged = 0
    var delays: [Int] = []

    mutating func add(delayMs: Int, acked: Int, restored: Int) {
        byAcked[acked, default: 0] += 1
        savedUnacknowledged += restored - acked
        delays.append(delayMs)
    }

    func report(_ what: String) -> String {
        "kills \(what): \(delays.count) loops, delays \(delays.min() ?? 0)–\(delays.max() ?? 0) ms; acknowledged creates at the kill → loops: "
            + byAcked.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")
            + "; restored although never acknowledged (saved, answer lost): \(savedUnacknowledged)"
    }
}

/// A small seeded generator, so a failing loop can be replayed (the seed is printed).
private struct SplitMix: RandomNumberGenerator {
    var state: UInt64
    init(_ seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}
