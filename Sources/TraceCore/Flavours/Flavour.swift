/// The kinds of things a probe can trace.
public enum TargetType: String, Sendable, Codable, CaseIterable, Hashable {
    case function, syscall, tracepoint, uprobe
    /// CPU sampling: a cpu-clock perf event on every online CPU (`frequency_hz`).
    case profile
}

/// The name of a way to attach a whole probe (entry and exit where there is one): what
/// fallback chains, `mechanisms` in probe specs and attach attempts say. One name can stand
/// for a different flavour per target type (`tp_btf` is the shared raw_syscalls hook for a
/// syscall, a counting program for a tracepoint); ``FlavourCatalog`` holds each of them.
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
    /// A perf_event program on cpu-clock software events (profile targets).
    case perfEvent = "perf_event"

    /// Other names a spec may use for it: the return side of a pair, and the names of
    /// bpftrace and bcc (`kfunc`/`kretfunc` for fentry/fexit).
    public var aliases: [String] {
        switch self {
        case .fentry: ["fexit", "kfunc", "kretfunc"]
        case .kprobe: ["kretprobe"]
        case .tracepoint, .tpBTF: []
        case .rawTracepoint: ["raw_tp"]
        case .uprobe: ["uretprobe"]
        case .perfEvent: []
        }
    }

    /// Parses a mechanism name as used in a probe spec: a flavour's name or one of its aliases.
    public init?(specName: String) {
        guard let flavour = Self.allCases.first(where: { $0.rawValue == specName || $0.aliases.contains(specName) }) else {
            return nil
        }
        self = flavour
    }

    /// Every name a spec may use, for error messages: `fentry (fexit, kfunc, kretfunc), …`.
    public static var specNames: String {
        allCases.map { $0.aliases.isEmpty ? $0.rawValue : "\($0.rawValue) (\($0.aliases.joined(separator: ", ")))" }
            .joined(separator: ", ")
    }
}
