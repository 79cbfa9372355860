/// Turns a kernel failure into a capability status and a message that names the likely
/// cause. Pure: unit-tested on its own.
public enum Classifier {
    public struct Verdict: Sendable, Hashable {
        public var status: CapabilityStatus
        public var message: String
    }

    /// Classifies `error` from trying `mechanism` on a kernel described by `facts`.
    public static func classify(_ mechanism: Mechanism, _ error: KernelError, facts: KernelFacts) -> Verdict {
        let code = error.errno
        let detail = error.detail.isEmpty ? "" : " (\(error.detail))"
        if let code, code.isResourceExhaustion {
            let what = code == .ENOMEM ? "memory (or locked-memory limit) for BPF objects" : "file descriptors (\(code == .EMFILE ? "its own RLIMIT_NOFILE" : "the system-wide limit"))"
            return Verdict(status: .error, message: "the agent ran out of \(what) while trying \(mechanism.rawValue); this says nothing about the kernel's support, and retrying later can work\(detail)")
        }
        switch error.stage {
        case .open:
            return Verdict(status: .error, message: "could not open the embedded BPF object\(detail)")
        case .read:
            return Verdict(status: .error, message: "could not read the probe's counter map\(detail)")
        case .load:
            return classifyLoad(mechanism, code, detail: detail, facts: facts)
        case .attach:
            return classifyAttach(mechanism, code, detail: detail, facts: facts)
        }
    }

    static func classifyLoad(_ mechanism: Mechanism, _ code: Errno?, detail: String, facts: KernelFacts) -> Verdict {
        switch code {
        case .EPERM?, .EACCES?:
            if !facts.privileged {
                return Verdict(status: .denied, message: "the agent lacks privileges: loading BPF tracing programs needs root or CAP_BPF with CAP_PERFMON")
            }
            if let lockdown = facts.lockdown, lockdown == "confidentiality" {
                return Verdict(status: .denied, message: "kernel lockdown (confidentiality) forbids BPF programs that read kernel memory")
            }
            // The verifier ran and said no: this kernel cannot check this program (what it
            // reads, how), which says nothing about permissions.
            if code == .EACCES, detail.contains("verifier: ") {
                return Verdict(status: .unsupported, message: "this kernel's verifier refused the program\(detail)")
            }
            switch mechanism {
            case .fentry, .fexit:
                return Verdict(status: .denied, message: "function tracing denied by the kernel: fentry/fexit trampolines are not allowed here (ftrace direct calls refused, or an LSM denies them)")
            default:
                return Verdict(status: .denied, message: "the kernel denied loading this program type although the agent is privileged (an LSM or a sysctl forbids it)")
            }
        case .ESRCH?, .ENOENT?:
            switch mechanism {
            case .fentry, .fexit:
                return Verdict(status: .unsupported, message: "the function is not in the kernel's BTF (missing, inlined or static without BTF), so fentry/fexit cannot bind to it\(detail)")
            case .tpBTF:
                return Verdict(status: .unsupported, message: "the tracepoint is not in the kernel's BTF (no btf_trace_ type), so tp_btf cannot bind to it\(detail)")
            default:
                return Verdict(status: .unsupported, message: "the kernel lacks something the program needs\(detail)")
            }
        case .EINVAL?, .E2BIG?, .EOPNOTSUPP?, .ENOTSUPP?:
            return Verdict(status: .unsupported, message: "the kernel rejected the program: this program or attach type is not supported\(detail)")
        default:
            return Verdict(status: .error, message: "loading failed unexpectedly\(detail)")
        }
    }

    static func classifyAttach(_ mechanism: Mechanism, _ code: Errno?, detail: String, facts: KernelFacts) -> Verdict {
        if code == .EPERM || code == .EACCES {
            return Verdict(status: .denied, message: "the kernel denied attaching\(facts.privileged ? "" : ": the agent lacks privileges (root or CAP_PERFMON)")\(detail)")
        }
        if code == .EBUSY {
            return Verdict(status: .error, message: "the target is busy: another tracer holds it exclusively\(detail)")
        }
        switch mechanism {
        case .kprobe, .kretprobe:
            if !facts.eventSources.contains("kprobe") && !facts.kprobeEvents {
                return Verdict(status: .unsupported, message: "kprobes are not available: no kprobe PMU in /sys/bus/event_source/devices and no kprobe_events in tracefs (kernel built without CONFIG_KPROBES)")
            }
            if code == .ENOENT || code == .EINVAL {
                return Verdict(status: .unsupported, message: "the function cannot be kprobed: not found, inlined, or marked notrace/nokprobe\(detail)")
            }
        case .kprobeMulti:
            if code == .EOPNOTSUPP || code == .ENOTSUPP || code == .EINVAL || code == .ENOENT || code == .ESRCH {
                return Verdict(status: .unsupported, message: "kprobe_multi links are not supported by this kernel (they need fprobe support, CONFIG_FPROBE)\(detail)")
            }
        case .tracepoint:
            if code == .E2BIG {
                return Verdict(status: .unsupported, message: "the tracepoint already holds the kernel's maximum of 64 BPF programs (BPF_TRACE_MAX_PROGS)")
            }
            if code == .ENOENT {
                return Verdict(status: .unsupported, message: facts.tracefs.mounted
                    ? "the tracepoint does not exist in tracefs (kernel built without it)\(detail)"
                    : "tracefs is not mounted, so tracepoint ids cannot be read: \(facts.tracefs.error ?? "unknown reason")")
            }
        case .rawTracepoint:
            if code == .ENOENT {
                return Verdict(status: .unsupported, message: "the raw tracepoint does not exist in this kernel\(detail)")
            }
        case .uprobe, .uretprobe:
            if !facts.eventSources.contains("uprobe") {
                return Verdict(status: .unsupported, message: "uprobes are not available: no uprobe PMU in /sys/bus/event_source/devices (kernel built without CONFIG_UPROBE_EVENTS)")
            }
            if code == .ENOENT {
                return Verdict(status: .unsupported, message: "the binary or symbol was not found\(detail)")
            }
        case .fentry, .fexit, .tpBTF:
            if code == .EOPNOTSUPP || code == .ENOTSUPP || code == .EINVAL {
                return Verdict(status: .unsupported, message: "the kernel cannot attach this BPF trampoline\(detail)")
            }
        case .perfEvent:
            if code == .ENOENT || code == .ENODEV || code == .EOPNOTSUPP {
                return Verdict(status: .unsupported, message: "software perf events are not available\(detail)")
            }
        }
        if code == .EOPNOTSUPP || code == .ENOTSUPP {
            return Verdict(status: .unsupported, message: "the kernel does not support this attachment\(detail)")
        }
        return Verdict(status: .error, message: "attaching failed unexpectedly\(detail)")
    }

    /// A program that attached but never ran when its event was made to happen.
    public static func neverFired(_ mechanism: Mechanism) -> Verdict {
        Verdict(status: .unsupported, message: "attached, but the program never ran when the event was triggered (the kernel accepts the attachment but does not deliver the event)")
    }
}
