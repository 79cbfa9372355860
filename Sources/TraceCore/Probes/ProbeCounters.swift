import CBPFLayouts

/// Aggregates read from a probe's maps.
public struct ProbeCounters: Sendable, Hashable {
    public struct Bucket: Sendable, Hashable, Codable {
        /// Inclusive bounds in nanoseconds.
        public var lower: UInt64
        public var upper: UInt64
        public var count: UInt64
    }
    public struct Process: Sendable, Hashable, Codable {
        /// The process id (tgid).
        public var pid: Int
        /// The process's name: its thread-group leader's comm.
        public var comm: String
        public var calls: UInt64
    }
    public var calls: UInt64 = 0
    public var errors: UInt64 = 0
    public var latencyCount: UInt64 = 0
    public var latencySumNanoseconds: UInt64 = 0
    /// Non-empty log2 buckets, ascending.
    public var buckets: [Bucket] = []
    /// Top processes by calls, descending.
    public var processes: [Process] = []
    public var runTimeNanoseconds: UInt64 = 0
    public var runCount: UInt64 = 0
    /// Calls whose key found no room in the key table.
    public var droppedKeys: UInt64 = 0
    /// Stack parts not recorded: the stack map had no room (see ``KeyedAggregate/stackFull``).
    public var stackFull: UInt64 = 0
    /// The key table, for probes with an `aggregate` spec.
    public var aggregate: KeyedAggregate?

    public init() {}

    /// Adds one CPU's totals.
    mutating func add(_ stats: tp_stats) {
        calls &+= stats.calls
        errors &+= stats.errors
        latencyCount &+= stats.lat_count
        latencySumNanoseconds &+= stats.lat_sum_ns
        droppedKeys &+= stats.dropped_keys
        stackFull &+= stats.stack_full
    }

    /// Adds the programs' run-time statistics.
    mutating func add(_ stats: [ProgramStats]) {
        for stat in stats {
            runTimeNanoseconds &+= stat.runTimeNanoseconds
            runCount &+= stat.runCount
        }
    }

    /// The non-empty buckets of the log2 slot counts.
    static func buckets(_ slots: [UInt64]) -> [Bucket] {
        slots.enumerated().filter { $0.element > 0 }.map { slot, count in
            let b = bounds(slot: slot)
            return Bucket(lower: b.lower, upper: b.upper, count: count)
        }
    }

    /// The `limit` processes with most calls in a process table (a zero tgid is a free entry).
    static func topProcesses(_ table: [tp_proc], limit: Int) -> [Process] {
        var processes = table.filter { $0.tgid != 0 }.map { Process(pid: Int($0.tgid), comm: cString($0.comm), calls: $0.calls) }
        processes.sort { ($0.calls, $1.pid) > ($1.calls, $0.pid) }
        return Array(processes.prefix(limit))
    }

    /// Bounds of log2 slot `i`: slot 0 holds 0–1 ns, slot i ≥ 1 holds [2^i, 2^(i+1) − 1].
    public static func bounds(slot: Int) -> (lower: UInt64, upper: UInt64) {
        if slot == 0 { return (0, 1) }
        if slot >= 63 { return (1 << 63, UInt64.max) }
        return (1 << UInt64(slot), (1 << UInt64(slot + 1)) - 1)
    }
}
