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
    /// Events written to the ring buffer, refused by the rate limit, refused by a full ring.
    public var eventsEmitted: UInt64 = 0
    public var eventsThrottled: UInt64 = 0
    public var eventsLost: UInt64 = 0
    /// The events member of the metrics, for probes with an `events` spec.
    public var events: EventCounts?
    /// Budgeted probes: calls that passed the filter, recorded or not; and the part of
    /// `calls` that 1-in-N sampling estimated.
    public var seen: UInt64 = 0
    public var estimated: UInt64 = 0

    /// A probe's events as its metrics show them.
    public struct EventCounts: Sendable, Hashable, Codable {
        /// The threshold of a call target; nil (JSON null, not absent) for a tracepoint's.
        public var minLatencyNs: UInt64?
        public var maxPerSecond: UInt32
        public var bufferKiB: UInt32
        /// Written to the ring buffer by the kernel.
        public var emitted: UInt64
        /// Not written: over max_per_second.
        public var throttled: UInt64
        /// Not written: the ring buffer was full.
        public var lost: UInt64
        /// Read from the ring by the agent and put in the stream.
        public var consumed: UInt64
        /// Streams open now.
        public var subscribers: Int
        /// Events that did not reach a subscriber (it read too slowly, or resumed too late):
        /// the sum of the `gap` counts sent.
        public var missed: UInt64

        enum CodingKeys: String, CodingKey {
            case minLatencyNs = "min_latency_ns"
            case maxPerSecond = "max_per_second"
            case bufferKiB = "buffer_kib"
            case emitted, throttled, lost, consumed, subscribers, missed
        }

        /// Every member, `min_latency_ns` null for tracepoints (as `latency_ns` in the metrics).
        public func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(minLatencyNs, forKey: .minLatencyNs)
            try c.encode(maxPerSecond, forKey: .maxPerSecond)
            try c.encode(bufferKiB, forKey: .bufferKiB)
            try c.encode(emitted, forKey: .emitted)
            try c.encode(throttled, forKey: .throttled)
            try c.encode(lost, forKey: .lost)
            try c.encode(consumed, forKey: .consumed)
            try c.encode(subscribers, forKey: .subscribers)
            try c.encode(missed, forKey: .missed)
        }
    }

    public init() {}

    /// Adds one CPU's totals.
    mutating func add(_ stats: tp_stats) {
        calls &+= stats.calls
        errors &+= stats.errors
        latencyCount &+= stats.lat_count
        latencySumNanoseconds &+= stats.lat_sum_ns
        droppedKeys &+= stats.dropped_keys
        stackFull &+= stats.stack_full
        eventsEmitted &+= stats.events
        eventsThrottled &+= stats.throttled
        eventsLost &+= stats.lost
        seen &+= stats.seen
        estimated &+= stats.estimated
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
