import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// The wall clock (CLOCK_REALTIME) stepped forward and back under the real agent (root:
/// clock_settime). TTLs run on the monotonic clock, so a step moves no expiry; `expires_at`
/// is when the wall clock will show the expiry, so it moves with the step (within a second).
/// Across a restart the saved `expires_at` is the only reference (the monotonic clock does
/// not survive a reboot): in the past, the probe is dropped; in the future, kept for what
/// remains. Every test puts the clock back exactly (the monotonic time elapsed since the
/// start added to the wall time then), in a `defer` and, should the test process die, from
/// a watchdog process.
@Suite(.serialized, .enabled(if: RootRequirement.check("FaultClockTests") || RootRequirement.mustRun, "needs root to set the wall clock"))
struct FaultClockTests {
    let dir = NSTemporaryDirectory() + "traceplane-clock-\(UUID().uuidString)"

    init() throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    @Test("Wall clock +1 h, then −2 h, then back: the probe (ttl 20 s) stays active, expires_at moves with each step (now + what remains, within 1 s), and it expires 20 s after its creation on the monotonic clock")
    func stepsMoveNoExpiry() async throws {
        let clock = try WallClock()
        defer { clock.restore(); try? FileManager.default.removeItem(atPath: dir) }
        let before = KernelCensus.objects()
        let agent = try await start([])
        let sent = ContinuousClock.now
        let put = try request(agent, "PUT", "/v1/probes/lease", #"{"target":{"type":"syscall","name":"getppid"},"ttl_seconds":20}"#)
        let answered = ContinuousClock.now
        #expect(put.status == 201, "\(put.body)")
        let announced = try #require(Self.date(put.json?["expires_at"]), "\(put.body)")
        /// What remains of the lease on the monotonic clock (counted from the answer: at most that late).
        func remaining() -> Double { 20 - Self.seconds(ContinuousClock.now - answered) }
        #expect(abs(announced.timeIntervalSince(Date()) - remaining()) < 1, "announced \(announced), now \(Date())")

        // Each step: still active, expires_at = the wall clock now + what remains; present
        // on every look until the next step.
        for (step, total) in [(3_600.0, 3_600.0), (-7_200, -3_600), (nil, 0)] as [(Double?, Double)] {
            if let step { try clock.step(by: step) } else { clock.restore() }
            let shown = try expiresAt(agent, "lease")
            #expect(abs(shown.timeIntervalSince(Date()) - remaining()) < 1,
                    "after a step to \(total) s: expires_at \(shown), the wall clock says \(Date()), \(remaining()) s remain")
            #expect(abs(shown.timeIntervalSince(announced) - total) < 1, "expires_at \(shown) moved \(shown.timeIntervalSince(announced)) s, the clock \(total) s")
            try await expectPresent(agent, "lease", for: 1.5, "after the step to \(total) s")
        }

        // Present until just before 20 s of monotonic time, gone within a second after.
        try await expectPresent(agent, "lease", until: answered + .milliseconds(19_700), "before its TTL")
        var gone: ContinuousClock.Instant?
        while ContinuousClock.now < sent + .seconds(23) {
            if try request(agent, "GET", "/v1/probes/lease").status == 404 { gone = ContinuousClock.now; break }
            try await Task.sleep(for: .milliseconds(50))
        }
        let lived = gone.map { Self.seconds($0 - sent) }
        print("the probe lived \(lived.map { String(format: "%.2f", $0) } ?? "on") s after its PUT was sent (ttl 20 s)")
        #expect(lived.map { $0 >= 19.7 && $0 <= 21.5 } == true, "expired after \(String(describing: lived)) s, not 20 s after its creation")
        #expect(agent.log.contains("probe lease expired"), "\(agent.log)")
        let left = await KernelCensus.settledObjects(since: before, seconds: 30)
        #expect(left.isEmpty, "the expired probe left \(left) in the kernel")
        await stop(agent)
    }

    @Test("Restarts across steps (--state-dir): a step while running is saved within seconds (expires_at = now + what remains), so a kill -9 and restart keep the monotonic remainder; a step while the agent is down is judged on the saved wall time: the expired probe is dropped, the other kept for what remains")
    func restartsAcrossSteps() async throws {
        let clock = try WallClock()
        defer { clock.restore(); try? FileManager.default.removeItem(atPath: dir) }
        let before = KernelCensus.objects()
        let state = "\(dir)/state"
        let first = try await start(["--state-dir", state])
        let answered = ContinuousClock.now
        #expect(try request(first, "PUT", "/v1/probes/long", #"{"target":{"type":"syscall","name":"getppid"},"ttl_seconds":600}"#).status == 201)
        #expect(try request(first, "PUT", "/v1/probes/short", #"{"target":{"type":"syscall","name":"getpid"},"ttl_seconds":40}"#).status == 201)
        func remaining(_ ttl: Double) -> Double { ttl - Self.seconds(ContinuousClock.now - answered) }
        let ttls = ["long": 600.0, "short": 40.0]

        // +1 h while running: the saved expiries follow within a few seconds.
        try clock.step(by: 3_600)
        let deadline = ContinuousClock.now + .seconds(5)
        var saved: [String: Date] = [:]
        repeat {
            saved = try Self.savedExpiries(state)
            if saved.allSatisfy({ abs($0.value.timeIntervalSince(Date()) - remaining(ttls[$0.key]!)) < 1 }) { break }
            try await Task.sleep(for: .milliseconds(100))
        } while ContinuousClock.now < deadline
        #expect(saved.keys.sorted() == ["long", "short"])
        for (name, expiry) in saved {
            #expect(abs(expiry.timeIntervalSince(Date()) - remaining(ttls[name]!)) < 1,
                    "\(name): saved expires_at \(expiry), the wall clock \(Date()), \(remaining(ttls[name]!)) s remain")
        }
        #expect(first.log.contains("wall clock stepped"), "the step is logged: \(first.log)")

        // kill -9 and restart: both back, with what remained on the monotonic clock.
        first.signal(SIGKILL)
        _ = await first.waitForExit()
        let second = try await start(["--state-dir", state])
        for name in ["long", "short"] {
            let shown = try expiresAt(second, name)
            #expect(abs(shown.timeIntervalSince(Date()) - remaining(ttls[name]!)) < 1, "\(name) after the restart: expires_at \(shown), \(remaining(ttls[name]!)) s remain")
        }
        await stop(second)

        // +60 s while the agent is down: short (~35 s left) has expired by the saved wall
        // time and is dropped; long is kept, with the saved expires_at (now 60 s nearer).
        let savedBefore = try Self.savedExpiries(state)
        try clock.step(by: 60)
        let third = try await start(["--state-dir", state])
        let listed = try #require(request(third, "GET", "/v1/probes").json?["probes"] as? [[String: Any]])
        #expect(listed.compactMap { $0["name"] as? String } == ["long"], "\(listed)")
        #expect(third.log.contains("short") && third.log.contains("expired while the agent was down"), "\(third.log)")
        let long = try expiresAt(third, "long")
        let shownText = try request(third, "GET", "/v1/probes/long").json?["expires_at"] as? String
        #expect(shownText == savedBefore["long"].map(ReportJSON.rfc3339Seconds), "long keeps its saved expires_at (the API shows whole seconds): shown \(shownText ?? "nil"), saved \(savedBefore["long"].map(ReportJSON.rfc3339Seconds) ?? "nil")")
        #expect(abs(long.timeIntervalSince(Date()) - (remaining(600) - 60)) < 1, "long: \(long.timeIntervalSince(Date())) s remain, expected \(remaining(600) - 60)")
        let resaved = ContinuousClock.now + .seconds(5)
        while try Self.savedExpiries(state).keys.sorted() != ["long"], ContinuousClock.now < resaved { try await Task.sleep(for: .milliseconds(100)) }
        #expect(try Self.savedExpiries(state).keys.sorted() == ["long"], "the dropped probe is gone from the state file")

        // The clock put right (−1 h 1 min): long's expires_at follows, with what remains.
        let remainingBefore = long.timeIntervalSince(Date())
        clock.restore()
        let corrected = try expiresAt(third, "long")
        #expect(abs(corrected.timeIntervalSince(Date()) - remainingBefore) < 1, "after the clock was put back: \(corrected.timeIntervalSince(Date())) s remain, \(remainingBefore) s before")
        await stop(third)
        let left = await KernelCensus.settledObjects(since: before, seconds: 30)
        #expect(left.isEmpty, "the kernel still holds \(left)")
    }

    // MARK: - Helpers

    func start(_ args: [String]) async throws -> AgentProcess { try await .started(["--log-level", "info"] + args) }

    func stop(_ agent: AgentProcess) async { await agent.stopCleanly() }

    func request(_ agent: AgentProcess, _ method: String, _ path: String, _ json: String? = nil) throws -> CurlClient.Reply {
        try agent.request(method, path, json)
    }

    func expiresAt(_ agent: AgentProcess, _ name: String) throws -> Date {
        let probe = try #require(request(agent, "GET", "/v1/probes/\(name)").json, "\(name) is gone")
        #expect(probe["state"] as? String == "active", "\(name): \(probe)")
        return try #require(Self.date(probe["expires_at"]), "\(name): \(probe)")
    }

    /// GET finds the probe active on every look (every 100 ms) for `seconds`, or until `end`.
    func expectPresent(_ agent: AgentProcess, _ name: String, for seconds: Double? = nil, until end: ContinuousClock.Instant? = nil, _ when: String) async throws {
        let end = end ?? ContinuousClock.now + .milliseconds(Int((seconds ?? 0) * 1000))
        var looks = 0
        while ContinuousClock.now < end {
            let reply = try request(agent, "GET", "/v1/probes/\(name)")
            looks += 1
            guard reply.status == 200, reply.json?["state"] as? String == "active" else {
                Issue.record("\(when): look \(looks) found \(reply.status) \(reply.body)")
                return
            }
            try await Task.sleep(for: .milliseconds(100))
        }
    }

    static func savedExpiries(_ state: String) throws -> [String: Date] {
        guard let data = FileManager.default.contents(atPath: "\(state)/probes.json") else { return [:] }
        let saved = try ReportJSON.decoder().decode(PersistedState.self, from: data)
        var result: [String: Date] = [:]
        for probe in saved.probes { if let name = probe.spec.name, let expiry = probe.expiresAt { result[name] = expiry } }
        return result
    }

    static func date(_ value: Any?) -> Date? {
        guard let text = value as? String else { return nil }
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        if let date = formatter.date(from: text) { return date }
        formatter.formatOptions = [.withInternetDateTime]
        return formatter.date(from: text)
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }
}

/// Steps CLOCK_REALTIME and puts it back exactly: the right wall time is the wall time at
/// the start plus the CLOCK_MONOTONIC time elapsed since (which no step moves). A watchdog
/// process does the same if this process dies before `restore()`.
private final class WallClock {
    private let startReal: Int64
    private let startMono: Int64
    private var watchdog: Process?
    private(set) var offset: Double = 0

    init() throws {
        startMono = Self.read(CLOCK_MONOTONIC)
        startReal = Self.read(CLOCK_REALTIME)
        let script = """
            import os, sys, time, signal
            real0, mono0, parent = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
            signal.pthread_sigmask(signal.SIG_SETMASK, [])  # this process's children inherit Dispatch's blocked mask
            until = time.monotonic() + 900
            while os.getppid() == parent and time.monotonic() < until:
                time.sleep(0.2)
            right = real0 + (time.clock_gettime_ns(time.CLOCK_MONOTONIC) - mono0)
            time.clock_settime_ns(time.CLOCK_REALTIME, right)
            print("watchdog: the wall clock put back", flush=True)
            """
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/python3")
        p.arguments = ["-c", script, "\(startReal)", "\(startMono)", "\(getpid())"]
        try p.run()
        watchdog = p
    }

    static func read(_ id: clockid_t) -> Int64 {
        var t = timespec()
        clock_gettime(id, &t)
        return Int64(t.tv_sec) * 1_000_000_000 + Int64(t.tv_nsec)
    }

    static func set(_ ns: Int64) throws {
        var t = timespec(tv_sec: Int(ns / 1_000_000_000), tv_nsec: Int(ns % 1_000_000_000))
        guard clock_settime(CLOCK_REALTIME, &t) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EPERM) }
    }

    func step(by seconds: Double) throws {
        try Self.set(Self.read(CLOCK_REALTIME) + Int64(seconds * 1e9))
        offset += seconds
    }

    /// Puts the clock right (and stops the watchdog); safe to call more than once.
    func restore() {
        try? Self.set(startReal + (Self.read(CLOCK_MONOTONIC) - startMono))
        offset = 0
    }

    deinit {
        restore()
        if let watchdog, watchdog.isRunning {
            kill(watchdog.processIdentifier, SIGKILL)
            watchdog.waitUntilExit()
        }
    }
}
