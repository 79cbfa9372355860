import CBPFLayouts

/// The settings every flavour built on `bpf/latency.bpf.c` shares: the filter, where entry
/// timestamps live, where the process name is in `struct task_struct`, and the keyed
/// aggregation of the probe's ``AggregatePlan``.
enum LatencyObject {
    /// Threads whose entry timestamps fit the hash that replaces task storage where the
    /// kernel refuses it for the program type.
    static let threadHashEntries: UInt32 = 16_384

    /// The cgroup array the filter's `bpf_current_task_under_cgroup` check reads, when it uses one.
    static func cgroupArray(_ input: RecipeInput) -> Recipe.CgroupArray? {
        guard let cgroup = input.cgroup, cgroup.mode == .underCgroup else { return nil }
        return Recipe.CgroupArray(map: LatencyBPF.Maps.filterCgroup, filter: cgroup)
    }

    static func load(_ programs: [LoadSpec.Program], _ input: RecipeInput) -> LoadSpec {
        let globals = LatencyBPF.Globals.self
        var load = LoadSpec(object: LatencyBPF.object, programs: programs)
        if let pid = input.spec.filter?.pid { load.set(globals.filterTgid, UInt32(pid)) }
        if let comm = input.spec.filter?.comm {
            load.set(globals.filterCommSet, true)
            load.set(globals.filterComm, bytes: Array(comm.utf8.prefix(15)))
        }
        if let cgroup = input.cgroup {
            load.set(globals.filterCgroupMode, cgroup.mode.rawValue)
            load.set(globals.filterCgroupId, cgroup.match.id)
            load.set(globals.filterCgroupLevel, cgroup.match.level ?? 0)
        }
        load.set(globals.useTaskStorage, input.taskStorage)
        if !input.taskStorage { load.change(LatencyBPF.Maps.starts, .taskStorageToHash(maxEntries: threadHashEntries)) }
        if let layout = input.facts.taskLayout {
            load.set(globals.taskGroupLeaderOffset, layout.groupLeader)
            load.set(globals.taskCommOffset, layout.comm)
        }
        configure(&load, plan: input.plan, syscallRegisters: input.syscallRegisters)
        if input.budgeted { load.set(globals.budgetOn, true) }
        if let events = input.spec.events {
            load.set(globals.eventsOn, true)
            load.set(globals.eventMinLatencyNs, events.threshold)
            load.set(globals.eventRate, events.rate)
            load.change(LatencyBPF.Maps.events, .maxEntries(events.bufferBytes))
        } else if input.plan.notifiesNewKeys {
            // User addresses are named from the process's mappings, read when user space hears
            // of its first key, not a second later when the process may be gone. Only without
            // events: an events ring carries events alone, as every build reading pinned
            // programs expects (an older one adopting them would stream notices as events);
            // with events, the processes of the events are read instead (ProbeEvents).
            load.set(globals.notifyNewKeys, true)
            // The ring carries only new-key notices (one per new key): room for about 300
            // between two reads of the event pump.
            load.change(LatencyBPF.Maps.events, .maxEntries(KeyNotices.ringBytes))
        }
        return load
    }

    /// The keyed-aggregation settings of `plan`; a plan without a key table sets only the
    /// process-table switch and the latency filter, and the key table stays one entry.
    static func configure(_ load: inout LoadSpec, plan: AggregatePlan, syscallRegisters: Bool) {
        let g = LatencyBPF.Globals.self
        if !plan.countProcesses { load.set(g.countProcs, false) }
        if plan.returnsVoid {
            load.set(g.retLen, UInt32(255))
        } else if plan.returnLength > 0 {
            load.set(g.retLen, plan.returnLength)
            load.set(g.retSigned, plan.returnSigned)
        }
        if plan.minLatencyNanoseconds > 0 { load.set(g.minLatencyNs, plan.minLatencyNanoseconds) }
        guard plan.keyed else { return }
        func u32s(_ values: [UInt32]) -> [UInt8] { values.flatMap { v in withUnsafeBytes(of: v.littleEndian) { Array($0) } } }
        load.set(g.keyed, true)
        load.set(g.keyN, UInt32(plan.parts.count))
        load.set(g.keyKind, bytes: u32s(plan.parts.map(\.kind)))
        load.set(g.keyArg, bytes: u32s(plan.parts.map(\.arg)))
        load.set(g.keyLen, bytes: u32s(plan.parts.map(\.length)))
        load.set(g.keySigned, bytes: plan.parts.map { $0.signed ? 1 : 0 })
        load.set(g.keyOff, bytes: u32s(plan.parts.map { UInt32($0.offset) }))
        load.set(g.valKind, plan.value.kind)
        load.set(g.valArg, plan.value.arg)
        load.set(g.valLen, plan.value.length)
        load.set(g.valSigned, plan.value.signed)
        load.set(g.histKind, UInt32(plan.histogram.linear ? TP_H_LINEAR.rawValue : TP_H_LOG2.rawValue))
        load.set(g.histN, UInt32(plan.histogram.slots))
        load.set(g.histMin, plan.histogram.min)
        load.set(g.histStep, plan.histogram.step)
        load.set(g.needArgs, plan.needsArguments)
        if let s = plan.stringPart {
            load.set(g.strArg, s.arg)
            load.set(g.strUser, s.user)
        }
        load.set(g.syscallRegs, syscallRegisters)
        if plan.stackParts > 0 {
            load.set(g.needStacks, true)
            // Seeded per load: a process cannot choose user stack words that hash like
            // another stack and have its frames stand for that one.
            load.set(g.stackSeed, UInt64.random(in: 1...UInt64.max))
            load.change(LatencyBPF.Maps.stacks, .maxEntries(UInt32(plan.stackEntries)))
        }
        let valueSize = UInt32(plan.valueSize)
        load.change(LatencyBPF.Maps.keys, .sizes(key: UInt32(plan.keySize), value: valueSize, maxEntries: UInt32(plan.maxKeys)))
        load.change(LatencyBPF.Maps.zeroValue, .sizes(key: 4, value: valueSize, maxEntries: 1))
    }
}

extension ProbeTarget {
    /// The tracepoint's category and event (`sched`, `sched_switch`).
    var tracepointParts: (category: String, event: String) {
        let parts = (name ?? "").split(separator: ":", maxSplits: 1).map(String.init)
        return (parts.first ?? "", parts.count > 1 ? parts[1] : "")
    }
}
