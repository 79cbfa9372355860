import CLibBPF
import Dispatch
import Foundation
import Glibc
import Logging
import Synchronization

/// What the controller needs of a probe (``AttachedProbe``; fakes in tests).
public protocol BudgetedProbe: AnyObject, Sendable {
    func budgetSample() throws(KernelError) -> AttachedProbe.BudgetSample
    func setBudget(sampleEvery: UInt32, suspended: Bool) throws(KernelError)
    func park(reaper: Reaper) throws(KernelError)
    func unpark(reaper: Reaper) throws(KernelError)
    /// The flavour a calibration measures the probe's cost by (nil: none).
    var calibrationFlavour: FlavourDescriptor.ID? { get }
}

extension BudgetedProbe {
    public var calibrationFlavour: FlavourDescriptor.ID? { nil }
}

extension AttachedProbe: BudgetedProbe {
    public var calibrationFlavour: FlavourDescriptor.ID? { descriptor.id }
}

/// A probe's measured cost and budget state, as `GET /v1/probes/{name}` shows it (`cost`).
public struct BudgetStatus: Sendable, Codable, Hashable {
    public var state: BudgetPolicy.State
    public var reason: String?
    /// One call in this many is recorded (and counted this many times).
    public var sampleEvery: UInt32
    /// Suspended with the programs detached (false while a suspended probe is measured).
    public var parked: Bool
    /// Calls per second that passed the filter, over the last second.
    public var eventsPerSecond: Double?
    /// The estimated cost now: `eventsPerSecond` × `nanosecondsPerCall`, percent of one CPU.
    public var cpuPercent: Double?
    /// BPF run time per call at the current setting, from the latest BPF stats window.
    public var nanosecondsPerCall: Double?
    /// `bpf_stats` (windows of BPF_ENABLE_STATS), `calibration: …` (the flavour's cost
    /// measured by the time its hook adds to calls, where stats are refused or serve
    /// --budget-cost calibration asks), or why there is no measured cost.
    public var source: String
    /// When the latest BPF stats window ended (RFC 3339).
    public var measuredAt: String?
    /// The CPU limit in force: the spec's, or the probe's share of serve --max-cpu-percent.
    public var maxCPUPercent: Double?
    public var maxEventsPerSecond: Double?
    /// Changes of state or sampling since the probe was attached, by the state entered.
    public var transitions: [String: Int]

    enum CodingKeys: String, CodingKey {
        case state, reason, source, transitions, parked
        case sampleEvery = "sample_every"
        case eventsPerSecond = "events_per_second"
        case cpuPercent = "cpu_percent"
        case nanosecondsPerCall = "ns_per_call"
        case measuredAt = "measured_at"
        case maxCPUPercent = "max_cpu_percent"
        case maxEventsPerSecond = "max_events_per_second"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(state, forKey: .state)
        try c.encode(reason, forKey: .reason)
        try c.encode(sampleEvery, forKey: .sampleEvery)
        try c.encode(parked, forKey: .parked)
        try c.encode(eventsPerSecond.map(Self.rounded), forKey: .eventsPerSecond)
        try c.encode(cpuPercent.map(Self.rounded), forKey: .cpuPercent)
        try c.encode(nanosecondsPerCall.map(Self.rounded), forKey: .nanosecondsPerCall)
        try c.encode(source, forKey: .source)
        try c.encode(measuredAt, forKey: .measuredAt)
        try c.encode(maxCPUPercent.map(Self.rounded), forKey: .maxCPUPercent)
        try c.encode(maxEventsPerSecond, forKey: .maxEventsPerSecond)
        try c.encode(transitions, forKey: .transitions)
    }

    static func rounded(_ x: Double) -> Double { (x * 1000).rounded() / 1000 }
}

/// Enforces budgets: every second it reads each budgeted probe's call count, estimates its
/// cost (calls per second × BPF run time per call), and applies its ``BudgetPolicy`` in the
/// kernel (the probe's budget control map). The run time per call comes from BPF stats
/// switched on for a short window (`windowLength`, every `statsInterval`, and after every
/// change of a probe's setting): kept on, they would cost every BPF program of the host two
/// clock reads per run.
///
/// With serve --max-cpu-percent, every probe is budgeted: the agent's own CPU time comes off
/// the limit first, and each probe's share of the rest is proportional to what it would
/// cost recording every call; a probe's limit is the smaller of its share and its own.
public final class BudgetController: Sendable {
    public struct Configuration: Sendable {
        /// serve --max-cpu-percent: all probes and the agent together (percent of one CPU).
        public var maxCPUPercent: Double?
        public var statsInterval: Duration = .seconds(5)
        public var windowLength: Duration = .milliseconds(100)
        public var policy = BudgetPolicy.Settings()
        /// BPF stats are on for the agent's lifetime (serve --bpf-stats): no windows needed.
        public var statsAlwaysOn = false
        /// Where the cost per call comes from (serve --budget-cost).
        public var costSource: CostSource = .auto
        public enum CostSource: String, Sendable, CaseIterable {
            /// BPF stats windows, or the flavour's calibration where stats are refused.
            case auto
            /// Always the flavour's calibration (no stats windows).
            case calibration
        }
        public init(maxCPUPercent: Double? = nil) { self.maxCPUPercent = maxCPUPercent }
    }

    struct Tracked {
        weak var probe: (any BudgetedProbe)?
        var spec: BudgetSpec?
        var policy: BudgetPolicy
        var last: (sample: AttachedProbe.BudgetSample, at: Duration)?
        var rate: Double?
        /// The rates of the last five seconds, newest last.
        var recentRates: [Double] = []
        /// Cost per call measured at the current setting (nil after a change, until the next window).
        var cost: Double?
        var measuredAt: Date?
        var limits = BudgetPolicy.Limits()
        var transitions: [String: Int] = [:]
        /// What the cost came from: nil (BPF stats), or the calibration's description.
        var calibrated: String?
    }

    struct State {
        var tracked: [String: Tracked] = [:]
        var lastWindow: Duration?
        var unavailable: String?
        var agentCPUPercent: Double = 0
        var lastUsage: (cpu: Duration, at: Duration)?
        var windows = 0
        var windowTime: Duration = .zero
        /// What BPF stats added to each run in the latest window (ns), taken off the costs.
        var statsBias: Double = 0
        /// Calibrations by flavour, measured once each (success or why not).
        var calibrations: [FlavourDescriptor.ID: Result<BudgetCalibration, BudgetCalibrationError>] = [:]
        var calibrator: (any BudgetCalibrating)?
        var running = false
        var stopped = false
    }

    public let configuration: Configuration
    private let clock: any ProbeClock
    private let reaper: Reaper
    private let logger: Logger
    private let state = Mutex(State())
    private let wake = DispatchSemaphore(value: 0)

    public init(configuration: Configuration = Configuration(), clock: any ProbeClock = SystemClock(), reaper: Reaper = .shared,
                logger: Logger = Logger(label: "traceplane.budget")) {
        self.configuration = configuration
        self.reaper = reaper
        self.clock = clock
        self.logger = logger
    }

    /// Gives the controller what measures flavours where BPF stats are refused (the agent
    /// sets it once capabilities are known).
    public func setCalibrator(_ calibrator: any BudgetCalibrating) {
        state.withLock { $0.calibrator = calibrator }
    }

    /// Whether every probe is budgeted (serve --max-cpu-percent).
    public var budgetsEveryProbe: Bool { configuration.maxCPUPercent != nil }

    // MARK: Registry

    /// Starts enforcing `spec` (and the agent-wide limit) on `probe`, named `name`: replaces
    /// what was tracked under that name. Probes built without budget control are ignored.
    public func track(_ name: String, probe: AttachedProbe, spec: BudgetSpec?) {
        guard probe.budgeted else { untrack(name); return }
        track(name, budgeted: probe, spec: spec)
    }

    public func track(_ name: String, budgeted probe: any BudgetedProbe, spec: BudgetSpec?) {
        let now = clock.uptime()
        state.withLock { s in
            s.tracked[name] = Tracked(probe: probe, spec: spec, policy: BudgetPolicy(now: now, settings: configuration.policy))
        }
        startIfNeeded()
        wake.signal()
    }

    public func untrack(_ name: String) {
        _ = state.withLock { $0.tracked.removeValue(forKey: name) }
    }

    /// A PUT that keeps the attachment: the new budget, every call recorded again.
    public func put(_ name: String, spec: BudgetSpec?) {
        let now = clock.uptime()
        let change = state.withLock { s -> (any BudgetedProbe, BudgetPolicy.Transition)? in
            guard var t = s.tracked[name] else { return nil }
            t.spec = spec
            let transition = t.policy.reset(now: now)
            if let transition {
                Self.count(transition, &t)
                t.cost = nil
                t.last = nil
                t.rate = nil
                t.recentRates = []
            }
            s.tracked[name] = t
            guard let transition, let probe = t.probe else { return nil }
            return (probe, transition)
        }
        if let (probe, transition) = change { apply(name, probe, transition) }
        wake.signal()
    }

    public func status(_ name: String) -> BudgetStatus? {
        state.withLock { s in
            guard let t = s.tracked[name] else { return nil }
            return BudgetStatus(state: t.policy.state, reason: t.policy.reason, sampleEvery: t.policy.sampleEvery, parked: t.policy.parked,
                                eventsPerSecond: t.policy.parked ? nil : t.rate,
                                cpuPercent: t.policy.parked ? 0 : t.cost.flatMap { c in t.rate.map { $0 * c / 1e7 } }, nanosecondsPerCall: t.cost,
                                source: t.calibrated ?? s.unavailable.map { "unavailable: \($0)" } ?? "bpf_stats",
                                measuredAt: t.measuredAt.map(ReportJSON.rfc3339),
                                maxCPUPercent: t.limits.maxCPUPercent, maxEventsPerSecond: t.limits.maxEventsPerSecond,
                                transitions: t.transitions)
        }
    }

    /// Whether a probe was ever budgeted (the budget families are exposed from then on).
    public var everTracked: Bool { state.withLock { $0.running } }

    /// The agent's own CPU over the last second, percent of one CPU.
    public var agentCPUPercent: Double { state.withLock { $0.agentCPUPercent } }

    /// BPF stats windows taken, their total length (what measuring cost the host), and the
    /// stats' own cost per run in the latest one.
    public var windows: (count: Int, time: Duration, statsBiasNanoseconds: Double) {
        state.withLock { ($0.windows, $0.windowTime, $0.statsBias) }
    }

    public func stop() {
        state.withLock { $0.stopped = true }
        wake.signal()
    }

    // MARK: The loop

    private func startIfNeeded() {
        let start = state.withLock { s -> Bool in
            guard !s.running, !s.stopped else { return false }
            s.running = true
            return true
        }
        guard start else { return }
        let thread = Thread { [self] in run() }
        thread.name = "traceplane-budget"
        thread.start()
    }

    private func run() {
        var nextTick = clock.uptime() + .seconds(1)
        while true {
            let wait = max(.zero, nextTick - clock.uptime())
            _ = wake.wait(timeout: .now() + .nanoseconds(Int(wait.components.seconds * 1_000_000_000 + wait.components.attoseconds / 1_000_000_000)))
            if state.withLock({ $0.stopped }) { return }
            if windowDue() { window() }
            if clock.uptime() >= nextTick {
                tick()
                nextTick = clock.uptime() + .seconds(1)
            }
        }
    }

    /// Whether a probe has no cost measured at its current setting (at most one window a
    /// second), or the periodic window is due.
    func windowDue() -> Bool {
        let now = clock.uptime()
        return state.withLock { s in
            guard !s.tracked.isEmpty else { return false }
            // Calibrated costs are known once measured: only a probe without one is due.
            if s.unavailable != nil || configuration.costSource == .calibration {
                return s.tracked.values.contains { $0.cost == nil }
            }
            guard let last = s.lastWindow else { return true }
            if now - last >= configuration.statsInterval { return true }
            return now - last >= .seconds(1) && s.tracked.values.contains { $0.cost == nil }
        }
    }

    private func samples() -> [String: AttachedProbe.BudgetSample] {
        let probes = state.withLock { s in s.tracked.compactMap { name, t in t.probe.map { (name, $0) } } }
        var out: [String: AttachedProbe.BudgetSample] = [:]
        for (name, probe) in probes {
            if let sample = try? probe.budgetSample() { out[name] = sample }
        }
        return out
    }

    /// One BPF stats window: the run time per call of every tracked probe at its current
    /// setting. Programs shared by several probes (the syscall hook) have their run time
    /// divided by the calls each probe saw.
    func window() {
        var fd: Int32 = -1
        if configuration.costSource == .calibration {
            calibratedWindow(because: "serve --budget-cost calibration")
            return
        }
        if !configuration.statsAlwaysOn {
            fd = tp_enable_runtime_stats()
            if fd < 0 {
                let why = "BPF_ENABLE_STATS refused (\(Errno(rawValue: -fd).name))"
                let first = state.withLock { s -> Bool in defer { s.unavailable = why }; return s.unavailable == nil }
                if first { logger.warning("budgets: \(why): costs per call come from each flavour's calibration instead") }
                calibratedWindow(because: why)
                return
            }
        }
        let start = clock.uptime()
        // BPF stats time each run with two clock reads: on short programs that is much of
        // what they report (about 55 ns per run on the development VMs). Measured on an
        // empty program now and taken off every run counted.
        // The least of four batches: an interrupt inside a batch only adds.
        let bias = max(0, (0..<4).map { _ in tp_stats_bias_ns(128) }.min() ?? 0)
        let before = samples()
        let length = configuration.windowLength
        usleep(UInt32(length.components.seconds * 1_000_000 + length.components.attoseconds / 1_000_000_000_000))
        let after = samples()
        let end = clock.uptime()
        if fd >= 0 { close(fd) }
        let date = clock.now()
        func runTime(_ a: AttachedProbe.BudgetSample, _ b: AttachedProbe.BudgetSample) -> Double {
            max(0, Double(b.runTimeNanoseconds &- a.runTimeNanoseconds) - bias * Double(b.runCount &- a.runCount))
        }
        var shared: [ObjectIdentifier: (runTime: Double, seen: UInt64)] = [:]
        for (name, b) in after {
            guard let a = before[name], let group = b.sharedPrograms else { continue }
            let seen = b.seen &- a.seen
            shared[group, default: (runTime(a, b), 0)].seen += seen
        }
        state.withLock { s in
            s.statsBias = bias
            s.windows += 1
            s.windowTime += end - start
            s.lastWindow = end
            for (name, b) in after {
                guard let a = before[name], var t = s.tracked[name] else { continue }
                let seen = b.seen &- a.seen
                var runTime = runTime(a, b)
                if let group = b.sharedPrograms, let total = shared[group], total.seen > 0 {
                    runTime = total.runTime * Double(seen) / Double(total.seen)
                }
                // Too few calls say nothing of the cost of one: keep what was known.
                guard seen >= 16 else {
                    if t.last == nil { t.last = (b, end) }
                    s.tracked[name] = t
                    continue
                }
                let cost = runTime / Double(seen)
                t.cost = cost
                t.measuredAt = date
                if t.last == nil {
                    // A probe tracked just now: its first rate is the window's.
                    t.rate = Double(seen) / ((end - start) / .seconds(1))
                    t.last = (b, end)
                }
                t.policy.measured(nanosecondsPerCall: cost)
                s.tracked[name] = t
            }
        }
    }

    /// Costs from calibrations instead of BPF stats: each flavour measured once (the first
    /// time a probe of it needs a cost), then every probe's cost at its current setting is
    /// c(N) = floor + (full - floor) / N, the floor while suspended.
    func calibratedWindow(because why: String) {
        let (needed, calibrator) = state.withLock { s -> ([FlavourDescriptor.ID], (any BudgetCalibrating)?) in
            let flavours = Set(s.tracked.values.compactMap { $0.cost == nil ? $0.probe?.calibrationFlavour : nil })
            return (flavours.filter { s.calibrations[$0] == nil }.sorted { $0.rawValue < $1.rawValue }, s.calibrator)
        }
        var measured: [FlavourDescriptor.ID: Result<BudgetCalibration, BudgetCalibrationError>] = [:]
        for flavour in needed {
            let result = calibrator?.calibrate(flavour) ?? .failure(BudgetCalibrationError(description: "no calibration is available yet"))
            switch result {
            case .success(let c):
                logger.notice("budgets: \(flavour.rawValue) calibrated (\(why)): \(BudgetPolicy.number(c.full)) ns per recorded call, \(BudgetPolicy.number(c.floor)) ns per call not recorded")
            case .failure(let error):
                logger.warning("budgets: \(flavour.rawValue) could not be calibrated: \(error); only max_events_per_second is enforced on its probes")
            }
            // Without a calibrator yet (capabilities not probed), try again later.
            if calibrator != nil { measured[flavour] = result }
        }
        let date = clock.now()
        state.withLock { s in
            for (flavour, result) in measured { s.calibrations[flavour] = result }
            s.lastWindow = clock.uptime()
            for (name, var t) in s.tracked where t.cost == nil {
                guard let flavour = t.probe?.calibrationFlavour, case .success(let c)? = s.calibrations[flavour] else {
                    if let flavour = t.probe?.calibrationFlavour, case .failure(let error)? = s.calibrations[flavour] {
                        t.calibrated = "unavailable: \(why); calibration: \(error)"
                        s.tracked[name] = t
                    }
                    continue
                }
                let n = Double(t.policy.sampleEvery)
                let cost = t.policy.state == .suspended ? c.floor : c.floor + max(0, c.full - c.floor) / n
                t.cost = cost
                t.measuredAt = date
                t.calibrated = "calibration: \(flavour.rawValue) measured by the agent (\(why)), \(BudgetPolicy.number(c.full)) ns per recorded call, \(BudgetPolicy.number(c.floor)) ns per call not recorded"
                t.policy.measured(nanosecondsPerCall: cost, source: "calibration")
                s.tracked[name] = t
            }
        }
    }

    /// One second: rates, the agent's CPU, each probe's limits, and the decisions.
    func tick() {
        let now = clock.uptime()
        let current = samples()
        let usage = Self.processCPU()
        var changes: [(String, any BudgetedProbe, BudgetPolicy.Transition)] = []
        state.withLock { s in
            if let last = s.lastUsage, now > last.at {
                s.agentCPUPercent = 100 * ((usage - last.cpu) / (now - last.at))
            }
            s.lastUsage = (usage, now)
            for (name, sample) in current {
                guard var t = s.tracked[name] else { continue }
                if let last = t.last, now > last.at {
                    let rate = Double(sample.seen &- last.sample.seen) / ((now - last.at) / .seconds(1))
                    t.rate = rate
                    t.recentRates = Array((t.recentRates + [rate]).suffix(5))
                }
                t.last = (sample, now)
                s.tracked[name] = t
            }
            let shares = shares(s)
            for name in s.tracked.keys.sorted() {
                guard var t = s.tracked[name], let rate = t.rate else { continue }
                t.limits = limits(t, share: shares[name], agentCPU: s.agentCPUPercent)
                let measurement = BudgetPolicy.Measurement(eventsPerSecond: rate, nanosecondsPerCall: t.cost,
                                                           peakEventsPerSecond: t.recentRates.max())
                if let transition = t.policy.step(now: now, measured: measurement, limits: t.limits) {
                    if transition.counted { Self.count(transition, &t) }
                    t.cost = nil
                    // Attached again or detached: the rate since the last sample says nothing.
                    if transition.from == .suspended || transition.to == .suspended {
                        t.last = nil
                        t.rate = transition.parked ? 0 : nil
                        t.recentRates = []
                    }
                    if let probe = t.probe { changes.append((name, probe, transition)) }
                }
                s.tracked[name] = t
            }
        }
        for (name, probe, transition) in changes { apply(name, probe, transition) }
    }

    /// Each probe's share of serve --max-cpu-percent after the agent's own CPU: in
    /// proportion to its cost recording every call.
    private func shares(_ s: State) -> [String: Double] {
        guard let total = configuration.maxCPUPercent else { return [:] }
        let available = max(0, total - s.agentCPUPercent)
        var demand: [String: Double] = [:]
        for (name, t) in s.tracked {
            guard let rate = t.rate, let cost = t.policy.fullCost ?? t.cost else { continue }
            demand[name] = rate * cost / 1e7
        }
        let sum = demand.values.reduce(0, +)
        guard sum > available else { return demand.mapValues { _ in available } }
        return demand.mapValues { available * $0 / sum }
    }

    private func limits(_ t: Tracked, share: Double?, agentCPU: Double) -> BudgetPolicy.Limits {
        var limits = BudgetPolicy.Limits(maxCPUPercent: t.spec?.maxCPUPercent, maxEventsPerSecond: t.spec?.maxEventsPerSecond.map(Double.init))
        if let total = configuration.maxCPUPercent, let share = share.map({ max(BudgetSpec.minCPUPercent, $0) }),
           limits.maxCPUPercent.map({ share < $0 }) ?? true {
            limits.maxCPUPercent = share
            limits.cpuLimitSource = "its share of serve --max-cpu-percent \(BudgetPolicy.number(total)) (agent \(BudgetPolicy.percent(agentCPU)))"
        }
        return limits
    }

    private static func count(_ transition: BudgetPolicy.Transition, _ t: inout Tracked) {
        t.transitions[transition.to.rawValue, default: 0] += 1
    }

    /// Puts a transition into the kernel. Suspending sets the control (nothing recorded)
    /// before detaching; probing and resuming attach again after setting it, so no call is
    /// recorded under the wrong setting.
    private func apply(_ name: String, _ probe: any BudgetedProbe, _ transition: BudgetPolicy.Transition) {
        do throws(KernelError) {
            try probe.setBudget(sampleEvery: transition.sampleEvery, suspended: transition.to == .suspended)
            if transition.parked { try probe.park(reaper: reaper) } else { try probe.unpark(reaper: reaper) }
            logger.notice("probe \(name): budget \(transition.from.rawValue) -> \(transition.to.rawValue) (1-in-\(transition.sampleEvery)): \(transition.reason)")
        } catch {
            logger.warning("probe \(name): budget \(transition.to.rawValue) could not be applied: \(error)")
        }
    }

    /// This process's CPU time (user + system).
    public static func processCPU() -> Duration {
        var usage = rusage()
        getrusage(RUSAGE_SELF.rawValue, &usage)
        func d(_ t: timeval) -> Duration { .seconds(Int64(t.tv_sec)) + .microseconds(Int64(t.tv_usec)) }
        return d(usage.ru_utime) + d(usage.ru_stime)
    }
}
