/// Spec member `budget`: what a probe may cost its host. The agent measures each probe's
/// cost (its call rate times its BPF run time per call) and enforces the budget in the
/// kernel: with `max_cpu_percent` it first records one call in N (1-in-N sampling, each
/// recorded call counted N times, so the results stay estimates of the truth and say so),
/// and suspends the probe when even that is over; `max_events_per_second` alone suspends
/// without sampling. A suspended probe resumes by itself once its cost would stay below half
/// of the budget, after a hold-off, or on a PUT.
public struct BudgetSpec: Sendable, Codable, Hashable {
    /// Of one CPU: 1.0 is 10 ms of CPU time per second.
    public var maxCPUPercent: Double?
    /// Calls (events, for tracepoint and profile targets) per second that pass the filter.
    public var maxEventsPerSecond: Int?

    public init(maxCPUPercent: Double? = nil, maxEventsPerSecond: Int? = nil) {
        self.maxCPUPercent = maxCPUPercent
        self.maxEventsPerSecond = maxEventsPerSecond
    }

    enum CodingKeys: String, CodingKey {
        case maxCPUPercent = "max_cpu_percent"
        case maxEventsPerSecond = "max_events_per_second"
    }

    /// The smallest CPU budget: 0.01 % of a CPU is 100 µs per second, about what measuring
    /// a probe costs.
    public static let minCPUPercent = 0.01
    /// A whole CPU: a probe allowed more than that needs no budget.
    public static let maxCPUPercent = 100.0
    public static let maxEventsPerSecondLimit = 1_000_000_000

    func validate() -> [FieldError] {
        var errors: [FieldError] = []
        if maxCPUPercent == nil && maxEventsPerSecond == nil {
            errors.append(FieldError(field: "budget", message: "give max_cpu_percent, max_events_per_second or both"))
        }
        if let p = maxCPUPercent, !(p >= Self.minCPUPercent && p <= Self.maxCPUPercent) {
            errors.append(FieldError(field: "budget.max_cpu_percent", message: "must be from \(Self.minCPUPercent) to \(Int(Self.maxCPUPercent)) (percent of one CPU)"))
        }
        if let e = maxEventsPerSecond, !(1...Self.maxEventsPerSecondLimit).contains(e) {
            errors.append(FieldError(field: "budget.max_events_per_second", message: "must be from 1 to \(Self.maxEventsPerSecondLimit)"))
        }
        return errors
    }
}
