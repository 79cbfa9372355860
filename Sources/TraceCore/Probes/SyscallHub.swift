import Glibc
import Synchronization

/// The shared raw_syscalls hook (`bpf/syscall_hub.bpf.c`): one program pair on
/// raw_syscalls sys_enter/sys_exit serves every syscall probe of one flavour (tp_btf or
/// raw_tp).
///
/// raw_syscalls programs run on every syscall of the host. Attached once per probe, they
/// made every syscall pay for every probe (+7.7 µs per syscall with 64 probes, measured);
/// shared, the kernel runs one pair whatever the number of probes, and an untraced syscall
/// costs one array lookup on top of the kernel's dispatch. Each probe is a *slot*: its
/// filter, its aggregates and its top processes live at its slot in the hub's maps, and the
/// hub lists the slots of each syscall number. The hub is loaded with its first probe and
/// detached (through the reaper) when its last probe leaves, so an agent with no such probe
/// costs the host nothing.
public final class SyscallHub: Sendable {
    /// Probes on one syscall number.
    public static let perSyscall = 6
    static let maxSyscallNumber = 1024
    /// Entries of a slot's process table.
    static let processesPerSlot = 256
    /// Sizes of the hub's map values (see `bpf/latency.h`).
    static let nrValueSize = 32, filterValueSize = 24, aggValueSize = 32 + 64 * 8
    static var procValueSize: Int { ProbeCounters.processEntrySize }

    public let flavour: Flavour
    /// Probes the hub holds: its tables are sized for this many at load (per-CPU `aggs`:
    /// 544 bytes per slot and CPU; `procs`: 8 KiB per slot).
    public let slots: Int
    let backend: any KernelBackend
    let reaper: Reaper

    struct State {
        var object: (any LoadedObject)?
        var links: [any AttachedLink] = []
        var taskStorage = true
        /// Slot → syscall number, for the probes in the hub.
        var members: [Int: UInt32] = [:]
        /// Bumped whenever the hub's object is dropped, so that stale memberships are inert.
        var generation = 0
    }

    private let state = Mutex(State())

    init(flavour: Flavour, slots: Int, backend: any KernelBackend, reaper: Reaper) {
        precondition(flavour == .tpBTF || flavour == .rawTracepoint, "no shared hook for \(flavour)")
        precondition(slots >= 1 && slots <= 65_536, "hub slots out of range: \(slots)")
        self.flavour = flavour
        self.slots = slots
        self.backend = backend
        self.reaper = reaper
    }

    /// A probe's place in the hub. Leaving twice, or after the hub was dropped, does nothing.
    public struct Membership: Sendable {
        let hub: SyscallHub
        let slot: Int
        let nr: UInt32
        let generation: Int
        public let taskStorage: Bool

        func leave() { hub.leave(self) }
        func read(topProcesses: Int) throws(KernelError) -> ProbeCounters { try hub.read(self, topProcesses: topProcesses) }
    }

    /// The number of probes in the hub now.
    public var memberCount: Int { state.withLock { $0.members.count } }

    /// Whether the hub's programs are loaded and attached.
    public var isLoaded: Bool { state.withLock { $0.object != nil } }

    /// Adds a probe on syscall number `nr`: loads and attaches the hub if it is the first,
    /// clears the slot's aggregates, writes its filter and lists it under `nr`.
    func join(nr: UInt32, filter: ProbeFilter?, report: CapabilityReport) -> Result<Membership, AttachAttempt> {
        let mechanism: Mechanism = flavour == .tpBTF ? .tpBTF : .rawTracepoint
        return state.withLock { (s) -> Result<Membership, AttachAttempt> in
            guard Int(nr) < Self.maxSyscallNumber else {
                return .failure(refusal("syscall number \(nr) is beyond the shared hook's table (\(Self.maxSyscallNumber))", errno: "ERANGE"))
            }
            let onThisSyscall = s.members.filter { $0.value == nr }.keys.sorted()
            guard onThisSyscall.count < Self.perSyscall else {
                return .failure(refusal("the shared raw_syscalls hook already serves \(Self.perSyscall) probes on this syscall", errno: "EBUSY"))
            }
            guard let slot = (0..<slots).first(where: { s.members[$0] == nil }) else {
                return .failure(refusal("the shared raw_syscalls hook is full (\(slots) probes)", errno: "EBUSY"))
            }
            if s.object == nil {
                if case .failure(let attempt) = load(&s, report: report) { return .failure(attempt) }
            }
            guard let object = s.object else { preconditionFailure("hub loaded without an object") }
            do throws(KernelError) {
                // A slot is cleared when it is taken, not when it is left: a program still
                // running for the previous owner then cannot leave counts behind.
                try object.update(map: "aggs", key: Self.key(slot), value: [UInt8](repeating: 0, count: Self.aggValueSize))
                let table = try processTable(object, slot: slot)
                for i in 0..<Self.processesPerSlot where table.u32(at: i * Self.procValueSize) != 0 {
                    try object.update(map: "procs", key: Self.key(slot * Self.processesPerSlot + i),
                                      value: [UInt8](repeating: 0, count: Self.procValueSize))
                }
                try object.update(map: "filters", key: Self.key(slot), value: Self.filterValue(filter))
                try object.update(map: "by_nr", key: Self.key(Int(nr)), value: Self.nrValue(onThisSyscall + [slot]))
            } catch {
                if s.members.isEmpty { drop(&s) }
                return .failure(Planner.failedAttempt(flavour, mechanism, error, report.kernel))
            }
            s.members[slot] = nr
            return .success(Membership(hub: self, slot: slot, nr: nr, generation: s.generation, taskStorage: s.taskStorage))
        }
    }

    /// Removes a probe: unlists its slot (its programs stop counting for it at once) and
    /// detaches the hub when it was the last.
    func leave(_ m: Membership) {
        state.withLock { s in
            guard m.generation == s.generation, s.members[m.slot] == m.nr, let object = s.object else { return }
            let remaining = s.members.filter { $0.value == m.nr && $0.key != m.slot }.keys.sorted()
            do throws(KernelError) {
                try object.update(map: "by_nr", key: Self.key(Int(m.nr)), value: Self.nrValue(remaining))
            } catch {
                // Still listed in the kernel: keep the slot taken rather than give it to
                // another probe that would then count this syscall too.
                return
            }
            s.members[m.slot] = nil
            if s.members.isEmpty { drop(&s) }
        }
    }

    /// Reads one probe's aggregates: its slot of `aggs` and its processes in `procs`.
    func read(_ m: Membership, topProcesses: Int) throws(KernelError) -> ProbeCounters {
        let object = state.withLock { s in m.generation == s.generation && s.members[m.slot] == m.nr ? s.object : nil }
        guard let object else { throw KernelError(stage: .read, errno: EBADF, operation: "read a detached probe") }
        var counters = ProbeCounters()
        var slots = [UInt64](repeating: 0, count: 64)
        for value in try object.lookup(map: "aggs", key: Self.key(m.slot)) ?? [] {
            counters.calls &+= value.u64(at: 0)
            counters.errors &+= value.u64(at: 8)
            counters.latencyCount &+= value.u64(at: 16)
            counters.latencySumNanoseconds &+= value.u64(at: 24)
            for i in 0..<64 { slots[i] &+= value.u64(at: 32 + 8 * i) }
        }
        counters.buckets = ProbeCounters.buckets(slots)
        if topProcesses > 0 {
            counters.processes = ProbeCounters.topProcesses(table: try processTable(object, slot: m.slot), limit: topProcesses)
        }
        // The hub's programs serve all its probes: their run time is shared.
        for stat in object.programStats() {
            counters.runTimeNanoseconds &+= stat.runTimeNanoseconds
            counters.runCount &+= stat.runCount
        }
        return counters
    }

    /// The slot's process table, raw (one batched read).
    private func processTable(_ object: any LoadedObject, slot: Int) throws(KernelError) -> [UInt8] {
        try object.readArrayValues(map: "procs", first: UInt32(slot * Self.processesPerSlot), count: Self.processesPerSlot,
                                   valueSize: Self.procValueSize)
    }

    // MARK: Loading

    /// The hub's object and programs for this flavour.
    private func recipe(taskStorage: Bool) -> Planner.Recipe {
        let mechanism: Mechanism = flavour == .tpBTF ? .tpBTF : .rawTracepoint
        let programs: [(name: String, point: AttachPoint, loadTimeTarget: String?)] = flavour == .tpBTF
            ? [("hub_btf_enter", .loadTimeTarget, "sys_enter"), ("hub_btf_exit", .loadTimeTarget, "sys_exit")]
            : [("hub_raw_enter", .rawTracepoint(name: "sys_enter"), nil), ("hub_raw_exit", .rawTracepoint(name: "sys_exit"), nil)]
        let load = LoadSpec(object: "syscall_hub", programs: programs.map { LoadSpec.Program($0.name, loadTimeTarget: $0.loadTimeTarget) },
                            readOnly: ["use_task_storage": [taskStorage ? 1 : 0]],
                            mapChanges: [
                                "filters": .maxEntries(UInt32(slots)), "aggs": .maxEntries(UInt32(slots)),
                                "procs": .maxEntries(UInt32(slots * Self.processesPerSlot)),
                            ].merging(taskStorage ? [:] : ["starts": .taskStorageToHash(maxEntries: 16384)]) { a, _ in a })
        return Planner.Recipe(load: load, attachments: programs.map { (program: $0.name, point: $0.point, mechanism: mechanism) })
    }

    private func load(_ s: inout State, report: CapabilityReport) -> Result<Void, AttachAttempt> {
        Planner.loadAndAttach(flavour, taskStorage: report.supports(.taskStorage), facts: report.kernel, backend: backend,
                              reaper: reaper, make: recipe(taskStorage:)).map { made in
            s.object = made.object
            s.links = made.links
            s.taskStorage = made.taskStorage
        }
    }

    private func drop(_ s: inout State) {
        if let object = s.object { reaper.dispose(links: s.links, objects: [object]) }
        s.object = nil
        s.links = []
        s.generation += 1
    }

    private func refusal(_ message: String, errno: String) -> AttachAttempt {
        AttachAttempt(mechanism: flavour.rawValue, outcome: .error, stage: "attach", errno: errno, message: message)
    }

    // MARK: Map values (layouts in bpf/latency.h)

    static func key(_ index: Int) -> [UInt8] { Planner.bytes(UInt32(index)) }

    static func nrValue(_ slots: [Int]) -> [UInt8] {
        var value = Planner.bytes(UInt32(slots.count))
        for i in 0..<perSyscall { value += Planner.bytes(UInt32(i < slots.count ? slots[i] : 0)) }
        value += [0, 0, 0, 0]
        return value
    }

    static func filterValue(_ filter: ProbeFilter?) -> [UInt8] {
        var value = Planner.bytes(UInt32(filter?.pid ?? 0))
        value += Planner.bytes(UInt32(filter?.comm == nil ? 0 : 1))
        var comm = Array((filter?.comm ?? "").utf8.prefix(15))
        comm += Array(repeating: 0, count: 16 - comm.count)
        return value + comm
    }
}

/// The hubs of one planner, one per flavour, created on first use.
public final class SyscallHubs: Sendable {
    private let hubs: [Flavour: SyscallHub]

    init(backend: any KernelBackend, reaper: Reaper, slots: Int) {
        hubs = [.tpBTF: SyscallHub(flavour: .tpBTF, slots: slots, backend: backend, reaper: reaper),
                .rawTracepoint: SyscallHub(flavour: .rawTracepoint, slots: slots, backend: backend, reaper: reaper)]
    }

    public subscript(flavour: Flavour) -> SyscallHub? { hubs[flavour] }
}
