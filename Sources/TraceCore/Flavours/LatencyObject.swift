/// The settings every flavour built on `bpf/latency.bpf.c` shares: the filter, where entry
/// timestamps live, and where the process name is in `struct task_struct`.
enum LatencyObject {
    /// Threads whose entry timestamps fit the hash that replaces task storage where the
    /// kernel refuses it for the program type.
    static let threadHashEntries: UInt32 = 16_384

    static func load(_ programs: [LoadSpec.Program], _ input: RecipeInput) -> LoadSpec {
        let globals = LatencyBPF.Globals.self
        var load = LoadSpec(object: LatencyBPF.object, programs: programs)
        if let pid = input.spec.filter?.pid { load.set(globals.filterTgid, UInt32(pid)) }
        if let comm = input.spec.filter?.comm {
            load.set(globals.filterCommSet, true)
            load.set(globals.filterComm, bytes: Array(comm.utf8.prefix(15)))
        }
        load.set(globals.useTaskStorage, input.taskStorage)
        if !input.taskStorage { load.change(LatencyBPF.Maps.starts, .taskStorageToHash(maxEntries: threadHashEntries)) }
        if let layout = input.facts.taskLayout {
            load.set(globals.taskGroupLeaderOffset, layout.groupLeader)
            load.set(globals.taskCommOffset, layout.comm)
        }
        return load
    }
}

extension ProbeTarget {
    /// The tracepoint's category and event (`sched`, `sched_switch`).
    var tracepointParts: (category: String, event: String) {
        let parts = (name ?? "").split(separator: ":", maxSplits: 1).map(String.init)
        return (parts.first ?? "", parts.count > 1 ? parts[1] : "")
    }
}
