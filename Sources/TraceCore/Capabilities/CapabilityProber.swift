import Dispatch
import Foundation
import Glibc
import Synchronization

/// Establishes what this kernel supports by loading, attaching and firing a minimal real
/// BPF program per mechanism. Never looks at the kernel version.
public struct CapabilityProber: Sendable {
    public let backend: any KernelBackend
    /// Mechanisms the operator switched off: reported as disabled, never probed.
    public let disabled: Set<Mechanism>
    public let reaper: Reaper

    public init(backend: any KernelBackend, disabled: Set<Mechanism> = [], reaper: Reaper = .shared) {
        self.backend = backend
        self.disabled = disabled
        self.reaper = reaper
    }

    /// The programs in `bpf/capability.bpf.c`, by mechanism.
    static func programName(_ mechanism: Mechanism) -> String {
        "cap_\(mechanism.rawValue)"
    }

    /// How each mechanism is exercised: where it attaches and what fires it.
    struct Plan {
        var loadTimeTarget: String?
        var point: AttachPoint
        var trigger: Trigger
    }

    static func plan(_ mechanism: Mechanism, facts: KernelFacts, executable: String) -> Plan {
        let entry = "\(facts.syscallPrefix ?? "")sys_getpgid"
        let pid = getpid()
        switch mechanism {
        case .fentry, .fexit:
            return Plan(loadTimeTarget: entry, point: .loadTimeTarget, trigger: .getpgid)
        case .kprobe:
            return Plan(point: .kprobe(function: entry, retprobe: false), trigger: .getpgid)
        case .kretprobe:
            return Plan(point: .kprobe(function: entry, retprobe: true), trigger: .getpgid)
        case .kprobeMulti:
            return Plan(point: .kprobeMulti(pattern: entry, retprobe: false), trigger: .getpgid)
        case .tracepoint:
            return Plan(point: .tracepoint(category: "syscalls", name: "sys_enter_getpgid"), trigger: .getpgid)
        case .rawTracepoint:
            return Plan(point: .rawTracepoint(name: "sys_enter"), trigger: .getpgid)
        case .tpBTF:
            return Plan(loadTimeTarget: "sys_enter", point: .loadTimeTarget, trigger: .getpgid)
        case .uprobe:
            return Plan(point: .uprobe(binary: executable, symbol: "traceplane_uprobe_target", pid: pid, retprobe: false), trigger: .uprobeTarget)
        case .uretprobe:
            return Plan(point: .uprobe(binary: executable, symbol: "traceplane_uprobe_target", pid: pid, retprobe: true), trigger: .uprobeTarget)
        case .perfEvent:
            return Plan(point: .cpuClock(periodNanoseconds: 100_000), trigger: .spin(milliseconds: 3))
        }
    }

    /// Probes every mechanism and feature and returns the report.
    public func probe() -> CapabilityReport {
        let started = ContinuousClock.now
        let probedAt = Date()
        let facts = backend.host.inspect()
        let executable = backend.host.executablePath
        let mechanisms = Mechanism.allCases
        let features = Feature.allCases
        // Each check is synchronous on its own thread (a perf event follows the thread
        // that opened it), so run them side by side on the available cores.
        let results = ResultSlots(count: mechanisms.count + features.count)
        DispatchQueue.concurrentPerform(iterations: mechanisms.count + features.count) { index in
            if index < mechanisms.count {
                results.set(index, probe(mechanisms[index], facts: facts, executable: executable))
            } else {
                results.set(index, check(features[index - mechanisms.count], facts: facts))
            }
        }
        let all = results.values
        let mechanismResults = Array(all[..<mechanisms.count])
        let elapsed = ContinuousClock.now - started
        return CapabilityReport(
            probedAt: probedAt,
            durationMilliseconds: Double(elapsed.components.seconds) * 1000 + Double(elapsed.components.attoseconds) / 1e15,
            kernel: facts,
            mechanisms: mechanismResults,
            features: Array(all[mechanisms.count...]),
            chains: Flavour.reportChains(mechanismResults))
    }

    /// Loads, attaches and fires the minimal program for `mechanism`.
    public func probe(_ mechanism: Mechanism, facts: KernelFacts, executable: String) -> CapabilityResult {
        let aliases = mechanism.aliases.isEmpty ? nil : mechanism.aliases
        if disabled.contains(mechanism) {
            return CapabilityResult(name: mechanism.rawValue, aliases: aliases, status: .unsupported, stage: nil, errno: nil,
                                    message: "disabled by configuration (--disable-mechanism \(mechanism.rawValue))",
                                    durationMicroseconds: 0, disabled: true)
        }
        let started = ContinuousClock.now
        let plan = Self.plan(mechanism, facts: facts, executable: executable)
        let program = Self.programName(mechanism)
        func result(_ status: CapabilityStatus, _ stage: KernelError.Stage?, _ errno: String?, _ message: String) -> CapabilityResult {
            let elapsed = ContinuousClock.now - started
            let micros = Int(elapsed.components.seconds) * 1_000_000 + Int(elapsed.components.attoseconds / 1_000_000_000_000)
            return CapabilityResult(name: mechanism.rawValue, aliases: aliases, status: status, stage: stage?.rawValue,
                                    errno: errno, message: message, durationMicroseconds: micros)
        }
        let spec = LoadSpec(
            object: "capability",
            programs: [.init(program, loadTimeTarget: plan.loadTimeTarget)],
            readOnly: ["target_tgid": withUnsafeBytes(of: UInt32(getpid()).littleEndian, Array.init)])
        let object: any LoadedObject
        do {
            object = try backend.load(spec)
        } catch {
            let verdict = Classifier.classify(mechanism, error, facts: facts)
            return result(verdict.status, error.stage == .open ? .load : error.stage, error.errnoName, verdict.message)
        }
        let link: any AttachedLink
        do {
            link = try object.attach(program: program, to: plan.point)
        } catch {
            reaper.dispose(links: [], objects: [object])
            let verdict = Classifier.classify(mechanism, error, facts: facts)
            return result(verdict.status, .attach, error.errnoName, verdict.message)
        }
        defer { reaper.dispose(links: [link], objects: [object]) }
        var fired: UInt64 = 0
        for _ in 0..<3 where fired == 0 {
            backend.fire(plan.trigger)
            do {
                fired = try Self.hits(object)
            } catch {
                let verdict = Classifier.classify(mechanism, error, facts: facts)
                return result(verdict.status, .attach, error.errnoName, verdict.message)
            }
        }
        if fired == 0 {
            return result(.unsupported, .attach, nil, Classifier.neverFired(mechanism).message)
        }
        return result(.supported, .attach, nil, "loaded, attached and fired")
    }

    static func hits(_ object: any LoadedObject) throws(KernelError) -> UInt64 {
        let entries = try object.readMap("hits")
        return entries.reduce(0) { sum, entry in
            entry.values.reduce(sum) { $0 + $1.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } }
        }
    }

    /// Checks one kernel feature.
    public func check(_ feature: Feature, facts: KernelFacts) -> CapabilityResult {
        let started = ContinuousClock.now
        let outcome: Result<Void, KernelError>
        if feature == .bpfKfuncCalls {
            do {
                let object = try backend.load(LoadSpec(object: "kfunc", programs: [.init("kfunc_probe")]))
                reaper.dispose(links: [], objects: [object])
                outcome = .success(())
            } catch {
                outcome = .failure(error)
            }
        } else {
            outcome = backend.host.check(feature, facts: facts)
        }
        let elapsed = ContinuousClock.now - started
        let micros = Int(elapsed.components.seconds) * 1_000_000 + Int(elapsed.components.attoseconds / 1_000_000_000_000)
        switch outcome {
        case .success:
            return CapabilityResult(name: feature.rawValue, status: .supported, stage: "load", errno: nil,
                                    message: Self.supportedMessage(feature), durationMicroseconds: micros)
        case .failure(let error):
            let denied = error.errno == EPERM || error.errno == EACCES
            let status: CapabilityStatus = denied ? .denied : ([EINVAL, ENOENT, EOPNOTSUPP, ESRCH, E2BIG, 524].contains(error.errno) ? .unsupported : .error)
            return CapabilityResult(name: feature.rawValue, status: status, stage: error.stage.rawValue, errno: error.errnoName,
                                    message: Self.failureMessage(feature, error, denied: denied), durationMicroseconds: micros)
        }
    }

    static func supportedMessage(_ feature: Feature) -> String {
        switch feature {
        case .vmlinuxBTF: "/sys/kernel/btf/vmlinux loads: CO-RE and BTF-typed programs can be used"
        case .ringBuffer: "a BPF ring buffer map was created"
        case .taskStorage: "a task storage map was created: entry timestamps live in task-local storage"
        case .bpfCookie: "a program calling bpf_get_attach_cookie loaded"
        case .bpfLink: "a BPF link was created for a perf event (BPF_LINK_CREATE)"
        case .bpfStats: "BPF run-time stats can be enabled for the agent's lifetime"
        case .bpfKfuncCalls: "a program calling the kfuncs bpf_rcu_read_lock/unlock loaded"
        }
    }

    static func failureMessage(_ feature: Feature, _ error: KernelError, denied: Bool) -> String {
        if denied { return "\(error.operation) was denied by the kernel" }
        switch feature {
        case .vmlinuxBTF: return "no usable vmlinux BTF (/sys/kernel/btf/vmlinux missing or unreadable): kernel built without CONFIG_DEBUG_INFO_BTF"
        case .taskStorage: return "task storage maps are not supported: entry timestamps fall back to a hash keyed by thread id"
        case .bpfKfuncCalls: return "the kernel rejected a program calling bpf_rcu_read_lock: BPF kfunc calls are not available here\(error.detail.isEmpty ? "" : " (\(error.detail))")"
        default: return "\(error.operation) failed: \(error.errnoName ?? "no errno")"
        }
    }
}

/// Fixed slots written from concurrent threads, read after they all finished.
final class ResultSlots: Sendable {
    private let slots: Mutex<[CapabilityResult?]>
    init(count: Int) { slots = Mutex(Array(repeating: nil, count: count)) }
    func set(_ index: Int, _ value: CapabilityResult) { slots.withLock { $0[index] = value } }
    var values: [CapabilityResult] { slots.withLock { $0.map { $0! } } }
}
