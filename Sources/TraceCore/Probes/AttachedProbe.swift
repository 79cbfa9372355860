import Synchronization

/// Aggregates read from a probe's maps.
public struct ProbeCounters: Sendable, Hashable {
    public struct Bucket: Sendable, Hashable, Codable {
        /// Inclusive bounds in nanoseconds.
        public var lower: UInt64
        public var upper: UInt64
        public var count: UInt64
    }
    public struct Process: Sendable, Hashable, Codable {
        public var pid: Int
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

    public init() {}

    /// Bounds of log2 slot `i`: slot 0 holds 0–1 ns, slot i ≥ 1 holds [2^i, 2^(i+1) − 1].
    public static func bounds(slot: Int) -> (lower: UInt64, upper: UInt64) {
        if slot == 0 { return (0, 1) }
        if slot >= 63 { return (1 << 63, UInt64.max) }
        return (1 << UInt64(slot), (1 << UInt64(slot + 1)) - 1)
    }
}

/// A probe attached in the kernel: one object and its links. One owner; `detach` hands
/// everything to the reaper (links first) and is idempotent.
public final class AttachedProbe: Sendable {
    public let flavour: Flavour
    public let countsOnly: Bool
    public let taskStorage: Bool
    /// What it is bound to (kernel function, tracepoint, binary:symbol), when known.
    public let boundTo: String?
    private let resources: Mutex<(object: (any LoadedObject)?, links: [any AttachedLink])>
    private let recorded = Mutex<[AttachAttempt]>([])

    init(flavour: Flavour, object: any LoadedObject, links: [any AttachedLink], countsOnly: Bool, taskStorage: Bool,
         boundTo: String? = nil) {
        self.flavour = flavour
        self.countsOnly = countsOnly
        self.taskStorage = taskStorage
        self.boundTo = boundTo
        resources = Mutex((object, links))
    }

    /// Every mechanism tried before this one attached, and this one.
    public internal(set) var attempts: [AttachAttempt] {
        get { recorded.withLock { $0 } }
        set { recorded.withLock { $0 = newValue } }
    }

    /// Detaches and frees everything, off the caller's path.
    public func detach(reaper: Reaper) {
        let taken = resources.withLock { r -> ((any LoadedObject)?, [any AttachedLink]) in
            defer { r = (nil, []) }
            return (r.object, r.links)
        }
        guard let object = taken.0 else { return }
        reaper.dispose(links: taken.1, objects: [object])
    }

    public var isAttached: Bool { resources.withLock { $0.object != nil } }

    /// Reads the probe's maps. Scrape cost depends on the number of maps, not on events.
    public func read(topProcesses: Int = 10) throws(KernelError) -> ProbeCounters {
        guard let object = resources.withLock({ $0.object }) else {
            throw KernelError(stage: .read, errno: 9, operation: "read a detached probe")
        }
        var counters = ProbeCounters()
        for entry in try object.readMap("stats") {
            for value in entry.values {
                counters.calls &+= value.u64(at: 0)
                counters.errors &+= value.u64(at: 8)
                counters.latencyCount &+= value.u64(at: 16)
                counters.latencySumNanoseconds &+= value.u64(at: 24)
            }
        }
        if !countsOnly {
            var slots = [UInt64](repeating: 0, count: 64)
            for entry in try object.readMap("hist") {
                let slot = Int(entry.key.u32(at: 0))
                guard slot < 64 else { continue }
                for value in entry.values { slots[slot] &+= value.u64(at: 0) }
            }
            counters.buckets = slots.enumerated().filter { $0.element > 0 }.map { slot, count in
                let b = ProbeCounters.bounds(slot: slot)
                return .init(lower: b.lower, upper: b.upper, count: count)
            }
        }
        var processes: [ProbeCounters.Process] = []
        for entry in try object.readMap("procs") {
            guard let value = entry.values.first, value.count >= 24 else { continue }
            let commBytes = value[8..<24].prefix { $0 != 0 }
            processes.append(.init(pid: Int(entry.key.u32(at: 0)), comm: String(decoding: commBytes, as: UTF8.self),
                                   calls: value.u64(at: 0)))
        }
        processes.sort { ($0.calls, $1.pid) > ($1.calls, $0.pid) }
        counters.processes = Array(processes.prefix(topProcesses))
        for stat in object.programStats() {
            counters.runTimeNanoseconds &+= stat.runTimeNanoseconds
            counters.runCount &+= stat.runCount
        }
        return counters
    }
}

extension Array where Element == UInt8 {
    func u64(at offset: Int) -> UInt64 {
        guard offset + 8 <= count else { return 0 }
        return withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self)) }
    }
    func u32(at offset: Int) -> UInt32 {
        guard offset + 4 <= count else { return 0 }
        return withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: offset, as: UInt32.self)) }
    }
}
