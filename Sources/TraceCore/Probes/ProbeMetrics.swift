import Foundation

/// A probe's aggregates as the API shows them.
public struct ProbeMetrics: Sendable, Codable, Hashable {
    public struct Latency: Sendable, Codable, Hashable {
        public var count: UInt64
        public var sum: UInt64
        public var buckets: [ProbeCounters.Bucket]
    }
    public struct Overhead: Sendable, Codable, Hashable {
        public var runTimeNanoseconds: UInt64
        public var runCount: UInt64
        enum CodingKeys: String, CodingKey {
            case runTimeNanoseconds = "run_time_ns"
            case runCount = "run_count"
        }
    }
    public var name: String
    public var mechanism: Flavour
    public var target: String
    public var since: Date
    public var calls: UInt64
    public var errors: UInt64
    public var latencyNanoseconds: Latency?
    public var byProcess: [ProbeCounters.Process]
    public var overhead: Overhead
    /// The key table (probes with an `aggregate` spec), every key; ``top(_:)`` trims it.
    public var aggregate: KeyedAggregate?
    /// Keys in the table before trimming.
    public var totalKeys: Int = 0
    /// Probes with an `events` spec: what was streamed and what was not.
    public var events: ProbeCounters.EventCounts?
    /// Budgeted probes: how calls are recorded now and how much of the counts is estimated.
    public var sampling: Sampling?

    /// The `sampling` member: a budgeted probe records one call in `sampled` (counted that
    /// many times), so `calls`, the histograms and the keys are estimates of the truth for
    /// the part `estimated_calls` of `calls`; `seen_calls` counts every call that passed the
    /// filter, recorded or not (also while suspended): an exact count.
    public struct Sampling: Sendable, Codable, Hashable {
        public var sampled: UInt32
        public var estimatedCalls: UInt64
        public var seenCalls: UInt64
        public var state: BudgetPolicy.State
        public init(sampled: UInt32, estimatedCalls: UInt64, seenCalls: UInt64, state: BudgetPolicy.State) {
            self.sampled = sampled
            self.estimatedCalls = estimatedCalls
            self.seenCalls = seenCalls
            self.state = state
        }
        enum CodingKeys: String, CodingKey {
            case sampled, state
            case estimatedCalls = "estimated_calls"
            case seenCalls = "seen_calls"
        }
    }

    /// Keeps the `n` keys with most calls.
    public func top(_ n: Int) -> ProbeMetrics {
        var copy = self
        if var a = copy.aggregate, a.entries.count > n {
            a.entries = Array(a.entries.prefix(n))
            copy.aggregate = a
        }
        return copy
    }

    enum CodingKeys: String, CodingKey {
        case name, mechanism, target, since, calls, errors, overhead, aggregate, events, sampling
        case latencyNanoseconds = "latency_ns"
        case byProcess = "by_process"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(mechanism, forKey: .mechanism)
        try c.encode(target, forKey: .target)
        try c.encode(since, forKey: .since)
        try c.encode(calls, forKey: .calls)
        try c.encode(errors, forKey: .errors)
        try c.encode(latencyNanoseconds, forKey: .latencyNanoseconds)
        try c.encode(byProcess, forKey: .byProcess)
        try c.encode(overhead, forKey: .overhead)
        if let aggregate { try c.encode(AggregateJSON(aggregate, totalKeys: totalKeys), forKey: .aggregate) }
        try c.encodeIfPresent(events, forKey: .events)
        try c.encodeIfPresent(sampling, forKey: .sampling)
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        name = try c.decode(String.self, forKey: .name)
        mechanism = try c.decode(Flavour.self, forKey: .mechanism)
        target = try c.decode(String.self, forKey: .target)
        since = try c.decode(Date.self, forKey: .since)
        calls = try c.decode(UInt64.self, forKey: .calls)
        errors = try c.decode(UInt64.self, forKey: .errors)
        latencyNanoseconds = try c.decodeIfPresent(Latency.self, forKey: .latencyNanoseconds)
        byProcess = try c.decode([ProbeCounters.Process].self, forKey: .byProcess)
        overhead = try c.decode(Overhead.self, forKey: .overhead)
        if let wire = try c.decodeIfPresent(AggregateJSON.Wire.self, forKey: .aggregate) {
            aggregate = wire.aggregate
            totalKeys = wire.totalKeys
        }
        events = try c.decodeIfPresent(ProbeCounters.EventCounts.self, forKey: .events)
        sampling = try c.decodeIfPresent(Sampling.self, forKey: .sampling)
    }

    public init(name: String, mechanism: Flavour, target: String, since: Date, counters: ProbeCounters, countsOnly: Bool) {
        self.name = name
        self.mechanism = mechanism
        self.target = target
        self.since = since
        calls = counters.calls
        errors = counters.errors
        latencyNanoseconds = countsOnly ? nil : Latency(count: counters.latencyCount, sum: counters.latencySumNanoseconds, buckets: counters.buckets)
        byProcess = counters.processes
        overhead = Overhead(runTimeNanoseconds: counters.runTimeNanoseconds, runCount: counters.runCount)
        aggregate = counters.aggregate
        totalKeys = counters.aggregate?.entries.count ?? 0
        events = counters.events
    }
}

/// The `aggregate` member of ProbeMetrics (DESIGN.md, "What a probe measures").
struct AggregateJSON: Encodable {
    /// What a client reads back (the CLI): key parts as numbers or strings.
    struct Wire: Decodable {
        struct Value: Decodable {
            var count: UInt64
            var sum: Int64
            var buckets: [KeyedAggregate.Bucket]
        }
        struct Entry: Decodable {
            var key: [String: JSONScalar]
            var cgroup_id: UInt64?
            var container: CgroupIdentity?
            var removed: Bool?
            var calls: UInt64
            var errors: UInt64
            var value: Value?
        }
        struct Histogram: Decodable {
            var kind: String
            var min: Int64?
            var max: Int64?
            var step: Int64?
        }
        var by: [String]
        var value: String
        var histogram: Histogram?
        var dropped_keys: UInt64
        var total_keys: Int
        var keys: [Entry]

        var totalKeys: Int { total_keys }
        var aggregate: KeyedAggregate {
            let h: AggregatePlan.Histogram? = histogram.map { h in
                guard h.kind == "linear", let min = h.min, let max = h.max, let step = h.step, step > 0 else { return .log2 }
                return AggregatePlan.Histogram(linear: true, min: min, step: step, slots: Int((max - min + step - 1) / step) + 2)
            }
            let entries = keys.map { e in
                // The cgroup part is its path (null when not found) with the id beside it.
                let key = by.map { name -> KeyedAggregate.KeyValue in
                    if name == "cgroup", let id = e.cgroup_id {
                        var path: String? = nil
                        if case .string(let p)? = e.key[name] { path = p }
                        return .cgroup(id: id, path: path, container: e.container, removed: e.removed ?? false)
                    }
                    return e.key[name]?.keyValue ?? .string("")
                }
                return KeyedAggregate.Entry(key: key, calls: e.calls, errors: e.errors,
                                            count: e.value?.count ?? 0, sum: e.value?.sum ?? 0, buckets: e.value?.buckets ?? [])
            }
            return KeyedAggregate(by: by, value: value, histogram: h, droppedKeys: dropped_keys, entries: entries)
        }
    }

    /// A key part as JSON has it.
    enum JSONScalar: Decodable {
        case number(Int64), unsigned(UInt64), string(String), null
        init(from decoder: any Decoder) throws {
            let c = try decoder.singleValueContainer()
            if c.decodeNil() { self = .null }
            else if let i = try? c.decode(Int64.self) { self = .number(i) }
            else if let u = try? c.decode(UInt64.self) { self = .unsigned(u) }
            else { self = .string(try c.decode(String.self)) }
        }
        var keyValue: KeyedAggregate.KeyValue {
            switch self {
            case .number(let i): .signed(i)
            case .unsigned(let u): .unsigned(u)
            case .string(let s): .string(s)
            case .null: .string("")
            }
        }
    }

    let aggregate: KeyedAggregate
    let totalKeys: Int
    init(_ aggregate: KeyedAggregate, totalKeys: Int) {
        self.aggregate = aggregate
        self.totalKeys = totalKeys
    }

    struct Name: CodingKey {
        var stringValue: String
        var intValue: Int? { nil }
        init(_ s: String) { stringValue = s }
        init?(stringValue: String) { self.stringValue = stringValue }
        init?(intValue: Int) { nil }
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: Name.self)
        try c.encode(aggregate.by, forKey: Name("by"))
        try c.encode(aggregate.value, forKey: Name("value"))
        if let h = aggregate.histogram {
            var hc = c.nestedContainer(keyedBy: Name.self, forKey: Name("histogram"))
            try hc.encode(h.linear ? "linear" : "log2", forKey: Name("kind"))
            if h.linear {
                try hc.encode(h.min, forKey: Name("min"))
                try hc.encode(h.min &+ h.step &* Int64(h.slots - 2), forKey: Name("max"))
                try hc.encode(h.step, forKey: Name("step"))
            }
        } else {
            try c.encodeNil(forKey: Name("histogram"))
        }
        try c.encode(aggregate.droppedKeys, forKey: Name("dropped_keys"))
        if aggregate.hasStacks {
            try c.encode(aggregate.stackFull, forKey: Name("stack_full"))
        }
        try c.encode(totalKeys, forKey: Name("total_keys"))
        var keys = c.nestedUnkeyedContainer(forKey: Name("keys"))
        for entry in aggregate.entries {
            var e = keys.nestedContainer(keyedBy: Name.self)
            var k = e.nestedContainer(keyedBy: Name.self, forKey: Name("key"))
            var cgroup: (id: UInt64, container: CgroupIdentity?, removed: Bool)? = nil
            for (name, value) in zip(aggregate.by, entry.key) {
                switch value {
                case .unsigned(let v): try k.encode(v, forKey: Name(name))
                case .signed(let v): try k.encode(v, forKey: Name(name))
                case .string(let v), .errno(let v): try k.encode(v, forKey: Name(name))
                case .cgroup(let id, let path, let container, let removed):
                    cgroup = (id, container, removed)
                    if let path { try k.encode(path, forKey: Name(name)) } else { try k.encodeNil(forKey: Name(name)) }
                case .stack(let ref, let frames):
                    // Innermost frame first, as bpftrace prints a stack; a lost stack is its marker.
                    try k.encode(ref.lossFrame.map { [$0] } ?? frames, forKey: Name(name))
                }
            }
            if let cgroup {
                try e.encode(cgroup.id, forKey: Name("cgroup_id"))
                if let container = cgroup.container { try e.encode(container, forKey: Name("container")) } else { try e.encodeNil(forKey: Name("container")) }
                try e.encode(cgroup.removed, forKey: Name("removed"))
            }
            try e.encode(entry.calls, forKey: Name("calls"))
            try e.encode(entry.errors, forKey: Name("errors"))
            if aggregate.histogram == nil {
                try e.encodeNil(forKey: Name("value"))
            } else {
                var v = e.nestedContainer(keyedBy: Name.self, forKey: Name("value"))
                try v.encode(entry.count, forKey: Name("count"))
                try v.encode(entry.sum, forKey: Name("sum"))
                var b = v.nestedUnkeyedContainer(forKey: Name("buckets"))
                for bucket in entry.buckets {
                    var bc = b.nestedContainer(keyedBy: Name.self)
                    try bc.encode(bucket.lower, forKey: Name("lower"))
                    try bc.encode(bucket.upper, forKey: Name("upper"))
                    try bc.encode(bucket.count, forKey: Name("count"))
                }
            }
        }
    }
}
