extension FlavourDescriptor {
    /// The per-syscall perf tracepoints `syscalls:sys_enter_X` / `sys_exit_X`: a program
    /// pair per probe. Last in the syscall chain: a traced call costs more than through the
    /// shared hook, but untraced syscalls of the host pay less.
    static let syscallTracepoints = FlavourDescriptor(
        id: .syscallTracepoints, flavour: .tracepoint, places: [.syscall: .init(position: 4, via: "syscalls:sys_enter_X / sys_exit_X")],
        needs: [.tracepoint], measures: .calls,
        recipe: { input in
            let p = LatencyBPF.Programs.self
            let name = input.spec.target.name ?? ""
            return Recipe(
                load: LatencyObject.load([.init(p.latSysEnter), .init(p.latSysExit)], input),
                attachments: [.init(program: p.latSysEnter, point: .tracepoint(category: "syscalls", name: "sys_enter_\(name)"), mechanism: .tracepoint),
                              .init(program: p.latSysExit, point: .tracepoint(category: "syscalls", name: "sys_exit_\(name)"), mechanism: .tracepoint)])
        })
}
