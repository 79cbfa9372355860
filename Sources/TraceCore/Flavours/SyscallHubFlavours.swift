import CBPFLayouts

extension FlavourDescriptor {
    /// The shared raw_syscalls hook via BTF tracepoints (`bpf/syscall_hub.bpf.c`,
    /// ``SyscallHub``): one program pair serves every syscall probe; each probe is a slot.
    static let syscallHubBTF = FlavourDescriptor(
        id: .syscallHubBTF, flavour: .tpBTF,
        places: [.syscall: .init(position: 2, via: "raw_syscalls sys_enter/sys_exit via tp_btf, one program pair shared by all syscall probes")],
        needs: [.tpBTF], strategy: .sharedSyscallHook, measures: .calls, unavailable: SyscallHubObject.unavailable,
        btfRequirement: { _, _ in .tracepoints(["sys_enter", "sys_exit"]) },
        keySupport: SyscallHubObject.keySupport,
        recipe: { input in
            let p = SyscallHubBPF.Programs.self
            return Recipe(
                load: SyscallHubObject.load([.init(p.hubBtfEnter, loadTimeTarget: "sys_enter"), .init(p.hubBtfExit, loadTimeTarget: "sys_exit")], input),
                attachments: [.init(program: p.hubBtfEnter, point: .loadTimeTarget, mechanism: .tpBTF),
                              .init(program: p.hubBtfExit, point: .loadTimeTarget, mechanism: .tpBTF)])
        })

    /// The same hook via raw tracepoints (untyped arguments: the exit reads the syscall
    /// number with bpf_probe_read_kernel).
    static let syscallHubRaw = FlavourDescriptor(
        id: .syscallHubRaw, flavour: .rawTracepoint,
        places: [.syscall: .init(position: 3, via: "raw_syscalls sys_enter/sys_exit via raw_tp, one program pair shared by all syscall probes")],
        needs: [.rawTracepoint], strategy: .sharedSyscallHook, measures: .calls, unavailable: SyscallHubObject.unavailable,
        keySupport: SyscallHubObject.keySupport,
        recipe: { input in
            let p = SyscallHubBPF.Programs.self
            return Recipe(
                load: SyscallHubObject.load([.init(p.hubRawEnter), .init(p.hubRawExit)], input),
                attachments: [.init(program: p.hubRawEnter, point: .rawTracepoint(name: "sys_enter"), mechanism: .rawTracepoint),
                              .init(program: p.hubRawExit, point: .rawTracepoint(name: "sys_exit"), mechanism: .rawTracepoint)])
        })
}

/// The settings of the shared hook's object: table sizes for the agent's probe limit,
/// where entry records live, and the process-name offsets.
enum SyscallHubObject {
    #if arch(x86_64)
    static let unavailable: String? = nil
    #else
    static let unavailable: String? = "the shared raw_syscalls hook reads the syscall number at exit from x86-64 pt_regs; on this build's architecture it would attach and count nothing, so it is not used"
    #endif

    /// The hub's per-slot key tables all have one value layout: a log2 histogram, or a
    /// linear one of up to HUB_HIST_SLOTS - 2 buckets.
    static func keySupport(_ plan: AggregatePlan) -> String? {
        if let stack = plan.parts.first(where: { $0.display == .kstack || $0.display == .ustack }) {
            return "\(stack.name) needs a stack map per probe, which this build of the shared raw_syscalls hook does not have; a probe's own programs can"
        }
        if plan.keyed, plan.histogram.slots > Int(HUB_HIST_SLOTS) {
            return "a linear histogram of \(plan.histogram.slots - 2) buckets needs a probe's own programs; the shared raw_syscalls hook's key tables hold \(HUB_HIST_SLOTS - 2)"
        }
        return nil
    }

    /// How every slot's cgroup filter is checked: by ancestor id where tracing programs
    /// may call that helper and the cgroup2 mount shows the root cgroup (depths are known),
    /// else through the cgroup array.
    static func cgroupMode(_ input: RecipeInput) -> CgroupFilterMode {
        input.cgroupAncestor && input.facts.cgroup2.wholeHierarchy ? .ancestor : .underCgroup
    }

    /// Entries of a slot's process table (`1 << HUB_PROCS_BITS`).
    static let processesPerSlot = 1 << Int(HUB_PROCS_BITS)

    static func load(_ programs: [LoadSpec.Program], _ input: RecipeInput) -> LoadSpec {
        let maps = SyscallHubBPF.Maps.self, globals = SyscallHubBPF.Globals.self
        precondition(input.hubSlots >= 1, "the shared hook is loaded with its slot count")
        var load = LoadSpec(object: SyscallHubBPF.object, programs: programs)
        load.set(globals.useTaskStorage, input.taskStorage)
        load.set(globals.cgroupMode, cgroupMode(input).rawValue)
        load.change(maps.filters, .maxEntries(UInt32(input.hubSlots)))
        load.change(maps.filterCgroups, .maxEntries(UInt32(input.hubSlots)))
        load.change(maps.aggs, .maxEntries(UInt32(input.hubSlots)))
        load.change(maps.slotRate, .maxEntries(UInt32(input.hubSlots)))
        load.change(maps.slotBudget, .maxEntries(UInt32(input.hubSlots)))
        load.change(maps.procs, .maxEntries(UInt32(input.hubSlots * processesPerSlot)))
        if !input.taskStorage { load.change(maps.starts, .taskStorageToHash(maxEntries: LatencyObject.threadHashEntries)) }
        if let layout = input.facts.taskLayout {
            load.set(globals.taskGroupLeaderOffset, layout.groupLeader)
            load.set(globals.taskCommOffset, layout.comm)
        }
        return load
    }
}
