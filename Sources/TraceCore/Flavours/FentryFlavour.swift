extension FlavourDescriptor {
    /// fentry + fexit (kfunc/kretfunc): BPF trampolines on a kernel function, bound at load
    /// time through BTF. First choice for functions and syscalls.
    static let fentry = FlavourDescriptor(
        id: .fentry, flavour: .fentry, places: [.function: .init(position: 0, via: "fentry/fexit on the function"),
                 .syscall: .init(position: 0, via: "fentry/fexit on the syscall's kernel entry")],
        needs: [.fentry, .fexit], measures: .calls,
        bindings: { target, facts in target.kernelFunctions(facts) },
        btfRequirement: { target, facts in .function(anyOf: target.kernelFunctions(facts)) },
        recipe: { input in
            let p = LatencyBPF.Programs.self
            let function = input.binding ?? ""
            return Recipe(
                load: LatencyObject.load([.init(p.latFentry, loadTimeTarget: function), .init(p.latFexit, loadTimeTarget: function)], input),
                attachments: [.init(program: p.latFentry, point: .loadTimeTarget, mechanism: .fentry),
                              .init(program: p.latFexit, point: .loadTimeTarget, mechanism: .fexit)])
        })
}

extension ProbeTarget {
    /// The kernel functions that implement this target, in the order fentry and kprobes try
    /// them: the function itself; for a syscall its entry (`__x64_sys_read`) and then
    /// `__do_sys_read`: a zero-argument syscall's entry is an alias of the latter with no
    /// BTF of its own, so fentry can only bind to `__do_sys_X`.
    func kernelFunctions(_ facts: KernelFacts) -> [String] {
        let name = self.name ?? ""
        switch type {
        case .syscall: return ["\(facts.syscallPrefix ?? "")sys_\(name)", "__do_sys_\(name)"]
        default: return [name]
        }
    }
}
