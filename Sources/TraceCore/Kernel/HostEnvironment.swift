import CLibBPF
import Foundation
import Glibc

/// Facts about the host and feature checks that need no BPF object of ours.
public protocol HostEnvironment: Sendable {
    /// Reads the kernel facts. Mounts tracefs and bpffs first when they are missing and
    /// mounting is allowed; records why when it cannot.
    func inspect() -> KernelFacts

    /// Checks one feature by asking the kernel (creating a map, loading a helper call,
    /// creating a link, enabling stats). `Feature.bpfKfuncCalls` is checked by the prober
    /// with a real program instead.
    func check(_ feature: Feature, facts: KernelFacts) -> Result<Void, KernelError>

    /// The absolute path of the running executable (uprobe target for self-tests).
    var executablePath: String { get }

    /// What `target` offers to keys and values (argument names, tracepoint fields); nil
    /// when the target does not exist (a tracepoint without a format).
    func schema(for target: ProbeTarget) -> TargetSchema?

    /// The cgroup a filter names, found under the cgroup2 mount `fact` describes.
    func matchCgroup(_ selector: CgroupSelector, fact: Cgroup2Fact) -> Result<CgroupMatch, CgroupLookupError>

    /// `facts` (the capability report's, read at its probe) with the tracefs and cgroup2
    /// mounts checked again now: one that went away since is reported missing, with why.
    /// The planner asks before each attach, so an attempt never blames the kernel for an
    /// unmounted file system.
    func current(_ facts: KernelFacts) -> KernelFacts
}

extension HostEnvironment {
    public func current(_ facts: KernelFacts) -> KernelFacts { facts }
}

/// The real Linux host.
public struct LinuxHost: HostEnvironment {
    public var mountMissing: Bool

    public init(mountMissing: Bool = true) {
        self.mountMissing = mountMissing
    }

    static let tracefsMagic = 0x7472_6163
    static let bpffsMagic = 0xCAFE_4A11
    static let securityfsMagic = 0x7363_6673

    /// Schemas of the real kernel, cached for the process (they do not change while it runs).
    static let schemas = TargetSchemaReader()

    public func schema(for target: ProbeTarget) -> TargetSchema? { Self.schemas.schema(for: target) }

    public func matchCgroup(_ selector: CgroupSelector, fact: Cgroup2Fact) -> Result<CgroupMatch, CgroupLookupError> {
        CgroupPaths.shared.match(selector, fact: fact)
    }

    public func current(_ facts: KernelFacts) -> KernelFacts {
        var facts = facts
        let tracefs = facts.tracefs.path
        if facts.tracefs.mounted, Self.fsMagic(tracefs) != Self.tracefsMagic {
            facts.tracefs = MountFact(path: tracefs, mounted: false, mountedByAgent: false,
                                      error: "nothing is mounted at \(tracefs) any more (tracefs was when capabilities were probed); POST /v1/capabilities/refresh mounts it again")
        }
        if facts.cgroup2.layout != .none, let path = facts.cgroup2.path, Self.fsMagic(path) != Cgroup2Fact.superMagic {
            facts.cgroup2 = .absent("cgroup2 is not mounted at \(path) any more (it was when capabilities were probed); mount it there again")
        }
        return facts
    }

    public var executablePath: String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? "/proc/self/exe"
    }

    public func inspect() -> KernelFacts {
        var name = utsname()
        uname(&name)
        let release = withUnsafeBytes(of: &name.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        let machine = withUnsafeBytes(of: &name.machine) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        let tracefs = ensureMounted(path: "/sys/kernel/tracing", type: "tracefs", source: "tracefs", magic: Self.tracefsMagic, options: nil)
        let bpffs = ensureMounted(path: "/sys/fs/bpf", type: "bpf", source: "bpf", magic: Self.bpffsMagic, options: "mode=0700")
        var prefixBuffer = [CChar](repeating: 0, count: 32)
        let btfResult = tp_vmlinux_btf_syscall_prefix(&prefixBuffer, prefixBuffer.count)
        var prefix: String? = btfResult == 1 ? String(decoding: prefixBuffer.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self) : nil
        if prefix == nil { prefix = Self.syscallPrefixFromKallsyms() }
        let sources = (try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/event_source/devices"))?.sorted() ?? []
        let kprobeEvents = tracefs.mounted && access("\(tracefs.path)/kprobe_events", F_OK) == 0
        return KernelFacts(
            release: release, machine: machine, btf: btfResult >= 0, lockdown: lockdownMode(), jit: jitMode(),
            tracefs: tracefs, bpffs: bpffs, syscallPrefix: prefix, eventSources: sources,
            kprobeEvents: kprobeEvents, privileged: geteuid() == 0, cgroup2: Cgroup2Fact.inspect(),
            taskLayout: VmlinuxBTF.read().flatMap(TaskLayout.init(btf:)))
    }

    func ensureMounted(path: String, type: String, source: String, magic: Int, options: String?) -> MountFact {
        if Self.fsMagic(path) == magic { return MountFact(path: path, mounted: true, mountedByAgent: false) }
        guard mountMissing else {
            return MountFact(path: path, mounted: false, mountedByAgent: false, error: "\(type) is not mounted at \(path) and mounting is disabled")
        }
        if access(path, F_OK) != 0 {
            return MountFact(path: path, mounted: false, mountedByAgent: false, error: "\(path) does not exist (kernel without \(type) support?)")
        }
        if mount(source, path, type, 0, options) != 0 {
            let code = errno
            let why: String
            switch code {
            case EPERM: why = "mounting \(type) at \(path) was refused (EPERM): the agent needs CAP_SYS_ADMIN in the initial mount namespace"
            case ENODEV: why = "the kernel has no \(type) file system (ENODEV)"
            default: why = "mounting \(type) at \(path) failed: \(Errno(rawValue: code).name) (\(Errno(rawValue: code).message))"
            }
            return MountFact(path: path, mounted: false, mountedByAgent: false, error: why)
        }
        return MountFact(path: path, mounted: true, mountedByAgent: true)
    }

    static func fsMagic(_ path: String) -> Int? {
        var magic: Int = 0
        guard tp_fs_magic(path, &magic) == 0 else { return nil }
        return magic
    }

    func lockdownMode() -> String? {
        let path = "/sys/kernel/security/lockdown"
        if access(path, R_OK) != 0, Self.fsMagic("/sys/kernel/security") != Self.securityfsMagic, mountMissing {
            _ = mount("securityfs", "/sys/kernel/security", "securityfs", 0, nil)
        }
        guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
            // No LSM lockdown file: the lockdown LSM is not built in, so nothing is locked down.
            return access("/sys/kernel/security", F_OK) == 0 && Self.fsMagic("/sys/kernel/security") == Self.securityfsMagic ? "none" : nil
        }
        // "[none] integrity confidentiality": the bracketed word is the active mode.
        guard let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]"), open < close else { return nil }
        return String(text[text.index(after: open)..<close])
    }

    func jitMode() -> String? {
        guard let text = try? String(contentsOfFile: "/proc/sys/net/core/bpf_jit_enable", encoding: .utf8) else { return nil }
        switch text.trimmingCharacters(in: .whitespacesAndNewlines) {
        case "0": return "disabled"
        case "1": return "enabled"
        case "2": return "enabled-debug"
        default: return nil
        }
    }

    /// Finds the syscall wrapper prefix in /proc/kallsyms (used when BTF is missing).
    static func syscallPrefixFromKallsyms() -> String? {
        guard let file = fopen("/proc/kallsyms", "r") else { return nil }
        defer { fclose(file) }
        var found = Set<String>()
        var line = [CChar](repeating: 0, count: 512)
        while fgets(&line, Int32(line.count), file) != nil {
            let text = String(decoding: line.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
            guard text.hasSuffix("sys_getpgid\n") || text.contains("sys_getpgid\t") else { continue }
            guard let symbol = text.split(whereSeparator: { $0 == " " || $0 == "\t" || $0 == "\n" }).dropFirst(2).first,
                  symbol.hasSuffix("sys_getpgid") else { continue }
            found.insert(String(symbol.dropLast("sys_getpgid".count)))
        }
        return ["__x64_", "__arm64_", "__s390x_", "__riscv_", ""].first(where: found.contains)
    }

    public func check(_ feature: Feature, facts: KernelFacts) -> Result<Void, KernelError> {
        func probe(_ rc: Int32, _ what: String) -> Result<Void, KernelError> {
            if rc == 1 { return .success(()) }
            return .failure(KernelError(stage: .load, code: rc < 0 ? -rc : EINVAL, operation: what))
        }
        switch feature {
        case .vmlinuxBTF:
            return facts.btf ? .success(()) : .failure(KernelError(stage: .load, errno: .ENOENT, operation: "load /sys/kernel/btf/vmlinux"))
        case .ringBuffer:
            return probe(tp_probe_map_type(Int32(TP_MAP_TYPE_RINGBUF)), "create a ring buffer map")
        case .taskStorage:
            return probe(tp_probe_map_type(Int32(TP_MAP_TYPE_TASK_STORAGE)), "create a task storage map")
        case .bpfCookie:
            return probe(tp_probe_helper(Int32(TP_PROG_TYPE_TRACEPOINT), Int32(TP_FUNC_GET_ATTACH_COOKIE)), "load a program calling bpf_get_attach_cookie")
        case .bpfLink:
            var stage: Int32 = 0
            let rc = tp_probe_perf_link(&stage)
            if rc == 0 { return .success(()) }
            return .failure(KernelError(stage: stage == 0 ? .load : .attach, code: -rc, operation: "create a BPF link (BPF_LINK_CREATE) for a perf event"))
        case .bpfStats:
            let fd = tp_enable_runtime_stats()
            if fd >= 0 {
                Glibc.close(fd)
                return .success(())
            }
            return .failure(KernelError(stage: .load, code: -fd, operation: "enable BPF run-time stats (BPF_ENABLE_STATS)"))
        case .cgroupAncestor:
            return probe(tp_probe_helper(Int32(TP_PROG_TYPE_TRACEPOINT), Int32(TP_FUNC_GET_CURRENT_ANCESTOR_CGROUP_ID)),
                         "load a tracepoint program calling bpf_get_current_ancestor_cgroup_id")
        case .bpfKfuncCalls:
            preconditionFailure("bpf_kfunc_calls is checked by the prober with a real program, not by the host.")
        }
    }
}
