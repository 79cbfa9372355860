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

    /// How each mechanism is exercised: its program in `bpf/capability.bpf.c`, where it
    /// attaches (a target that is always there) and what fires it from this process.
    struct Plan {
        var program: BPFProgramID
        var loadTimeTarget: String?
        var point: AttachPoint
        var trigger: Trigger
    }

    static func plan(_ mechanism: Mechanism, facts: KernelFacts, executable: String) -> Plan {
        let entry = "\(facts.syscallPrefix ?? "")sys_getpgid"
        let pid = getpid()
        let p = CapabilityBPF.Programs.self
        switch mechanism {
        case .fentry:
            return Plan(program: p.capFentry, loadTimeTarget: entry, point: .loadTimeTarget, trigger: .getpgid)
        case .fexit:
            return Plan(program: p.capFexit, loadTimeTarget: entry, point: .loadTimeTarget, trigger: .getpgid)
        case .kprobe:
            return Plan(program: p.capKprobe, point: .kprobe(function: entry, retprobe: false), trigger: .getpgid)
        case .kretprobe:
            return Plan(program: p.capKretprobe, point: .kprobe(function: entry, retprobe: true), trigger: .getpgid)
        case .kprobeMulti:
            return Plan(program: p.capKprobeMulti, point: .kprobeMulti(pattern: entry, retprobe: false), trigger: .getpgid)
        case .tracepoint:
            return Plan(program: p.capTracepoint, point: .tracepoint(category: "syscalls", name: "sys_enter_getpgid"), trigger: .getpgid)
        case .rawTracepoint:
            return Plan(program: p.capRawTracepoint, point: .rawTracepoint(name: "sys_enter"), trigger: .getpgid)
        case .tpBTF:
            return Plan(program: p.capTpBtf, loadTimeTarget: "sys_enter", point: .loadTimeTarget, trigger: .getpgid)
        case .uprobe:
            return Plan(program: p.capUprobe, point: .uprobe(binary: executable, symbol: "traceplane_uprobe_target", pid: pid, retprobe: false),
                        trigger: .uprobeTarget)
        case .uretprobe:
            return Plan(program: p.capUretprobe, point: .uprobe(binary: executable, symbol: "traceplane_uprobe_target", pid: pid, retprobe: true),
                        trigger: .uprobeTarget)
        case .perfEvent:
            return Plan(program: p.capPerfEvent, point: .cpuClock(periodNanoseconds: 100_000), trigger: .spin(milliseconds: 3))
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
            chains: FlavourCatalog.reportChains(mechanismResults))
    }

    /// Loads, attaches and fires the minimal program for `mechanism`.
    public func probe(_ mechanism: Mechanism, facts: KernelFacts, executable: String) -> CapabilityResult {
        if disabled.contains(mechanism) {
            return CapabilityResult(.mechanism(mechanism), status: .unsupported, stage: nil, errno: nil,
                                    message: "disabled by configuration (--disable-mechanism \(mechanism.rawValue))",
                                    durationMicroseconds: 0, disabled: true)
        }
        let started = ContinuousClock.now
        let plan = Self.plan(mechanism, facts: facts, executable: executable)
        let program = plan.program
        func result(_ status: CapabilityStatus, _ stage: KernelStage?, _ errno: Errno?, _ message: String) -> CapabilityResult {
            CapabilityResult(.mechanism(mechanism), status: status, stage: stage, errno: errno, message: message,
                             durationMicroseconds: Self.microseconds(since: started))
        }
        var spec = LoadSpec(object: CapabilityBPF.object, programs: [.init(program, loadTimeTarget: plan.loadTimeTarget)])
        spec.set(CapabilityBPF.Globals.targetTgid, UInt32(getpid()))
        let object: any LoadedObject
        do {
            object = try backend.load(spec)
        } catch {
            let verdict = Classifier.classify(mechanism, error, facts: facts)
            return result(verdict.status, error.stage == .open ? .load : error.stage, error.errno, verdict.message)
        }
        let link: any AttachedLink
        do {
            link = try object.attach(program: program, to: plan.point)
        } catch {
            reaper.dispose(links: [], objects: [object])
            let verdict = Classifier.classify(mechanism, error, facts: facts)
            return result(verdict.status, .attach, error.errno, verdict.message)
        }
        defer { reaper.dispose(links: [link], objects: [object]) }
        var fired: UInt64 = 0
        for attempt in 0..<5 where fired == 0 {
            // A CPU-time trigger doubles each time (3 ms up to 48 ms of this thread's CPU):
            // under software emulation (QEMU TCG) a 100 µs cpu-clock may not expire in 3 ms
            // three times running, which once reported perf_event unsupported there.
            if case .spin(let milliseconds) = plan.trigger {
                backend.fire(.spin(milliseconds: milliseconds << attempt))
            } else if attempt < 3 {
                backend.fire(plan.trigger)
            } else {
                break
            }
            do {
                fired = try Self.hits(object)
            } catch {
                let verdict = Classifier.classify(mechanism, error, facts: facts)
                return result(verdict.status, .attach, error.errno, verdict.message)
            }
        }
        if fired == 0 {
            return result(.unsupported, .attach, nil, Classifier.neverFired(mechanism).message)
        }
        return result(.supported, .attach, nil, "loaded, attached and fired")
    }

    static func hits(_ object: any LoadedObject) throws(KernelError) -> UInt64 {
        let entries = try object.readMap(CapabilityBPF.Maps.hits)
        return entries.reduce(0) { sum, entry in entry.values.reduce(sum) { $0 + $1.load(as: UInt64.self) } }
    }

    static func microseconds(since started: ContinuousClock.Instant) -> Int {
        let elapsed = ContinuousClock.now - started
        return Int(elapsed.components.seconds) * 1_000_000 + Int(elapsed.components.attoseconds / 1_000_000_000_000)
    }

    /// Checks one kernel feature.
    public func check(_ feature: Feature, facts: KernelFacts) -> CapabilityResult {
        let started = ContinuousClock.now
        let outcome: Result<Void, KernelError>
        if feature == .bpfKfuncCalls {
            do {
                let object = try backend.load(LoadSpec(object: FeaturesBPF.object, programs: [.init(FeaturesBPF.Programs.featKfuncCalls)]))
                reaper.dispose(links: [], objects: [object])
                outcome = .success(())
            } catch {
                outcome = .failure(error)
            }
        } else {
            outcome = backend.host.check(feature, facts: facts)
        }
        let micros = Self.microseconds(since: started)
        switch outcome {
        case .success:
            return CapabilityResult(.feature(feature), status: .supported, stage: .load, errno: nil,
                                    message: Self.supportedMessage(feature), durationMicroseconds: micros)
        case .failure(let error):
            let denied = error.errno == .EPERM || error.errno == .EACCES
            let unsupported: Set<Errno> = [.EINVAL, .ENOENT, .EOPNOTSUPP, .ESRCH, .E2BIG, .ENOTSUPP]
            let status: CapabilityStatus = denied ? .denied : (error.errno.map(unsupported.contains) == true ? .unsupported : .error)
            return CapabilityResult(.feature(feature), status: status, stage: error.stage, errno: error.errno,
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
        case .cgroupAncestor: "a tracepoint program calling bpf_get_current_ancestor_cgroup_id loaded: cgroup filters compare the task's ancestor id"
        }
    }

    static func failureMessage(_ feature: Feature, _ error: KernelError, denied: Bool) -> String {
        if denied { return "\(error.operation) was denied by the kernel" }
        switch feature {
        case .vmlinuxBTF: return "no usable vmlinux BTF (/sys/kernel/btf/vmlinux missing or unreadable): kernel built without CONFIG_DEBUG_INFO_BTF"
        case .taskStorage: return "task storage maps are not supported: entry timestamps fall back to a hash keyed by thread id"
        case .cgroupAncestor: return "tracing programs cannot call bpf_get_current_ancestor_cgroup_id here: cgroup filters use bpf_current_task_under_cgroup with a cgroup array"
        case .bpfKfuncCalls: return "the kernel rejected a program calling bpf_rcu_read_lock: BPF kfunc calls are not available here\(error.detail.isEmpty ? "" : " (\(error.detail))")"
        default: return "\(error.operation) failed: \(error.errno?.name ?? "no errno")"
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
