import CBPFLayouts

/// A probe's key table as read: every key with its calls, errors and value histogram,
/// summed over CPUs (the `aggregate` member of the metrics; `probe_key_*` in Prometheus).
public struct KeyedAggregate: Sendable, Hashable {
    /// One part of a key, typed for display.
    public enum KeyValue: Sendable, Hashable {
        case unsigned(UInt64)
        case signed(Int64)
        case string(String)
        /// `ok`, or the errno name of a negative return (`EBADF`; `E123` when unnamed).
        case errno(String)
        /// A cgroup v2 id; its path under the cgroup2 mount and what the path says runs
        /// there, when found; `removed` when the cgroup is gone (the path is its last).
        case cgroup(id: UInt64, path: String?, container: CgroupIdentity?, removed: Bool)
        /// A kernel or user stack: its frames, innermost first (each a function name, or
        /// `[unknown] module+0xoffset`); empty when there was none (a kernel thread's user
        /// stack) or before it is symbolized; a single marker frame when it was lost.
        case stack(StackRef, frames: [String])

        /// The value as a label or a line of text.
        public var text: String {
            switch self {
            case .unsigned(let v): String(v)
            case .signed(let v): String(v)
            case .string(let s): s
            case .errno(let s): s
            case .cgroup(let id, let path, _, _): path ?? "cgroup-id:\(id)"
            case .stack(let ref, let frames): ref.lossFrame ?? frames.reversed().joined(separator: ";")
            }
        }
    }

    public struct Bucket: Sendable, Hashable, Codable {
        /// Inclusive bounds of the value.
        public var lower: Int64
        public var upper: Int64
        public var count: UInt64
        public init(lower: Int64, upper: Int64, count: UInt64) {
            self.lower = lower
            self.upper = upper
            self.count = count
        }
    }

    public struct Entry: Sendable, Hashable {
        /// One value per key name of `by`, in that order.
        public var key: [KeyValue] { didSet { texts = key.map(\.text) } }
        /// The text of each key part (labels, ordering), made once.
        public private(set) var texts: [String]
        public var calls: UInt64
        public var errors: UInt64
        /// Values recorded, their sum, and the non-empty buckets (ascending); all empty when
        /// the probe's value is `none`.
        public var count: UInt64
        public var sum: Int64
        public var buckets: [Bucket]

        public init(key: [KeyValue], calls: UInt64, errors: UInt64, count: UInt64 = 0, sum: Int64 = 0, buckets: [Bucket] = []) {
            self.key = key
            texts = key.map(\.text)
            self.calls = calls
            self.errors = errors
            self.count = count
            self.sum = sum
            self.buckets = buckets
        }
    }

    /// The spec's key names (`arg:fd`), in order.
    public var by: [String]
    /// The value's name (`latency`, `ret`, `arg:count`, `none`).
    public var value: String
    /// The histogram's layout (bounds of every slot), nil when the value is `none`.
    public var histogram: AggregatePlan.Histogram?
    /// Calls whose key found no room in the table (they are in the probe's totals).
    public var droppedKeys: UInt64
    /// Stacks of `kstack`/`ustack` keys not recorded because the stack map was full; their
    /// calls are in the table, under a marker frame. (Stacks are stored by a 64-bit hash of
    /// their frames, so two stacks do not collide the way stack-trace map buckets do.)
    public var stackFull: UInt64 = 0
    /// Whether a key part is a stack.
    public var hasStacks: Bool { by.contains { $0 == "kstack" || $0 == "ustack" } }
    /// Every key, by calls (descending), then by key text.
    public var entries: [Entry]

    public init(by: [String], value: String, histogram: AggregatePlan.Histogram?, droppedKeys: UInt64, entries: [Entry]) {
        self.by = by
        self.value = value
        self.histogram = histogram
        self.droppedKeys = droppedKeys
        self.entries = entries
    }

    /// Whether the value is a latency in nanoseconds (Prometheus exports it in seconds).
    public var valueIsLatency: Bool { value == "latency" }
}

extension KeyedAggregate {
    /// The table without its stack parts: entries equal in every other part summed (calls,
    /// errors, values and buckets). Prometheus gets this: a stack is no label value (its
    /// frames are kilobytes, its cardinality unbounded); `/stacks` serves the stacks.
    public func foldingStacks() -> KeyedAggregate {
        let keep = by.indices.filter { by[$0] != "kstack" && by[$0] != "ustack" }
        guard keep.count < by.count else { return self }
        var order: [[String]] = []
        var folded: [[String]: Entry] = [:]
        for entry in entries {
            let key = keep.map { entry.key[$0] }
            let texts = key.map(\.text)
            guard var sum = folded[texts] else {
                order.append(texts)
                folded[texts] = Entry(key: key, calls: entry.calls, errors: entry.errors, count: entry.count, sum: entry.sum, buckets: entry.buckets)
                continue
            }
            sum.calls &+= entry.calls
            sum.errors &+= entry.errors
            sum.count &+= entry.count
            sum.sum &+= entry.sum
            var buckets = Dictionary(sum.buckets.map { ($0.lower, $0) }, uniquingKeysWith: { a, _ in a })
            for b in entry.buckets { buckets[b.lower, default: Bucket(lower: b.lower, upper: b.upper, count: 0)].count &+= b.count }
            sum.buckets = buckets.values.sorted { $0.lower < $1.lower }
            folded[texts] = sum
        }
        var out = self
        out.by = keep.map { by[$0] }
        out.entries = order.compactMap { folded[$0] }
            .sorted { a, b in a.calls != b.calls ? a.calls > b.calls : a.texts.lexicographicallyPrecedes(b.texts) }
        return out
    }
}
