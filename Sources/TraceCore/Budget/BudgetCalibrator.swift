import CLibBPF
import Foundation
import Glibc

/// What a budget needs to know of a flavour's cost where BPF stats cannot say it.
public protocol BudgetCalibrating: Sendable {
    /// The cost per call of a plain budgeted probe of `flavour`: recording every call
    /// (`full`) and recording none (`floor`: the programs run, check the budget and
    /// return), in nanoseconds; or why it cannot be measured.
    func calibrate(_ flavour: FlavourDescriptor.ID) -> Result<BudgetCalibration, BudgetCalibrationError>
}

public struct BudgetCalibration: Sendable, Hashable {
    public var full: Double
    public var floor: Double
}

public struct BudgetCalibrationError: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
}

/// Measures flavours by the time their hooks add to calls this thread makes, where BPF
/// stats are refused (`BPF_ENABLE_STATS` needs CAP_SYS_ADMIN) or `serve --budget-cost
/// calibration` asks for it: a budgeted probe of the flavour, filtered to the agent's own
/// process, on getppid (syscall flavours), on `raw_syscalls:sys_enter` (tracepoint
/// flavours, which getppid fires once per call) or on a do-nothing function of the agent's
/// own binary (uprobes); the same loop untraced is taken off. The least of five rounds of
/// 10,000 calls each way, interleaved: interruptions only add. The hook's own dispatch is included (the
/// uprobe trap, for one), which BPF stats do not see: an honest cost, if a larger one.
///
/// What a probe's keys and events add is not in a plain probe's cost: a calibrated keyed
/// probe's cost is an underestimate, and its status says the cost comes from calibration.
public final class BudgetCalibrator: BudgetCalibrating {
    let planner: Planner
    let report: CapabilityReport
    let calls: Int
    let rounds: Int

    public init(planner: Planner, report: CapabilityReport, calls: Int = 10_000, rounds: Int = 5) {
        self.planner = planner
        self.report = report
        self.calls = calls
        self.rounds = rounds
    }

    /// The spec of the calibration probe of `flavour`, and the loop kind that fires it.
    func spec(_ id: FlavourDescriptor.ID) -> Result<(spec: ProbeSpec, kind: Int32), BudgetCalibrationError> {
        guard let descriptor = FlavourCatalog.all.first(where: { $0.id == id }) else {
            return .failure(BudgetCalibrationError(description: "flavour \(id.rawValue) is unknown"))
        }
        let pid = Int(getpid())
        let filter = ProbeFilter(pid: pid)
        let budget = BudgetSpec(maxCPUPercent: nil, maxEventsPerSecond: 1_000_000_000)
        let mechanism = [descriptor.flavour.rawValue]
        switch id {
        case .syscallHubBTF, .syscallHubRaw, .syscallTracepoints:
            return .success((ProbeSpec(name: "budget-calibration", target: ProbeTarget(type: .syscall, name: "getppid"), mechanisms: mechanism,
                                       filter: filter, budget: budget), 0))
        case .fentry, .kprobe:
            let function = (report.kernel.syscallPrefix ?? "__x64_") + "sys_getppid"
            return .success((ProbeSpec(name: "budget-calibration", target: ProbeTarget(type: .function, name: function), mechanisms: mechanism,
                                       filter: filter, budget: budget), 0))
        case .eventTpBTF, .eventRawTracepoint, .eventTracepoint:
            return .success((ProbeSpec(name: "budget-calibration", target: ProbeTarget(type: .tracepoint, name: "raw_syscalls:sys_enter"),
                                       mechanisms: mechanism, filter: filter, budget: budget), 0))
        case .uprobe:
            guard let path = Self.ownExecutable() else { return .failure(BudgetCalibrationError(description: "/proc/self/exe cannot be read")) }
            return .success((ProbeSpec(name: "budget-calibration", target: ProbeTarget(type: .uprobe, path: path, symbol: "tp_budget_calibration_target"),
                                       mechanisms: mechanism, filter: filter, budget: budget), 1))
        case .profile:
            return .failure(BudgetCalibrationError(description: "a profile runs at its frequency on every CPU: no call to calibrate it on"))
        }
    }

    public func calibrate(_ id: FlavourDescriptor.ID) -> Result<BudgetCalibration, BudgetCalibrationError> {
        let made: (spec: ProbeSpec, kind: Int32)
        switch spec(id) {
        case .success(let s): made = s
        case .failure(let error): return .failure(error)
        }
        let spec: ProbeSpec
        do { spec = try ProbeManager.normalize(made.spec, host: planner.host) } catch {
            return .failure(BudgetCalibrationError(description: "its calibration probe is refused: \(error.detail)"))
        }
        let probe: AttachedProbe
        switch planner.attach(spec, report: report) {
        case .success(let attached): probe = attached
        case .failure(let failure):
            let why = failure.attempts.last.map { "\($0.flavour.rawValue): \($0.message)" } ?? "nothing attached"
            return .failure(BudgetCalibrationError(description: "its calibration probe did not attach (\(why))"))
        }
        defer { probe.detach(reaper: planner.reaper) }
        func perCall() -> Double { tp_budget_calibration_loop(made.kind, calls) / Double(calls) }
        do throws(KernelError) {
            // Rounds interleave the three settings, so that a slow patch of the machine
            // (another process's burst, a frequency change) touches all three alike; the
            // least of each is kept. Tried again (up to three times) while recording every
            // call does not measure above not tracing at all: that is noise, not a cost.
            for _ in 0..<3 {
                var untraced = Double.infinity, full = Double.infinity, floor = Double.infinity
                for _ in 0..<rounds {
                    try probe.setBudget(sampleEvery: 1, suspended: true)
                    try probe.park(reaper: planner.reaper)
                    untraced = min(untraced, perCall())
                    try probe.unpark(reaper: planner.reaper)
                    try probe.setBudget(sampleEvery: 1, suspended: false)
                    full = min(full, perCall())
                    // One call in 2^30 recorded: the cost of a call the budget does not record.
                    try probe.setBudget(sampleEvery: 1 << 30, suspended: false)
                    floor = min(floor, perCall())
                }
                let seen = try probe.budgetSample().seen
                guard seen >= UInt64(2 * rounds * calls) else {
                    return .failure(BudgetCalibrationError(description: "its calibration probe saw \(seen) of the \(2 * rounds * calls) calls made"))
                }
                if full > untraced {
                    return .success(BudgetCalibration(full: full - untraced, floor: max(0, min(floor, full) - untraced)))
                }
            }
            return .failure(BudgetCalibrationError(description: "recording every call measured no slower than not tracing, three times over: the machine is too noisy to tell the cost"))
        } catch {
            return .failure(BudgetCalibrationError(description: "its calibration probe could not be controlled: \(error)"))
        }
    }

    static func ownExecutable() -> String? {
        var buffer = [CChar](repeating: 0, count: Int(PATH_MAX) + 1)
        let n = readlink("/proc/self/exe", &buffer, buffer.count - 1)
        guard n > 0 else { return nil }
        return String(decoding: buffer[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
    }
}
