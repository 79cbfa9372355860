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

    /// The non-empty buckets of 64 log2 slot counts.
    static func buckets(_ slots: [UInt64]) -> [Bucket] {
        slots.enumerated().filter { $0.element > 0 }.map { slot, count in
            let b = bounds(slot: slot)
            return Bucket(lower: b.lower, upper: b.upper, count: count)
        }
    }

    /// Bytes per entry of a process table (`struct tp_proc` in bpf/latency.h).
    static let processEntrySize = 32
    /// Entries of a probe's own process table (`1 << TP_PROCS_BITS`).
    static let processTableEntries = 1024

    /// The `limit` processes with most calls in a raw process table (`struct tp_proc` back
    /// to back; a zero tgid is a free entry).
    static func topProcesses(table: [UInt8], limit: Int) -> [Process] {
        var processes: [Process] = []
        for i in 0..<(table.count / processEntrySize) {
            let at = i * processEntrySize
            let pid = table.u32(at: at)
            guard pid != 0 else { continue }
            let comm = table[(at + 16)..<(at + 32)].prefix { $0 != 0 }
            processes.append(.init(pid: Int(pid), comm: String(decoding: comm, as: UTF8.self), calls: table.u64(at: at + 8)))
        }
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

/// A probe attached in the kernel: its own object and links, or a slot of a shared
/// ``SyscallHub``. One owner; `detach` hands everything to the reaper (links first), or
/// leaves the hub, and is idempotent.
public final class AttachedProbe: Sendable {
    public let flavour: Flavour
    public let countsOnly: Bool
    public let taskStorage: Bool
    /// What it is bound to (kernel function, tracepoint, binary:symbol), when known.
    public let boundTo: String?
    /// What the probe holds in the kernel.
    enum Resources {
        case own(object: any LoadedObject, links: [any AttachedLink])
        case hub(SyscallHub.Membership)
        case detached
    }
    private let resources: Mutex<Resources>
    private let recorded = Mutex<[AttachAttempt]>([])

    init(flavour: Flavour, object: any LoadedObject, links: [any AttachedLink], countsOnly: Bool, taskStorage: Bool,
         boundTo: String? = nil) {
        self.flavour = flavour
        self.countsOnly = countsOnly
        self.taskStorage = taskStorage
        self.boundTo = boundTo
        resources = Mutex(.own(object: object, links: links))
    }

    init(flavour: Flavour, hub: SyscallHub.Membership, boundTo: String?) {
        self.flavour = flavour
        countsOnly = false
        taskStorage = hub.taskStorage
        self.boundTo = boundTo
        resources = Mutex(.hub(hub))
    }

    /// Whether the probe is a slot of a shared syscall hook.
    public var isShared: Bool { resources.withLock { if case .hub = $0 { true } else { false } } }

    /// Every mechanism tried before this one attached, and this one.
    public internal(set) var attempts: [AttachAttempt] {
        get { recorded.withLock { $0 } }
        set { recorded.withLock { $0 = newValue } }
    }

    /// Detaches and frees everything, off the caller's path.
    public func detach(reaper: Reaper) {
        let taken = resources.withLock { r -> Resources in
            defer { r = .detached }
            return r
        }
        switch taken {
        case .own(let object, let links): reaper.dispose(links: links, objects: [object])
        case .hub(let membership): membership.leave()
        case .detached: break
        }
    }

    public var isAttached: Bool { resources.withLock { if case .detached = $0 { false } else { true } } }

    /// Reads the probe's maps. Scrape cost depends on the number of maps, not on events;
    /// `topProcesses` 0 skips the process table.
    public func read(topProcesses: Int = 10) throws(KernelError) -> ProbeCounters {
        let object: any LoadedObject
        switch resources.withLock({ $0 }) {
        case .own(let own, _): object = own
        case .hub(let membership): return try membership.read(topProcesses: topProcesses)
        case .detached: throw KernelError(stage: .read, errno: 9, operation: "read a detached probe")
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
            counters.buckets = ProbeCounters.buckets(slots)
        }
        if topProcesses > 0 {
            let table = try object.readArrayValues(map: "procs", first: 0, count: ProbeCounters.processTableEntries,
                                                   valueSize: ProbeCounters.processEntrySize)
            counters.processes = ProbeCounters.topProcesses(table: table, limit: topProcesses)
        }
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
