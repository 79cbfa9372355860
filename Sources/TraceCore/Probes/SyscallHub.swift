import CBPFLayouts
import Glibc
import Synchronization

/// The shared raw_syscalls hook (`bpf/syscall_hub.bpf.c`): one program pair on
/// raw_syscalls sys_enter/sys_exit serves every syscall probe of one flavour (tp_btf or
/// raw_tp). The strategy of the two ``FlavourDescriptor``s that name it.
///
/// raw_syscalls programs run on every syscall of the host. Attached once per probe, they
/// made every syscall pay for every probe (+7.7 µs per syscall with 64 probes, measured);
/// shared, the kernel runs one pair whatever the number of probes, and an untraced syscall
/// costs one array lookup on top of the kernel's dispatch. Each probe is a *slot*: its
/// filter, its aggregates and its top processes live at its slot in the hub's maps, and the
/// hub lists the slots of each syscall number. The hub is loaded with its first probe and
/// detached (through the reaper) when its last probe leaves, so an agent with no such probe
/// costs the host nothing.
///
/// Locking: `state` is held only for bookkeeping and map updates, never across a BPF load
/// or attach (scrapes read through it). Joins are serialized by `joining`, so one load
/// serves the probes that arrive while it runs.
public final class SyscallHub: Sendable {
    /// Probes on one syscall number.
    public static let perSyscall = Int(HUB_PER_NR)
    static let maxSyscallNumber = Int(HUB_MAX_NR)
    static var processesPerSlot: Int { SyscallHubObject.processesPerSlot }

    public let descriptor: FlavourDescriptor
    /// Probes the hub holds: its tables are sized for this many at load (per-CPU `aggs`:
    /// 608 bytes per slot and CPU; `procs`: 8 KiB per slot).
    public let slots: Int
    let attacher: ObjectAttacher
    /// Where the hub's maps, programs and links are pinned (`serve --pin-dir`); nil: nowhere.
    let pinDirectory: String?

    struct Loaded {
        var object: any LoadedObject
        var links: [any AttachedLink]
        /// What the links were made from (attached again after every slot was parked).
        var attachments: [Recipe.Attachment] = []
        var taskStorage: Bool
        /// How the loaded programs check a slot's cgroup filter.
        var cgroupMode: CgroupFilterMode
    }

    struct State {
        var loaded: Loaded?
        /// Slot → syscall number, for the probes in the hub.
        var members: [Int: UInt32] = [:]
        /// Bumped whenever the hub's object is dropped, so that stale memberships are inert.
        var generation = 0
        /// Probes whose leave the kernel refused (their slot is still listed): retried.
        var stuckLeaves: [Membership] = []
        /// Claims made so far: each slot's current claim is in its filter, so a call that
        /// entered under the slot's previous owner is not counted for the next one.
        var claims: UInt32 = 0
        /// The claim of each member's slot.
        var memberClaims: [Int: UInt32] = [:]
        /// Members suspended by their budget: not listed in `by_nr` (the hook skips them).
        var parked: Set<Int> = []

        /// The listed slots of syscall `nr`, but `except`.
        func listed(_ nr: UInt32, except: Int? = nil) -> [Int] {
            members.filter { $0.value == nr && $0.key != except && !parked.contains($0.key) }.keys.sorted()
        }
    }

    let state = Mutex(State())
    private let joining = Mutex(())

    init(descriptor: FlavourDescriptor, slots: Int, attacher: ObjectAttacher, pinDirectory: String? = nil) {
        precondition(descriptor.strategy == .sharedSyscallHook, "no shared hook for \(descriptor.id)")
        precondition(slots >= 1 && slots <= 65_536, "hub slots out of range: \(slots)")
        self.descriptor = descriptor
        self.slots = slots
        self.attacher = attacher
        self.pinDirectory = pinDirectory
    }

    /// A probe's place in the hub. Leaving twice, or after the hub was dropped, does nothing.
    public struct Membership: Sendable {
        let hub: SyscallHub
        let slot: Int
        let nr: UInt32
        let generation: Int
        public let taskStorage: Bool
        let plan: AggregatePlan
        /// Which claim of the slot this membership is.
        let claim: UInt32
        /// The slot's ring buffer, for probes with events (its own fd: it outlives the slot).
        let ring: (any EventRing)?

        func leave() { hub.leave(self) }
        func read(topProcesses: Int) throws(KernelError) -> ProbeCounters { try hub.read(self, topProcesses: topProcesses) }
        func readKeys() throws(KernelError) -> [MapEntry] { try hub.readKeys(self) }
        func budgetSample() throws(KernelError) -> AttachedProbe.BudgetSample { try hub.budgetSample(self) }
        func setBudget(_ control: tp_budget) throws(KernelError) { try hub.setBudget(self, control) }
        func park(_ parked: Bool) throws(KernelError) { try hub.park(self, parked) }
    }

    /// The number of probes in the hub now.
    public var memberCount: Int { state.withLock { $0.members.count } }

    /// Whether the hub's programs are loaded and attached.
    public var isLoaded: Bool { state.withLock { $0.loaded != nil } }

    /// Adds the probe of `input.spec` (a syscall target): loads and attaches the hub if it
    /// is the first, clears the slot's aggregates, writes its filter and lists it under its
    /// syscall number.
    func join(_ input: RecipeInput) -> Result<AttachedProbe, AttachAttempt> {
        guard let name = input.spec.target.name, let number = SyscallTable.number(of: name) else {
            return .failure(refusal("no syscall of this name on this architecture", errno: .ENOENT, stage: .attach))
        }
        guard number < Self.maxSyscallNumber else {
            return .failure(refusal("syscall number \(number) is beyond the shared hook's table (\(Self.maxSyscallNumber))", errno: .ERANGE))
        }
        let nr = UInt32(number)
        return joining.withLock { _ in
            join(nr: nr, filter: input.spec.filter, input: input).map { m in
                var events: ProbeEvents?
                if let ring = m.ring, let spec = input.spec.events {
                    events = ProbeEvents(ring: ring, spec: spec, plan: input.plan, layout: .hub, kind: "call")
                }
                return AttachedProbe(descriptor: descriptor, hub: m, boundTo: "syscall nr \(nr), slot \(m.slot)", plan: input.plan,
                                     reportsAggregate: input.spec.aggregate != nil, events: events, budgeted: input.budgeted)
            }
        }
    }

    private func join(nr: UInt32, filter: ProbeFilter?, input: RecipeInput) -> Result<Membership, AttachAttempt> {
        // The last member may leave (and the hub be dropped) between the two locked sections
        // below; the join then loads the hub again instead of failing.
        for _ in 0..<3 {
            // Room first, and whether a load is needed; the load itself runs unlocked.
            let needsLoad: Bool
            switch state.withLock({ s -> Result<Bool, AttachAttempt> in
                retryStuckLeaves(&s)
                if s.members.values.filter({ $0 == nr }).count >= Self.perSyscall {
                    return .failure(refusal("the shared raw_syscalls hook already serves \(Self.perSyscall) probes on this syscall", errno: .EBUSY))
                }
                if s.members.count >= slots {
                    return .failure(refusal("the shared raw_syscalls hook is full (\(slots) probes)", errno: .EBUSY))
                }
                return .success(s.loaded == nil)
            }) {
            case .failure(let refused): return .failure(refused)
            case .success(let load): needsLoad = load
            }
            if needsLoad {
                var hubInput = input
                hubInput.hubSlots = slots
                switch attacher.attach(descriptor, hubInput) {
                case .failure(let failed): return .failure(failed)
                case .success(let made):
                    if let failed = pinLoaded(made, facts: input.facts) { return .failure(failed) }
                    // Joins are serialized and only a join loads, so nobody loaded meanwhile.
                    state.withLock {
                        $0.loaded = Loaded(object: made.object, links: made.links, attachments: made.recipe.attachments,
                                           taskStorage: made.taskStorage, cgroupMode: SyscallHubObject.cgroupMode(hubInput))
                    }
                }
            }
            if let joined = state.withLock({ s in claim(&s, nr: nr, filter: filter, cgroup: input.cgroup, plan: input.plan, events: input.spec.events,
                                                        budgeted: input.budgeted, facts: input.facts) }) { return joined }
        }
        return .failure(refusal("the shared raw_syscalls hook was dropped three times while joining", errno: .EBUSY))
    }

    /// Takes a free slot of the loaded hub for syscall `nr`; nil when the hub was dropped
    /// meanwhile (the caller loads it again).
    private func claim(_ s: inout State, nr: UInt32, filter: ProbeFilter?, cgroup: CgroupFilter?, plan: AggregatePlan,
                       events: EventsSpec?, budgeted: Bool, facts: KernelFacts) -> Result<Membership, AttachAttempt>? {
        guard let loaded = s.loaded else { return nil }
        guard let slot = (0..<slots).first(where: { s.members[$0] == nil }) else {
            return .failure(refusal("the shared raw_syscalls hook is full (\(slots) probes)", errno: .EBUSY))
        }
        let maps = SyscallHubBPF.Maps.self
        let onThisSyscall = s.listed(nr)
        var ring: (any EventRing)?
        do throws(KernelError) {
            // Every other member parked by its budget detached the hook: attach it again.
            try attachLinks(&s)
            // A slot is cleared when it is taken, not when it is left: a program still
            // running for the previous owner then cannot leave counts behind.
            try loaded.object.update(maps.aggs, index: UInt32(slot), to: hub_agg())
            let table = try processTable(loaded.object, slot: slot)
            for (i, entry) in table.enumerated() where entry.tgid != 0 {
                try loaded.object.update(maps.procs, index: UInt32(slot * Self.processesPerSlot + i), to: tp_proc())
            }
            // A fresh key table: the previous owner's keys go with the one it replaces.
            try loaded.object.removeInnerMap(maps.slotKeys, index: UInt32(slot))
            try loaded.object.removeInnerMap(maps.slotKeysStr, index: UInt32(slot))
            if plan.keyed {
                try loaded.object.setInnerMap(Self.keyTable(plan), index: UInt32(slot), maxEntries: UInt32(plan.maxKeys))
            }
            // A fresh ring buffer and rate window: nothing of the previous owner's reaches this one.
            try loaded.object.removeInnerMap(maps.slotEvents, index: UInt32(slot))
            try loaded.object.update(maps.slotRate, index: UInt32(slot), to: UInt64(0))
            // Every call recorded until the budget controller says otherwise.
            try loaded.object.update(maps.slotBudget, index: UInt32(slot), to: tp_budget(sample_every: 1, suspended: 0))
            if let events {
                try loaded.object.setInnerMap(maps.slotEvents, index: UInt32(slot), maxEntries: events.bufferBytes)
                ring = try loaded.object.openRing(maps.slotEvents, index: UInt32(slot))
            }
            s.claims &+= 1
            var value = Self.filterValue(filter, plan: plan, events: events)
            value.claim = s.claims
            if budgeted { value.flags |= UInt32(HUB_F_BUDGET) }
            if var cgroup {
                if loaded.cgroupMode == .underCgroup || cgroup.match.level == nil {
                    cgroup.mode = .underCgroup
                    let fd = try cgroup.openDirectory()
                    defer { close(fd) }
                    try loaded.object.update(maps.filterCgroups, index: UInt32(slot), to: UInt32(bitPattern: fd))
                }
                guard cgroup.mode == loaded.cgroupMode else {
                    throw KernelError(stage: .attach, errno: .EOPNOTSUPP, operation: "filter by cgroup \(cgroup.match.path)",
                                      detail: "the shared hook checks cgroups by ancestor id and this mount does not show the root cgroup")
                }
                value.flags |= UInt32(HUB_F_CGROUP)
                value.cgroup_id = cgroup.match.id
                value.cgroup_level = cgroup.match.level ?? 0
            }
            try loaded.object.update(maps.filters, index: UInt32(slot), to: value)
            try loaded.object.update(maps.byNr, index: nr, to: Self.nrValue(onThisSyscall + [slot]))
        } catch {
            // A key table made for this claim goes with it (else it would hold its memory until
            // the slot is taken again).
            try? loaded.object.removeInnerMap(maps.slotKeys, index: UInt32(slot))
            try? loaded.object.removeInnerMap(maps.slotKeysStr, index: UInt32(slot))
            try? loaded.object.removeInnerMap(maps.slotEvents, index: UInt32(slot))
            ring?.close()
            if s.members.isEmpty { drop(&s) }
            return .failure(.failed(descriptor.flavour, descriptor.needs[0], error, facts: facts))
        }
        s.members[slot] = nr
        s.memberClaims[slot] = s.claims
        return .success(Membership(hub: self, slot: slot, nr: nr, generation: s.generation, taskStorage: loaded.taskStorage, plan: plan,
                                   claim: s.claims, ring: ring))
    }

    /// Removes a probe: unlists its slot (its programs stop counting for it at once) and
    /// detaches the hub when it was the last. If the kernel refuses the unlisting, the slot
    /// stays taken (another probe given it would count this syscall too) and the leave is
    /// retried with every later join and leave.
    func leave(_ m: Membership) {
        state.withLock { s in
            guard m.generation == s.generation, s.members[m.slot] == m.nr, s.memberClaims[m.slot] == m.claim, s.loaded != nil else { return }
            if !unlist(m, &s) { s.stuckLeaves.append(m) }
            retryStuckLeaves(&s)
        }
    }

    /// Takes `m` out of the kernel's per-syscall table and the members; false when the
    /// kernel refused the map update.
    private func unlist(_ m: Membership, _ s: inout State) -> Bool {
        guard m.generation == s.generation, s.members[m.slot] == m.nr, s.memberClaims[m.slot] == m.claim, let loaded = s.loaded else { return true }
        let remaining = s.listed(m.nr, except: m.slot)
        do throws(KernelError) {
            try loaded.object.update(SyscallHubBPF.Maps.byNr, index: m.nr, to: Self.nrValue(remaining))
        } catch {
            return false
        }
        s.members[m.slot] = nil
        s.memberClaims[m.slot] = nil
        s.parked.remove(m.slot)
        if !s.members.isEmpty { detachLinksIfAllParked(&s) }
        // Its key table's memory goes now, not when the slot is taken again.
        try? loaded.object.removeInnerMap(SyscallHubBPF.Maps.slotKeys, index: UInt32(m.slot))
        try? loaded.object.removeInnerMap(SyscallHubBPF.Maps.slotKeysStr, index: UInt32(m.slot))
        try? loaded.object.removeInnerMap(SyscallHubBPF.Maps.slotEvents, index: UInt32(m.slot))
        if s.members.isEmpty { drop(&s) }
        return true
    }

    private func retryStuckLeaves(_ s: inout State) {
        guard !s.stuckLeaves.isEmpty else { return }
        var still: [Membership] = []
        for m in s.stuckLeaves where !unlist(m, &s) { still.append(m) }
        s.stuckLeaves = still.filter { $0.generation == s.generation }
    }

    /// Reads one probe's aggregates: its slot of `aggs` and its processes in `procs`.
    func read(_ m: Membership, topProcesses: Int) throws(KernelError) -> ProbeCounters {
        let object = state.withLock { s in m.generation == s.generation && s.members[m.slot] == m.nr && s.memberClaims[m.slot] == m.claim ? s.loaded?.object : nil }
        guard let object else { throw KernelError(stage: .read, errno: .EBADF, operation: "read a detached probe") }
        var counters = ProbeCounters()
        var slots = [UInt64](repeating: 0, count: Int(TP_HIST_SLOTS))
        for agg in try object.lookup(SyscallHubBPF.Maps.aggs, index: UInt32(m.slot), as: hub_agg.self) ?? [] {
            counters.add(agg.stats)
            withUnsafeBytes(of: agg.hist) { raw in
                for (i, count) in raw.bindMemory(to: UInt64.self).enumerated() { slots[i] &+= count }
            }
        }
        counters.buckets = ProbeCounters.buckets(slots)
        if topProcesses > 0 {
            counters.processes = ProbeCounters.topProcesses(try processTable(object, slot: m.slot), limit: topProcesses)
        }
        // The hub's programs serve all its probes: their run time is shared.
        counters.add(object.programStats())
        return counters
    }

    /// The slot's totals and the hub programs' run time (shared by every member).
    func budgetSample(_ m: Membership) throws(KernelError) -> AttachedProbe.BudgetSample {
        let object = state.withLock { s in m.generation == s.generation && s.members[m.slot] == m.nr && s.memberClaims[m.slot] == m.claim ? s.loaded?.object : nil }
        guard let object else { throw KernelError(stage: .read, errno: .EBADF, operation: "read a detached probe") }
        var counters = ProbeCounters()
        for agg in try object.lookup(SyscallHubBPF.Maps.aggs, index: UInt32(m.slot), as: hub_agg.self) ?? [] { counters.add(agg.stats) }
        counters.add(object.programStats())
        return AttachedProbe.BudgetSample(seen: counters.seen, calls: counters.calls, estimated: counters.estimated,
                                          runTimeNanoseconds: counters.runTimeNanoseconds, runCount: counters.runCount,
                                          sharedPrograms: ObjectIdentifier(object))
    }

    /// Takes a member's slot out of the hook's table (parked: its syscall's calls no longer
    /// look at it) or lists it again. With every member parked, the hook's programs are
    /// detached: enabled raw_syscalls tracepoints make every syscall of the host take the
    /// kernel's slow path (+130 ns per syscall measured here), whatever the programs do.
    func park(_ m: Membership, _ park: Bool) throws(KernelError) {
        try state.withLock { s throws(KernelError) in
            guard m.generation == s.generation, s.members[m.slot] == m.nr, s.memberClaims[m.slot] == m.claim, let loaded = s.loaded else {
                throw KernelError(stage: .attach, errno: .EBADF, operation: "park a detached probe")
            }
            guard s.parked.contains(m.slot) != park else { return }
            if park {
                try loaded.object.update(SyscallHubBPF.Maps.byNr, index: m.nr, to: Self.nrValue(s.listed(m.nr, except: m.slot)))
                s.parked.insert(m.slot)
                detachLinksIfAllParked(&s)
            } else {
                try attachLinks(&s)
                try loaded.object.update(SyscallHubBPF.Maps.byNr, index: m.nr, to: Self.nrValue(s.listed(m.nr) + [m.slot]))
                s.parked.remove(m.slot)
            }
        }
    }

    /// Attaches the hook's programs again if parking detached them.
    private func attachLinks(_ s: inout State) throws(KernelError) {
        guard var loaded = s.loaded, loaded.links.isEmpty, !loaded.attachments.isEmpty else { return }
        var links: [any AttachedLink] = []
        for step in loaded.attachments {
            do throws(KernelError) {
                links.append(try loaded.object.attach(program: step.program, to: step.point))
            } catch {
                attacher.reaper.dispose(links: links, objects: [])
                throw error
            }
        }
        loaded.links = links
        s.loaded = loaded
    }

    private func detachLinksIfAllParked(_ s: inout State) {
        guard var loaded = s.loaded, !loaded.links.isEmpty, !loaded.attachments.isEmpty,
              !s.members.isEmpty, s.members.keys.allSatisfy(s.parked.contains) else { return }
        // Closed now, not by the reaper: attaching them again on the next unpark must not
        // find the old ones still attached.
        for link in loaded.links { link.close() }
        loaded.links = []
        s.loaded = loaded
    }

    /// Sets the slot's budget control (struct tp_budget).
    func setBudget(_ m: Membership, _ control: tp_budget) throws(KernelError) {
        try state.withLock { s throws(KernelError) in
            guard m.generation == s.generation, s.members[m.slot] == m.nr, s.memberClaims[m.slot] == m.claim, let loaded = s.loaded else {
                throw KernelError(stage: .attach, errno: .EBADF, operation: "control a detached probe")
            }
            try loaded.object.update(SyscallHubBPF.Maps.slotBudget, index: UInt32(m.slot), to: control)
        }
    }

    /// The slot's key table.
    func readKeys(_ m: Membership) throws(KernelError) -> [MapEntry] {
        let object = state.withLock { s in m.generation == s.generation && s.members[m.slot] == m.nr && s.memberClaims[m.slot] == m.claim ? s.loaded?.object : nil }
        guard let object else { throw KernelError(stage: .read, errno: .EBADF, operation: "read a detached probe") }
        return try object.readInnerMap(Self.keyTable(m.plan), index: UInt32(m.slot))
    }

    /// Which array of key tables a slot's table is in: keys with a string part need the
    /// whole `struct hub_key`, the others its first HUB_KEY_SHORT bytes.
    static func keyTable(_ plan: AggregatePlan) -> BPFMapID {
        plan.stringPart == nil ? SyscallHubBPF.Maps.slotKeys : SyscallHubBPF.Maps.slotKeysStr
    }

    /// The slot's process table (one batched read).
    private func processTable(_ object: any LoadedObject, slot: Int) throws(KernelError) -> [tp_proc] {
        try object.arrayValues(SyscallHubBPF.Maps.procs, first: UInt32(slot * Self.processesPerSlot), count: Self.processesPerSlot,
                               as: tp_proc.self)
    }

    private func drop(_ s: inout State) {
        // Unpinned first: the pins would keep the links attached after ours are closed.
        if let pinDirectory, s.loaded != nil { PinStore.removeTree(pinDirectory) }
        if let loaded = s.loaded { attacher.reaper.dispose(links: loaded.links, objects: [loaded.object]) }
        s.loaded = nil
        s.parked = []
        s.generation += 1
    }

    private func refusal(_ message: String, errno: Errno, stage: KernelStage = .attach) -> AttachAttempt {
        AttachAttempt(flavour: descriptor.flavour, outcome: .error, stage: stage, errno: errno, message: message)
    }

    // MARK: Map values (bpf/include/traceplane/syscall_hub.h)

    static func nrValue(_ slots: [Int]) -> hub_nr {
        precondition(slots.count <= perSyscall, "at most \(perSyscall) slots per syscall")
        var value = hub_nr()
        value.count = UInt32(slots.count)
        withUnsafeMutableBytes(of: &value.slots) { raw in
            for (i, slot) in slots.enumerated() { raw.storeBytes(of: UInt32(slot), toByteOffset: 4 * i, as: UInt32.self) }
        }
        return value
    }

    static func filterValue(_ filter: ProbeFilter?, plan: AggregatePlan, events: EventsSpec? = nil) -> hub_filter {
        var value = hub_filter()
        value.tgid = UInt32(filter?.pid ?? 0)
        value.comm_set = filter?.comm == nil ? 0 : 1
        setCString(&value.comm, filter?.comm ?? "")
        value.min_latency_ns = plan.minLatencyNanoseconds
        var flags: UInt32 = 0
        if plan.countProcesses { flags |= UInt32(HUB_F_PROCS) }
        if plan.keyed {
            flags |= UInt32(HUB_F_KEYED)
            if plan.needsArguments { flags |= UInt32(HUB_F_ARGS) }
            if let s = plan.stringPart {
                flags |= UInt32(HUB_F_STR) | UInt32(HUB_F_ARGS)
                value.str_arg = s.arg
            }
            value.key_n = UInt32(plan.parts.count)
            withUnsafeMutableBytes(of: &value.key_kind) { raw in
                for (i, p) in plan.parts.enumerated() { raw.storeBytes(of: p.kind, toByteOffset: 4 * i, as: UInt32.self) }
            }
            withUnsafeMutableBytes(of: &value.key_arg) { raw in
                for (i, p) in plan.parts.enumerated() { raw.storeBytes(of: p.arg, toByteOffset: 4 * i, as: UInt32.self) }
            }
            withUnsafeMutableBytes(of: &value.key_len) { raw in
                for (i, p) in plan.parts.enumerated() { raw[i] = UInt8(truncatingIfNeeded: p.length) }
            }
            withUnsafeMutableBytes(of: &value.key_signed) { raw in
                for (i, p) in plan.parts.enumerated() { raw[i] = p.signed ? 1 : 0 }
            }
            value.val_kind = plan.value.kind
            value.val_arg = plan.value.arg
            value.val_len = UInt8(truncatingIfNeeded: plan.value.length)
            value.val_signed = plan.value.signed ? 1 : 0
            value.hist_kind = UInt32(plan.histogram.linear ? TP_H_LINEAR.rawValue : TP_H_LOG2.rawValue)
            value.hist_n = UInt32(plan.histogram.slots)
            value.hist_min = plan.histogram.min
            value.hist_step = plan.histogram.step
        }
        value.flags = flags
        if let events {
            value.flags |= UInt32(HUB_F_EVENTS)
            value.event_min_latency_ns = events.threshold
            value.event_rate = events.rate
        }
        return value
    }
}

/// The hubs of one planner, one per shared-hook flavour, loaded on first use.
public final class SyscallHubs: Sendable {
    private let hubs: [FlavourDescriptor.ID: SyscallHub]

    /// `pinRoot`: the pin directory; each hub pins itself in `<pinRoot>/.hub-<flavour>/`.
    init(attacher: ObjectAttacher, slots: Int, pinRoot: String? = nil) {
        hubs = Dictionary(uniqueKeysWithValues: FlavourCatalog.all.filter { $0.strategy == .sharedSyscallHook }.map { descriptor in
            (descriptor.id, SyscallHub(descriptor: descriptor, slots: slots, attacher: attacher,
                                       pinDirectory: pinRoot.map { PinStore.hubDirectory(root: $0, descriptor.id) }))
        })
    }

    public subscript(id: FlavourDescriptor.ID) -> SyscallHub? { hubs[id] }

    /// The hub of a spec-level flavour name (`tp_btf`, `raw_tracepoint`), if it has one.
    public subscript(flavour: Flavour) -> SyscallHub? {
        FlavourCatalog.descriptor(flavour, for: .syscall).flatMap { hubs[$0.id] }
    }
}
