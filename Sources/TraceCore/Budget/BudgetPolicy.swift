import Foundation

/// One probe's budget state and the decisions that move it: a pure function of what was
/// measured and when, so hysteresis and hold-offs are unit-tested with an injected clock.
///
/// - Over `max_cpu_percent`: record one call in N, N a power of two chosen so the projected
///   cost is 70 % of the limit (throttled); if even the largest N (or recording nothing) is
///   over, suspend. Over `max_events_per_second`: suspend (sampling does not lower the rate
///   of calls the probe's programs see).
/// - Throttled: halve N only when the projected cost at N/2 is below half the limit, and
///   not sooner than `relaxAfter` after the last change.
/// - Suspended: the programs are detached (parked: nothing runs, the probe costs nothing).
///   After the hold-off they are attached again recording nothing (probing) for `probeFor`,
///   which measures the rate and the cost of a call not recorded; the probe resumes only
///   if the projected cost (and the rate) is below half the limit, else it is parked again
///   with the hold-off doubled (up to `maxHoldOff`). A suspension within `backoffWindow` of
///   the last resume doubles it too, so a probe does not flap.
public struct BudgetPolicy: Sendable, Hashable {
    public enum State: String, Sendable, Codable, Hashable, CaseIterable {
        case active, throttled, suspended
    }

    public struct Limits: Sendable, Hashable {
        /// Percent of one CPU.
        public var maxCPUPercent: Double?
        public var maxEventsPerSecond: Double?
        /// Where the CPU limit comes from, for the reason text ("max_cpu_percent 1", or the
        /// probe's share of serve --max-cpu-percent).
        public var cpuLimitSource: String
        public init(maxCPUPercent: Double? = nil, maxEventsPerSecond: Double? = nil, cpuLimitSource: String = "max_cpu_percent") {
            self.maxCPUPercent = maxCPUPercent
            self.maxEventsPerSecond = maxEventsPerSecond
            self.cpuLimitSource = cpuLimitSource
        }
    }

    /// What was measured over the last second.
    public struct Measurement: Sendable, Hashable {
        /// Calls per second that passed the filter (recorded or not).
        public var eventsPerSecond: Double
        /// BPF run time per call at the current setting, in ns, from the latest BPF stats
        /// window taken at this setting; nil while none is (the decision on CPU waits).
        public var nanosecondsPerCall: Double?
        /// The highest rate of the last few seconds: relaxing and resuming go by it, so a
        /// lull of one second does not lift a limit that the next second needs again.
        public var peakEventsPerSecond: Double
        public init(eventsPerSecond: Double, nanosecondsPerCall: Double?, peakEventsPerSecond: Double? = nil) {
            self.eventsPerSecond = eventsPerSecond
            self.nanosecondsPerCall = nanosecondsPerCall
            self.peakEventsPerSecond = max(eventsPerSecond, peakEventsPerSecond ?? 0)
        }
        public var cpuPercent: Double? { nanosecondsPerCall.map { eventsPerSecond * $0 / 1e7 } }
    }

    public struct Settings: Sendable, Hashable {
        public var holdOff: Duration = .seconds(10)
        public var maxHoldOff: Duration = .seconds(300)
        public var relaxAfter: Duration = .seconds(5)
        /// How long a suspended probe is measured (attached, recording nothing) before it
        /// resumes or is parked again.
        public var probeFor: Duration = .seconds(2)
        /// A suspension this soon after a resume doubles the hold-off.
        public var backoffWindow: Duration = .seconds(600)
        public var maxSampleEvery: UInt32 = 1 << 16
        public init() {}
    }

    /// A change to apply in the kernel and to report.
    public struct Transition: Sendable, Hashable {
        public var from: State
        public var to: State
        public var sampleEvery: UInt32
        public var reason: String
        /// Suspended with the programs detached (false while probing, and in other states).
        public var parked: Bool
        /// A change of state or of N (counted in the transitions); false for probing and
        /// parking again, which are logged but stay `suspended`.
        public var counted: Bool { from != to || from == .throttled }
    }

    public private(set) var state: State = .active
    public private(set) var sampleEvery: UInt32 = 1
    /// Why the probe is throttled or suspended (nil when active).
    public private(set) var reason: String?
    /// Cost per call, in ns, when every call is recorded, and when none is (suspended).
    public private(set) var fullCost: Double?
    public private(set) var floorCost: Double?
    public let settings: Settings
    private var lastChange: Duration
    private var suspendedAt: Duration?
    private var resumedAt: Duration?
    /// Suspended: the programs are detached; false while probing.
    public private(set) var parked = false
    private var probingSince: Duration?
    /// Decisions in a row that found no sampling enough (see `step`).
    private var floorOver = 0
    public private(set) var holdOff: Duration

    public init(now: Duration, settings: Settings = Settings()) {
        self.settings = settings
        lastChange = now
        holdOff = settings.holdOff
    }

    /// What the costs come from, as reasons name it (`BPF stats`, `calibration`).
    public private(set) var costSource = "BPF stats"

    /// Notes a cost per call measured at the current setting (a BPF stats window, or a
    /// calibration: `source`).
    public mutating func measured(nanosecondsPerCall cost: Double, source: String = "BPF stats") {
        costSource = source
        switch state {
        case .suspended: floorCost = cost
        case .active: fullCost = cost
        case .throttled:
            // c(N) = floor + (full - floor) / N: what is known of one end gives the other.
            let n = Double(sampleEvery)
            if let full = fullCost {
                floorCost = max(0, (cost * n - full) / (n - 1))
            } else if let floor = floorCost {
                fullCost = floor + max(0, cost - floor) * n
            }
        }
    }

    /// Projected cost per call when one call in `n` is recorded (nil: unknown).
    public func projectedCost(sampleEvery n: UInt32, current: Double?) -> Double? {
        if let full = fullCost {
            let floor = floorCost ?? 0
            return floor + max(0, full - floor) / Double(n)
        }
        // Only the current setting's cost is known: halving N at most doubles it.
        guard let current, state != .suspended else { return nil }
        return current * Double(sampleEvery) / Double(n)
    }

    /// The decision for this second, if anything changes.
    public mutating func step(now: Duration, measured m: Measurement, limits: Limits) -> Transition? {
        switch state {
        case .suspended:
            if parked {
                guard let since = suspendedAt, now - since >= holdOff else { return nil }
                parked = false
                probingSince = now
                return Transition(from: .suspended, to: .suspended, sampleEvery: sampleEvery,
                                  reason: "hold-off over: attached again, recording nothing, to measure for \(settings.probeFor)", parked: false)
            }
            guard let since = probingSince, now - since >= settings.probeFor else { return nil }
            if let e = limits.maxEventsPerSecond, m.peakEventsPerSecond >= e / 2 {
                return parkAgain(now: now, reason: "\(Self.number(m.peakEventsPerSecond)) events/s, not under half of max_events_per_second \(Self.number(e))")
            }
            var resumeAt: UInt32 = 1
            if let p = limits.maxCPUPercent, fullCost != nil {
                // A cost never measured with every call recorded (suspended first for its
                // rate) is measured again after the resume.
                guard let n = smallestSampling(rate: m.peakEventsPerSecond, limit: p / 2, current: nil) else {
                    return parkAgain(now: now, reason: "\(Self.number(m.peakEventsPerSecond)) calls/s would cost more than half of \(limits.cpuLimitSource) \(Self.number(p)) at any sampling")
                }
                resumeAt = n
            }
            resumedAt = now
            probingSince = nil
            return move(to: resumeAt > 1 ? .throttled : .active, sampleEvery: resumeAt, now: now,
                        reason: resumeAt > 1 ? "resumed at 1-in-\(resumeAt) sampling: projected \(Self.percent(m.peakEventsPerSecond * (projectedCost(sampleEvery: resumeAt, current: nil) ?? 0) / 1e7)) of a CPU, under half of \(limits.cpuLimitSource) \(Self.number(limits.maxCPUPercent ?? 0))" : "resumed: the measured rate and cost are under half of the budget")
        case .active, .throttled:
            if let e = limits.maxEventsPerSecond, m.eventsPerSecond > e {
                return suspend(now: now, reason: "\(Self.number(m.eventsPerSecond)) events/s, over max_events_per_second \(Self.number(e))")
            }
            guard let p = limits.maxCPUPercent, let cpu = m.cpuPercent else { return nil }
            if cpu > p {
                let measuredText = "costs \(Self.percent(cpu)) of a CPU (\(Self.number(m.eventsPerSecond)) calls/s × \(Self.number(m.nanosecondsPerCall ?? 0)) ns, \(costSource))"
                // The projection says how far to go; a measurement over the limit at a setting
                // the projection thought enough goes one step further all the same.
                let projected = smallestSampling(rate: m.eventsPerSecond, limit: 0.7 * p, current: m.nanosecondsPerCall)
                // A cost per call measured in one 100 ms window can be off by a factor of
                // two or three on a busy host: the projection that no sampling is enough
                // must hold for two measurements (the first one samples 4 times less)
                // before the probe is suspended, unless the largest N is reached.
                if projected == nil { floorOver += 1 } else { floorOver = 0 }
                guard sampleEvery < settings.maxSampleEvery, projected != nil || floorOver < 2 else {
                    return suspend(now: now, reason: "\(measuredText), over \(limits.cpuLimitSource) \(Self.number(p)) even at 1-in-\(sampleEvery) sampling")
                }
                let n = min(settings.maxSampleEvery, max(projected ?? sampleEvery * 4, sampleEvery * 2))
                return move(to: .throttled, sampleEvery: n, now: now,
                            reason: "\(measuredText), over \(limits.cpuLimitSource) \(Self.number(p)): recording 1 call in \(n)")
            }
            guard state == .throttled, now - lastChange >= settings.relaxAfter else { return nil }
            let half = sampleEvery / 2
            guard let cost = projectedCost(sampleEvery: half, current: m.nanosecondsPerCall),
                  m.peakEventsPerSecond * cost / 1e7 < p / 2 else { return nil }
            let projected = Self.percent(m.peakEventsPerSecond * cost / 1e7)
            return move(to: half > 1 ? .throttled : .active, sampleEvery: half, now: now,
                        reason: half > 1 ? "projected \(projected) of a CPU at 1-in-\(half), under half of \(limits.cpuLimitSource) \(Self.number(p)): recording 1 call in \(half)" : "projected \(projected) of a CPU recording every call, under half of \(limits.cpuLimitSource) \(Self.number(p))")
        }
    }

    /// A PUT of the probe: every call recorded again, hold-off back to its start.
    public mutating func reset(now: Duration) -> Transition? {
        holdOff = settings.holdOff
        guard state != .active else { return nil }
        parked = false
        return move(to: .active, sampleEvery: 1, now: now, reason: "resumed by a PUT")
    }

    /// The smallest power-of-two N (from 1) whose projected cost at `rate` is at most
    /// `limit` percent; nil when even the largest is over.
    private func smallestSampling(rate: Double, limit: Double, current: Double?) -> UInt32? {
        var n: UInt32 = 1
        while n <= settings.maxSampleEvery {
            guard let cost = projectedCost(sampleEvery: n, current: current) else { return nil }
            if rate * cost / 1e7 <= limit { return n }
            if n == settings.maxSampleEvery { break }
            n *= 2
        }
        return nil
    }

    private mutating func suspend(now: Duration, reason: String) -> Transition {
        floorOver = 0
        if let resumed = resumedAt, now - resumed < settings.backoffWindow, suspendedAt != nil {
            holdOff = min(settings.maxHoldOff, holdOff * 2)
        }
        suspendedAt = now
        parked = true
        return move(to: .suspended, sampleEvery: sampleEvery, now: now,
                    reason: reason + "; suspended (recording nothing), measured again after \(Self.seconds(holdOff)) and resumed once under half of the budget")
    }

    /// Probing found the probe still over half its budget: detached again, for twice as long.
    private mutating func parkAgain(now: Duration, reason: String) -> Transition {
        holdOff = min(settings.maxHoldOff, holdOff * 2)
        suspendedAt = now
        parked = true
        probingSince = nil
        let text = reason + "; suspended (recording nothing), measured again after \(Self.seconds(holdOff))"
        self.reason = text
        lastChange = now
        return Transition(from: .suspended, to: .suspended, sampleEvery: sampleEvery, reason: text, parked: true)
    }

    static func seconds(_ d: Duration) -> String { "\(d.components.seconds) s" }

    private mutating func move(to next: State, sampleEvery n: UInt32, now: Duration, reason text: String) -> Transition {
        if next != .suspended { parked = false; probingSince = nil }
        let t = Transition(from: state, to: next, sampleEvery: n, reason: text, parked: next == .suspended && parked)
        state = next
        sampleEvery = n
        reason = next == .active ? nil : text
        lastChange = now
        return t
    }

    static func number(_ x: Double) -> String {
        if x >= 100 || x == x.rounded() { return String(Int(x.rounded())) }
        return String(format: x >= 10 ? "%.1f" : "%.2f", x)
    }

    static func percent(_ x: Double) -> String { number(x) + " %" }
}
