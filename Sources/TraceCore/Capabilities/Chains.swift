/// The kinds of things a probe can trace.
public enum TargetType: String, Sendable, Codable, CaseIterable, Hashable {
    case function, syscall, tracepoint, uprobe
}

/// A way to attach a whole probe (entry and exit where there is one): the unit that
/// fallback chains and `mechanisms` in probe specs name.
public enum Flavour: String, Sendable, Codable, CaseIterable, Hashable {
    /// fentry + fexit (kfunc/kretfunc).
    case fentry
    /// kprobe + kretprobe.
    case kprobe
    /// perf tracepoints (for syscalls: `syscalls:sys_enter_X`/`sys_exit_X`).
    case tracepoint
    /// BTF raw tracepoints (for syscalls: `raw_syscalls` sys_enter/sys_exit).
    case tpBTF = "tp_btf"
    /// raw tracepoints (for syscalls: `raw_syscalls` sys_enter/sys_exit).
    case rawTracepoint = "raw_tracepoint"
    /// uprobe + uretprobe.
    case uprobe

    /// Parses a mechanism name as used in a probe spec. Return-side names and aliases
    /// choose the pair they belong to: `kfunc`, `kretfunc`, `fexit` → fentry;
    /// `kretprobe` → kprobe; `uretprobe` → uprobe; `raw_tp` → raw_tracepoint.
    public init?(specName: String) {
        switch specName {
        case "fentry", "fexit", "kfunc", "kretfunc": self = .fentry
        case "kprobe", "kretprobe": self = .kprobe
        case "tracepoint": self = .tracepoint
        case "tp_btf": self = .tpBTF
        case "raw_tracepoint", "raw_tp": self = .rawTracepoint
        case "uprobe", "uretprobe": self = .uprobe
        default: return nil
        }
    }

    /// The mechanisms that must all work for this flavour, for a target type.
    public func requires(for target: TargetType) -> [Mechanism] {
        switch self {
        case .fentry: [.fentry, .fexit]
        case .kprobe: [.kprobe, .kretprobe]
        case .tracepoint: [.tracepoint]
        case .tpBTF: [.tpBTF]
        case .rawTracepoint: [.rawTracepoint]
        case .uprobe: [.uprobe, .uretprobe]
        }
    }

    /// The default preference order for each target type.
    public static func defaultChain(for target: TargetType) -> [Flavour] {
        switch target {
        case .function: [.fentry, .kprobe]
        case .syscall: [.fentry, .kprobe, .tpBTF, .rawTracepoint, .tracepoint]
        case .tracepoint: [.tpBTF, .rawTracepoint, .tracepoint]
        case .uprobe: [.uprobe]
        }
    }

    /// Which flavours make sense at all for a target type.
    public func applies(to target: TargetType) -> Bool {
        Self.defaultChain(for: target).contains(self)
    }

    func via(for target: TargetType) -> String {
        switch (self, target) {
        case (.fentry, .syscall): "fentry/fexit on the syscall's kernel entry"
        case (.kprobe, .syscall): "kprobe/kretprobe on the syscall's kernel entry"
        case (.tracepoint, .syscall): "syscalls:sys_enter_X / sys_exit_X"
        case (.tpBTF, .syscall): "raw_syscalls sys_enter/sys_exit via tp_btf, one program pair shared by all syscall probes"
        case (.rawTracepoint, .syscall): "raw_syscalls sys_enter/sys_exit via raw_tp, one program pair shared by all syscall probes"
        case (.fentry, _): "fentry/fexit on the function"
        case (.kprobe, _): "kprobe/kretprobe on the function"
        case (.tpBTF, _): "BTF tracepoint"
        case (.rawTracepoint, _): "raw tracepoint"
        case (.tracepoint, _): "perf tracepoint"
        case (.uprobe, _): "uprobe/uretprobe on the symbol"
        }
    }

    /// The chains the capability report shows, with what is usable on this kernel.
    static func reportChains(_ mechanisms: [CapabilityResult]) -> [String: [ChainStep]] {
        let supported = Set(mechanisms.filter { $0.status == .supported }.map(\.name))
        var chains: [String: [ChainStep]] = [:]
        for target in TargetType.allCases {
            chains[target.rawValue] = defaultChain(for: target).map { flavour in
                let needs = flavour.requires(for: target).map(\.rawValue)
                return ChainStep(mechanism: flavour.rawValue, requires: needs, via: flavour.via(for: target),
                                 usable: needs.allSatisfy(supported.contains))
            }
        }
        return chains
    }
}
