import CBPFLayouts
import Glibc
import Synchronization

/// A probe attached in the kernel: its own object and links, or a slot of a shared
/// ``SyscallHub``. One owner; `detach` hands everything to the reaper (links first), or
/// leaves the hub, and is idempotent.
public final class AttachedProbe: Sendable {
    public let descriptor: FlavourDescriptor
    public var flavour: Flavour { descriptor.flavour }
    /// Tracepoint probes count events: no latency histogram, no errors.
    public var countsOnly: Bool { descriptor.measures == .events }
    public let taskStorage: Bool
    /// What it is bound to (kernel function, tracepoint, binary:symbol, hub slot), when known.
    public let boundTo: String?
    /// Its keys and value, as the programs were configured.
    public let plan: AggregatePlan
    /// Whether the spec asked for `aggregate` (the metrics then have that member).
    let reportsAggregate: Bool

    /// What the probe holds in the kernel.
    enum Resources {
        case own(object: any LoadedObject, links: [any AttachedLink])
        case hub(SyscallHub.Membership)
        case detached
    }
    let resources: Mutex<Resources>
    private let recorded = Mutex<[AttachAttempt]>([])
    /// The symbolized stacks of `kstack`/`ustack` keys (nil without stack keys).
    let stackTable: StackTable?
    /// Its events on their way to subscribers (nil without an `events` spec).
    public let events: ProbeEvents?
    /// The new-key notices of a `ustack` probe without events (with events, ``events``
    /// reads them): its processes' mappings are read when their first stack is keyed.
    let notices: KeyNotices?
    /// Whether its programs can sample and suspend (spec `budget`, serve --max-cpu-percent):
    /// they then count every call in `seen` and read the budget control.
    public let budgeted: Bool

    /// What the links were made from: attached again when a suspended probe is resumed.
    private let attachments: [Recipe.Attachment]
    /// Suspended by its budget with its programs detached (own object: no links; hub: the
    /// slot is not listed).
    private let parkedState = Mutex(false)
    /// Pinned on bpffs (`serve --pin-dir`): a pinned link stays attached whatever the agent
    /// closes, so a suspended pinned probe is stopped by the flag in its budget map (its
    /// programs run and return at once) instead of being detached.
    private let pinnedState = Mutex(false)
    /// A uprobe's file as it was when the probe attached (device and inode): the kernel's
    /// uprobe stays on that inode when another file is renamed over the path.
    private let uprobeFile = Mutex<UprobeFile?>(nil)

    struct UprobeFile: Sendable, Hashable {
        var device: UInt64
        var inode: UInt64

        /// The file at `path` now, nil when there is none.
        init?(path: String) {
            var info = stat()
            guard stat(path, &info) == 0 else { return nil }
            device = UInt64(info.st_dev)
            inode = UInt64(info.st_ino)
        }
    }

    func recordUprobeFile(_ file: UprobeFile?) { uprobeFile.withLock { $0 = file } }

    /// Whether the uprobe's path now names another file than the one attached (replaced by
    /// a rename or a reinstall): the probe then counts only processes of the old file. A
    /// deleted file is not replaced (its running processes are still counted).
    func uprobeFileReplaced(_ target: ProbeTarget) -> Bool {
        guard target.type == .uprobe, let path = target.path, let attached = uprobeFile.withLock({ $0 }),
              let now = UprobeFile(path: path) else { return false }
        return now != attached
    }

    init(descriptor: FlavourDescriptor, object: any LoadedObject, links: [any AttachedLink], taskStorage: Bool, boundTo: String? = nil,
         plan: AggregatePlan, reportsAggregate: Bool = true, events: ProbeEvents? = nil, notices: KeyNotices? = nil, budgeted: Bool = false,
         attachments: [Recipe.Attachment] = []) {
        self.descriptor = descriptor
        self.attachments = attachments
        self.events = events
        self.notices = notices
        self.budgeted = budgeted
        self.taskStorage = taskStorage
        self.boundTo = boundTo
        self.plan = plan
        self.reportsAggregate = reportsAggregate
        resources = Mutex(.own(object: object, links: links))
        stackTable = plan.stackParts > 0 ? StackTable(stripsTracer: descriptor.id != .profile) : nil
        if let events { EventPump.shared.register(events) }
        if let notices { EventPump.shared.register(notices) }
        // Resolve new stacks while their processes still run (a process that exits keeps
        // the names it had; its mappings were read when its first key was told, by `events`
        // or `notices`); the timer holds the probe weakly and stops at detach.
        stackTable?.start { [weak self] () throws(KernelError) -> (refs: Set<StackRef>, lookup: StackTable.Lookup) in
            guard let self else { return ([], { _ in nil }) }
            return try self.rawStacks()
        }
    }

    init(descriptor: FlavourDescriptor, hub: SyscallHub.Membership, boundTo: String?, plan: AggregatePlan, reportsAggregate: Bool = true,
         events: ProbeEvents? = nil, budgeted: Bool = false) {
        self.descriptor = descriptor
        self.events = events
        notices = nil
        self.budgeted = budgeted
        attachments = []
        taskStorage = hub.taskStorage
        self.boundTo = boundTo
        self.plan = plan
        self.reportsAggregate = reportsAggregate
        resources = Mutex(.hub(hub))
        stackTable = nil
        if let events { EventPump.shared.register(events) }
    }

    /// Whether the probe is a slot of a shared syscall hook.
    public var isShared: Bool { resources.withLock { if case .hub = $0 { true } else { false } } }

    /// Every flavour tried before this one attached, and this one.
    public internal(set) var attempts: [AttachAttempt] {
        get { recorded.withLock { $0 } }
        set { recorded.withLock { $0 = newValue } }
    }

    /// Detaches and frees everything, off the caller's path. Its event streams end with
    /// `end` and `reason` (after the events still in the ring buffer).
    public func detach(reaper: Reaper, reason: FeedEndReason = .deleted) {
        stackTable?.stop()
        events?.finish(reason)
        notices?.close()
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

    // MARK: Budget

    /// What the budget controller reads every second: cheap (the totals and the programs'
    /// run time, no histogram, keys or process table).
    public struct BudgetSample: Sendable, Hashable {
        /// Calls that passed the filter, recorded or not (budgeted probes only).
        public var seen: UInt64
        public var calls: UInt64
        public var estimated: UInt64
        /// Run time and runs of the programs, counted while BPF stats are on.
        public var runTimeNanoseconds: UInt64
        public var runCount: UInt64
        /// Set when the programs serve other probes too (the shared syscall hook): the run
        /// time is theirs together, and this names them.
        public var sharedPrograms: ObjectIdentifier?
    }

    public func budgetSample() throws(KernelError) -> BudgetSample {
        switch resources.withLock({ $0 }) {
        case .own(let object, _):
            var counters = ProbeCounters()
            for entry in try object.readMap(LatencyBPF.Maps.stats) {
                for value in entry.values { counters.add(value.load(as: tp_stats.self)) }
            }
            counters.add(object.programStats())
            return BudgetSample(seen: counters.seen, calls: counters.calls, estimated: counters.estimated,
                                runTimeNanoseconds: counters.runTimeNanoseconds, runCount: counters.runCount, sharedPrograms: nil)
        case .hub(let membership):
            return try membership.budgetSample()
        case .detached:
            throw KernelError(stage: .read, errno: .EBADF, operation: "read a detached probe")
        }
    }

    /// Whether the programs are detached by the budget (see ``park(reaper:)``).
    public var isParked: Bool { parkedState.withLock { $0 } }

    /// Marks the probe's own object and links as pinned (see ``pinnedState``).
    func markPinned() { pinnedState.withLock { $0 = true } }

    /// Whether its links are held by pins: its own, or its shared hook's.
    var isPinned: Bool {
        if pinnedState.withLock({ $0 }) { return true }
        if case .hub(let membership) = resources.withLock({ $0 }) { return membership.hub.pinDirectory != nil }
        return false
    }

    /// Detaches the programs but keeps the maps (counts, keys, events): a suspended probe
    /// then costs the host nothing, not even the hook's dispatch. For a slot of the shared
    /// syscall hook, the slot is taken out of the hook's table (and the hook detached when
    /// no listed slot is left).
    public func park(reaper: Reaper) throws(KernelError) {
        let pinned = isPinned
        try parkedState.withLock { parked throws(KernelError) in
            guard !parked else { return }
            // Pinned: the budget map's `suspended` flag (set before this) stops it.
            if pinned { parked = true; return }
            let links = resources.withLock { r -> [any AttachedLink]? in
                switch r {
                case .own(let object, let links):
                    r = .own(object: object, links: [])
                    return links
                case .hub, .detached: return nil
                }
            }
            if let links {
                // Closed here, not by the reaper: an unpark soon after must not find the
                // old link still attached (a perf tracepoint refuses the same program
                // twice: EEXIST). The budget's thread can wait the RCU grace period.
                for link in links { link.close() }
            } else if case .hub(let membership) = resources.withLock({ $0 }) {
                try membership.park(true)
            } else {
                throw KernelError(stage: .attach, errno: .EBADF, operation: "park a detached probe")
            }
            parked = true
        }
    }

    /// Attaches the programs again after ``park(reaper:)``; on failure nothing is attached
    /// and the probe stays parked.
    public func unpark(reaper: Reaper) throws(KernelError) {
        let pinned = isPinned
        try parkedState.withLock { parked throws(KernelError) in
            guard parked else { return }
            if pinned { parked = false; return }
            switch resources.withLock({ $0 }) {
            case .own(let object, _):
                var links: [any AttachedLink] = []
                for step in attachments {
                    do throws(KernelError) {
                        links.append(try object.attach(program: step.program, to: step.point))
                    } catch {
                        reaper.dispose(links: links, objects: [])
                        throw error
                    }
                }
                let stale = resources.withLock { r -> Bool in
                    guard case .own(let current, _) = r, current === object else { return true }
                    r = .own(object: object, links: links)
                    return false
                }
                // Detached meanwhile: the new links go too.
                if stale { reaper.dispose(links: links, objects: []) }
            case .hub(let membership):
                try membership.park(false)
            case .detached:
                throw KernelError(stage: .attach, errno: .EBADF, operation: "unpark a detached probe")
            }
            parked = false
        }
    }

    /// Records one call in `sampleEvery` (counted that many times), or nothing while
    /// `suspended`. Only for budgeted probes.
    public func setBudget(sampleEvery: UInt32, suspended: Bool) throws(KernelError) {
        precondition(budgeted, "setBudget on a probe built without budget control")
        var control = tp_budget()
        control.sample_every = max(1, sampleEvery)
        control.suspended = suspended ? 1 : 0
        switch resources.withLock({ $0 }) {
        case .own(let object, _): try object.update(LatencyBPF.Maps.budget, index: 0, to: control)
        case .hub(let membership): try membership.setBudget(control)
        case .detached: throw KernelError(stage: .attach, errno: .EBADF, operation: "control a detached probe")
        }
    }

    /// Reads the probe's maps. Scrape cost depends on the number of maps, not on events;
    /// `topProcesses` 0 skips the process table. Without `symbolizingStacks`, stack key
    /// parts keep no frames (for readers that drop them, such as the Prometheus exporter:
    /// naming the frames of every binary a profile sampled can take seconds).
    public func read(topProcesses: Int = 10, symbolizingStacks: Bool = true) throws(KernelError) -> ProbeCounters {
        let object: any LoadedObject
        switch resources.withLock({ $0 }) {
        case .own(let own, _): object = own
        case .hub(let membership):
            var counters = try membership.read(topProcesses: topProcesses)
            addEvents(&counters)
            if reportsAggregate {
                counters.aggregate = plan.keyed
                    ? KeyTableReader.aggregate(try membership.readKeys(), plan: plan, layout: .hub, droppedKeys: counters.droppedKeys)
                    : KeyTableReader.totals(counters, plan: plan)
            }
            return counters
        case .detached: throw KernelError(stage: .read, errno: .EBADF, operation: "read a detached probe")
        }
        let maps = LatencyBPF.Maps.self
        var counters = ProbeCounters()
        for entry in try object.readMap(maps.stats) {
            for value in entry.values { counters.add(value.load(as: tp_stats.self)) }
        }
        if !countsOnly {
            var slots = [UInt64](repeating: 0, count: Int(TP_HIST_SLOTS))
            for entry in try object.readMap(maps.hist) {
                let slot = Int(entry.key.load(as: UInt32.self))
                guard slot < slots.count else { continue }
                for value in entry.values { slots[slot] &+= value.load(as: UInt64.self) }
            }
            counters.buckets = ProbeCounters.buckets(slots)
        }
        if topProcesses > 0 {
            let table = try object.arrayValues(maps.procs, first: 0, count: 1 << Int(TP_PROCS_BITS), as: tp_proc.self)
            counters.processes = ProbeCounters.topProcesses(table, limit: topProcesses)
        }
        counters.add(object.programStats())
        addEvents(&counters)
        if reportsAggregate {
            counters.aggregate = plan.keyed
                ? KeyTableReader.aggregate(try object.readMap(maps.keys), plan: plan, layout: .own, droppedKeys: counters.droppedKeys)
                : KeyTableReader.totals(counters, plan: plan)
            if let stackTable, var aggregate = counters.aggregate {
                aggregate.stackFull = counters.stackFull
                if symbolizingStacks {
                    Self.symbolize(&aggregate, table: stackTable, lookup: StackTable.lookup(in: object, map: maps.stacks))
                }
                counters.aggregate = aggregate
            }
        }
        return counters
    }

    private func addEvents(_ counters: inout ProbeCounters) {
        guard let events else { return }
        let feed = events.feed.counts
        counters.events = ProbeCounters.EventCounts(
            minLatencyNs: countsOnly ? nil : events.spec.threshold, maxPerSecond: events.spec.rate, bufferKiB: events.spec.bufferBytes / 1024,
            emitted: counters.eventsEmitted, throttled: counters.eventsThrottled, lost: counters.eventsLost,
            consumed: events.consumed, subscribers: feed.subscribers, missed: feed.missed)
    }

    /// The stack parts the key table names now, and the stack map's raw frames.
    private func rawStacks() throws(KernelError) -> (refs: Set<StackRef>, lookup: StackTable.Lookup) {
        guard case .own(let object, _) = resources.withLock({ $0 }) else { return ([], { _ in nil }) }
        let maps = LatencyBPF.Maps.self
        let keys = KeyTableReader.aggregate(try object.readMap(maps.keys), plan: plan, layout: .own, droppedKeys: 0, cgroups: .shared)
        return (Self.stackRefs(keys), StackTable.lookup(in: object, map: maps.stacks))
    }

    static func stackRefs(_ aggregate: KeyedAggregate) -> Set<StackRef> {
        var refs = Set<StackRef>()
        for entry in aggregate.entries {
            for part in entry.key { if case .stack(let ref, _) = part { refs.insert(ref) } }
        }
        return refs
    }

    /// Puts the frames of every stack part into `aggregate` (re-sorted: the key text changed).
    static func symbolize(_ aggregate: inout KeyedAggregate, table: StackTable, lookup: StackTable.Lookup) {
        let frames = table.frames(for: stackRefs(aggregate), lookup: lookup)
        for i in aggregate.entries.indices {
            aggregate.entries[i].key = aggregate.entries[i].key.map { part in
                guard case .stack(let ref, _) = part else { return part }
                return .stack(ref, frames: (frames[ref] ?? []).map(\.text))
            }
        }
        aggregate.entries.sort { a, b in a.calls != b.calls ? a.calls > b.calls : a.texts.lexicographicallyPrecedes(b.texts) }
    }
}
