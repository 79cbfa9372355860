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

    enum CodingKeys: String, CodingKey {
        case name, mechanism, target, since, calls, errors, overhead
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
    }
}
