import Foundation
import Glibc
import TraceCore

// MARK: - Events

extension SelfTestRunner {
    /// Every flavour's ring buffer: with `events` at threshold 0, each counted getpgid call
    /// (the syscall on every syscall flavour, its kernel entry on fentry and kprobe) must
    /// arrive as one event from the calling thread, none throttled or lost.
    func eventChecks() async -> [CheckResult] {
        let events = EventsSpec(minLatencyNs: 0, maxPerSecond: EventsSpec.maxMaxPerSecond, bufferKiB: 256)
        let trigger: @Sendable () -> Void = { _ = getpgid(0) }
        var results: [CheckResult] = []
        for flavour in FlavourCatalog.chain(for: .syscall).map(\.flavour) {
            results.append(await run(CheckPlan(
                name: "events: syscall getpgid, every call an event, mechanisms [\(flavour.rawValue)]",
                target: ProbeTarget(type: .syscall, name: "getpgid"), flavours: [flavour], events: calls,
                expectation: .exact(calls), trigger: trigger, streamed: events)))
        }
        for flavour in FlavourCatalog.chain(for: .function).map(\.flavour) {
            results.append(await run(CheckPlan(
                name: "events: function \(prefix)sys_getpgid, every call an event, mechanisms [\(flavour.rawValue)]",
                target: ProbeTarget(type: .function, name: "\(prefix)sys_getpgid"), flavours: [flavour], events: calls,
                expectation: .exact(calls), trigger: trigger, streamed: events)))
        }
        return results
    }

    /// What is wrong with the events of probe `name`, which counted `calls`: each must be in
    /// its feed (read from the start), from this process and the caller thread, with a
    /// latency and ret 0; the kernel's counts must agree.
    func eventFailuresOf(_ name: String, calls: UInt64, into result: inout CheckResult) async -> [String] {
        guard let events = try? await manager.events(name).events else { return ["the probe has no event feed"] }
        let deadline = ContinuousClock.now + .seconds(10)
        while events.consumed < calls && ContinuousClock.now < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        let subscription = events.feed.subscribe(after: 0, follow: false)
        defer { subscription.cancel() }
        var received: [[String: Any]] = []
        var failures: [String] = []
        reading: while let item = subscription.next() {
            switch item {
            case .event(_, _, let json):
                received.append((try? JSONSerialization.jsonObject(with: Data(json.utf8))) as? [String: Any] ?? [:])
            case .gap(let missed): failures.append("the feed lost \(missed) events")
            case .end: break reading
            }
        }
        let counts = (try? await manager.metrics(name))?.events
        result.actual?.events = .init(received: received.count, emitted: counts?.emitted ?? 0, throttled: counts?.throttled ?? 0,
                                      lost: counts?.lost ?? 0)
        result.expected += "; events == calls, all from this thread, none throttled or lost"
        if UInt64(received.count) != calls { failures.append("\(received.count) events for \(calls) calls") }
        if let counts, counts.emitted != calls || counts.throttled != 0 || counts.lost != 0 {
            failures.append("kernel counts: emitted \(counts.emitted), throttled \(counts.throttled), lost \(counts.lost)")
        }
        let pgid = Int(getpgid(0))
        let strangers = received.filter {
            $0["pid"] as? Int != pid || $0["thread"] as? String != Self.callerThreadName || $0["ret"] as? Int != pgid || !($0["latency_ns"] is Int)
        }
        // The event's wall-clock time against this host's clock (the check takes seconds).
        let now = Date().timeIntervalSince1970
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let late = received.filter { event in
            guard let text = event["time"] as? String, let time = formatter.date(from: text) else { return true }
            return abs(time.timeIntervalSince1970 - now) > 120
        }
        if let first = late.first { failures.append("\(late.count) events with a time not within 2 minutes of now, e.g. \(first["time"] ?? "none")") }
        if let first = strangers.first { failures.append("\(strangers.count) events not from this thread's calls, e.g. \(first)") }
        return failures
    }
}

// MARK: - Budgets

extension SelfTestRunner {
    /// Every flavour's budget path (built with budget_on, or the shared hook's HUB_F_BUDGET
    /// slot): a budget far above what the check costs records every getpgid call, and the
    /// `seen` count agrees.
    func budgetChecks() async -> [CheckResult] {
        let budget = BudgetSpec(maxCPUPercent: 100)
        let trigger: @Sendable () -> Void = { _ = getpgid(0) }
        var results: [CheckResult] = []
        for flavour in FlavourCatalog.chain(for: .syscall).map(\.flavour) {
            results.append(await run(CheckPlan(
                name: "budget: syscall getpgid, every call seen and recorded, mechanisms [\(flavour.rawValue)]",
                target: ProbeTarget(type: .syscall, name: "getpgid"), flavours: [flavour], events: calls,
                expectation: .exact(calls), trigger: trigger, budget: budget)))
        }
        for flavour in FlavourCatalog.chain(for: .function).map(\.flavour) {
            results.append(await run(CheckPlan(
                name: "budget: function \(prefix)sys_getpgid, every call seen and recorded, mechanisms [\(flavour.rawValue)]",
                target: ProbeTarget(type: .function, name: "\(prefix)sys_getpgid"), flavours: [flavour], events: calls,
                expectation: .exact(calls), trigger: trigger, budget: budget)))
        }
        return results
    }
}
