/// A way of attaching a BPF program to an event, as the capability report and probe
/// specs name it.
public enum Mechanism: String, Sendable, Codable, CaseIterable, Hashable {
    case fentry
    case fexit
    case kprobe
    case kretprobe
    case kprobeMulti = "kprobe_multi"
    case tracepoint
    case rawTracepoint = "raw_tracepoint"
    case tpBTF = "tp_btf"
    case uprobe
    case uretprobe
    case perfEvent = "perf_event"

    /// Other names users know the mechanism by: bpftrace/bcc call fentry/fexit
    /// kfunc/kretfunc. (Not the kernel's BPF kfuncs, which are a feature.)
    public var aliases: [String] {
        switch self {
        case .fentry: ["kfunc"]
        case .fexit: ["kretfunc"]
        default: []
        }
    }

    /// Parses a mechanism name or alias (`kfunc` → fentry, `kretfunc` → fexit).
    public init?(name: String) {
        switch name {
        case "kfunc": self = .fentry
        case "kretfunc": self = .fexit
        default:
            guard let m = Mechanism(rawValue: name) else { return nil }
            self = m
        }
    }
}

/// Kernel features that are not attach mechanisms.
public enum Feature: String, Sendable, Codable, CaseIterable, Hashable {
    case vmlinuxBTF = "vmlinux_btf"
    case ringBuffer = "ring_buffer"
    case taskStorage = "task_storage"
    case bpfCookie = "bpf_cookie"
    case bpfLink = "bpf_link"
    case bpfStats = "bpf_stats"
    /// BPF programs calling kernel functions through kfuncs (verifier-checked calls).
    case bpfKfuncCalls = "bpf_kfunc_calls"
    /// `bpf_get_current_ancestor_cgroup_id` in tracing programs: cgroup filters compare one
    /// id (else they look the cgroup up in a cgroup array).
    case cgroupAncestor = "cgroup_ancestor"
}
