/// Spec member `events`: the calls worth seeing one by one. Each call at least
/// `min_latency_ns` slow (each event, for tracepoint targets) goes through the probe's BPF
/// ring buffer, at most `max_per_second` of them per second (enforced in the kernel: the
/// rest are counted as `throttled`).
public struct EventsSpec: Sendable, Codable, Hashable {
    /// Call targets: a call at least this slow is an event (0: every call).
    public var minLatencyNs: Int?
    /// Events per second at most, for the whole probe.
    public var maxPerSecond: Int?
    /// The ring buffer's size in KiB: a power of two.
    public var bufferKiB: Int?

    public init(minLatencyNs: Int? = nil, maxPerSecond: Int? = nil, bufferKiB: Int? = nil) {
        self.minLatencyNs = minLatencyNs
        self.maxPerSecond = maxPerSecond
        self.bufferKiB = bufferKiB
    }

    enum CodingKeys: String, CodingKey {
        case minLatencyNs = "min_latency_ns"
        case maxPerSecond = "max_per_second"
        case bufferKiB = "buffer_kib"
    }

    public static let defaultMaxPerSecond = 10_000
    /// The kernel's rate word counts up to 2^24 − 1 events per second (TP_EV_MAX_RATE).
    public static let maxMaxPerSecond = 16_777_215
    public static let defaultBufferKiB = 1024
    public static let bufferKiBRange = 4...65_536
    /// An hour: a longer threshold is a mistake, not a wish.
    public static let maxMinLatencyNs = 3_600_000_000_000

    public var rate: UInt32 { UInt32(maxPerSecond ?? Self.defaultMaxPerSecond) }
    public var threshold: UInt64 { UInt64(minLatencyNs ?? 0) }
    public var bufferBytes: UInt32 { UInt32(bufferKiB ?? Self.defaultBufferKiB) * 1024 }

    /// Problems with the member, given the target it is for.
    func validate(target: TargetType) -> [FieldError] {
        var errors: [FieldError] = []
        switch target {
        case .profile:
            errors.append(FieldError(field: "events", message: "profile targets have no events (their samples are aggregated by stack)"))
        case .tracepoint:
            if minLatencyNs != nil {
                errors.append(FieldError(field: "events.min_latency_ns", message: "tracepoint targets have no latency; give only max_per_second"))
            }
        case .syscall, .function, .uprobe:
            break
        }
        if let n = minLatencyNs, !(0...Self.maxMinLatencyNs).contains(n) {
            errors.append(FieldError(field: "events.min_latency_ns", message: "must be from 0 to \(Self.maxMinLatencyNs) (an hour)"))
        }
        if let r = maxPerSecond, !(1...Self.maxMaxPerSecond).contains(r) {
            errors.append(FieldError(field: "events.max_per_second", message: "must be from 1 to \(Self.maxMaxPerSecond)"))
        }
        if let k = bufferKiB, !Self.bufferKiBRange.contains(k) || k & (k - 1) != 0 {
            errors.append(FieldError(field: "events.buffer_kib", message: "must be a power of two from \(Self.bufferKiBRange.lowerBound) to \(Self.bufferKiBRange.upperBound) (KiB of ring buffer)"))
        }
        return errors
    }
}
