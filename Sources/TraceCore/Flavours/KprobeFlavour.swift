extension FlavourDescriptor {
    /// kprobe + kretprobe on a kernel function (for a syscall: its kernel entry).
    static let kprobe = FlavourDescriptor(
        id: .kprobe, flavour: .kprobe, places: [.function: .init(position: 1, via: "kprobe/kretprobe on the function"),
                 .syscall: .init(position: 1, via: "kprobe/kretprobe on the syscall's kernel entry")],
        needs: [.kprobe, .kretprobe], measures: .calls,
        bindings: { target, facts in Array(target.kernelFunctions(facts).prefix(1)) },
        recipe: { input in
            let p = LatencyBPF.Programs.self
            let function = input.binding ?? ""
            return Recipe(
                load: LatencyObject.load([.init(p.latKprobe), .init(p.latKretprobe)], input),
                attachments: [.init(program: p.latKprobe, point: .kprobe(function: function, retprobe: false), mechanism: .kprobe),
                              .init(program: p.latKretprobe, point: .kprobe(function: function, retprobe: true), mechanism: .kretprobe)])
        })
}
