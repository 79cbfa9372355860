import CLibBPF
import Foundation
import Glibc
import TraceCore

// MARK: - Checks

/// What a check counts: an exact number of calls (with a latency sample each unless the
/// target is a tracepoint), or at least some number of events.
enum Expectation: Sendable {
    case exact(Int)
    case atLeast(Int)
}

struct CheckPlan: Sendable {
    var name: String
    var target: ProbeTarget
    var flavours: [Flavour]?
    var events: Int
    var expectation: Expectation
    /// Makes one traced event happen in this process.
    var trigger: @Sendable () -> Void
    /// Keyed checks: the spec's aggregate (the probe then also filters on the caller
    /// thread's name, so only the workload counts), and every key expected, by its parts
    /// joined with ", ", with its calls and the lower bound of its one value bucket.
    var aggregate: AggregateSpec? = nil
    var keys: [String: KeyExpectation] = [:]
    /// Stack-keyed checks: the frames every counted call's stack shows (in place of `keys`).
    var stacks: StackExpectation? = nil
    /// Event checks: the spec's `events`; every counted call must then also arrive as one
    /// event from this process's calling thread (and be counted as emitted, none lost).
    var streamed: EventsSpec? = nil
    /// Budget checks: the spec's budget (one that never acts at the check's rate); every
    /// call must then be seen and recorded, none estimated.
    var budget: BudgetSpec? = nil
}

struct KeyExpectation: Sendable, Hashable {
    var calls: UInt64
    var bucketLower: Int64
}

struct SelfTestRunner: Sendable {
    let manager: ProbeManager
    let report: CapabilityReport
    let symbols: KernelSymbols
    let calls: Int
    let executable: String
    /// The core's reaper: checks that count kernel resources after a delete wait for it.
    let reaper: Reaper
    let pid = Int(getpid())

    var prefix: String { report.kernel.syscallPrefix ?? "" }

    static func log(_ line: String) {
        FileHandle.standardError.write(Data((line + "\n").utf8))
    }

    func runAll() async -> ([CheckResult], FallbackSearch) {
        var results: [CheckResult] = []
        let n = calls
        let getppidCall: @Sendable () -> Void = { _ = getppid() }
        let getpgidCall: @Sendable () -> Void = { _ = getpgid(0) }
        let sleepCall: @Sendable () -> Void = { _ = usleep(1000) }

        let getppidTarget = ProbeTarget(type: .syscall, name: "getppid")
        results.append(await run(CheckPlan(name: "syscall getppid, default chain", target: getppidTarget, flavours: nil,
                                           events: n, expectation: .exact(n), trigger: getppidCall)))
        for flavour in FlavourCatalog.chain(for: .syscall).map(\.flavour) {
            results.append(await run(CheckPlan(name: "syscall getppid, mechanisms [\(flavour.rawValue)]", target: getppidTarget,
                                               flavours: [flavour], events: n, expectation: .exact(n), trigger: getppidCall)))
        }
        // getppid's kernel entry may be absent from BTF (see the fallback search): getpgid
        // takes an argument, so its entry is a real function with BTF on every kernel seen.
        let getpgidTarget = ProbeTarget(type: .syscall, name: "getpgid")
        results.append(await run(CheckPlan(name: "syscall getpgid, default chain", target: getpgidTarget, flavours: nil,
                                           events: n, expectation: .exact(n), trigger: getpgidCall)))
        results.append(await run(CheckPlan(name: "syscall getpgid, mechanisms [fentry]", target: getpgidTarget, flavours: [.fentry],
                                           events: n, expectation: .exact(n), trigger: getpgidCall)))

        let (fallbackCheck, search) = await fallbackSearch()
        results.append(fallbackCheck)
        let entry = ProbeTarget(type: .function, name: "\(prefix)sys_getpgid")
        results.append(await run(CheckPlan(name: "function \(prefix)sys_getpgid, default chain", target: entry, flavours: nil,
                                           events: n, expectation: .exact(n), trigger: getpgidCall)))
        results.append(await run(CheckPlan(name: "function \(prefix)sys_getpgid, mechanisms [kprobe]", target: entry,
                                           flavours: [.kprobe], events: n, expectation: .exact(n), trigger: getpgidCall)))

        // Each 1 ms sleep blocks, so this process is switched out at least once per sleep.
        let sleeps = 20
        let switchTP = ProbeTarget(type: .tracepoint, name: "sched:sched_switch")
        results.append(await run(CheckPlan(name: "tracepoint sched:sched_switch, default chain", target: switchTP, flavours: nil,
                                           events: sleeps, expectation: .atLeast(sleeps), trigger: sleepCall)))
        for flavour in FlavourCatalog.chain(for: .tracepoint).map(\.flavour) {
            results.append(await run(CheckPlan(name: "tracepoint sched:sched_switch, mechanisms [\(flavour.rawValue)]",
                                               target: switchTP, flavours: [flavour], events: sleeps,
                                               expectation: .atLeast(sleeps), trigger: sleepCall)))
        }

        let uprobe = ProbeTarget(type: .uprobe, path: executable, symbol: "traceplane_uprobe_target")
        results.append(await run(CheckPlan(name: "uprobe traceplane_uprobe_target, default chain", target: uprobe, flavours: nil,
                                           events: n, expectation: .exact(n),
                                           trigger: { _ = traceplane_uprobe_target(41) })))
        results += await keyedChecks()
        results += await cgroupChecks()
        results += await stackChecks()
        results += await eventChecks()
        results += await budgetChecks()
        return (results, search)
    }

    /// Keys × values on every flavour: 100 reads of 1 byte, 200 of 10 and 300 of 100 on
    /// three fds of /dev/zero, counted by fd (the syscall) and by size (vfs_read), each key
    /// exactly, each size in its log2 bucket.
    func keyedChecks() async -> [CheckResult] {
        let fds = (0..<3).map { _ in open("/dev/zero", O_RDONLY | O_CLOEXEC) }
        defer { fds.forEach { close($0) } }
        guard fds.allSatisfy({ $0 >= 0 }) else {
            Self.log("[fail] keyed checks: cannot open /dev/zero")
            return []
        }
        let reads: [(fd: Int32, bytes: Int, times: Int, lower: Int64)] = [(fds[0], 1, 100, 0), (fds[1], 10, 200, 8), (fds[2], 100, 300, 64)]
        let workload: @Sendable () -> Void = {
            var buffer = [UInt8](repeating: 0, count: 128)
            for r in reads { for _ in 0..<r.times { _ = read(r.fd, &buffer, r.bytes) } }
        }
        let total = reads.reduce(0) { $0 + $1.times }
        var results: [CheckResult] = []
        let byFD = Dictionary(uniqueKeysWithValues: reads.map { ("\($0.fd)", KeyExpectation(calls: UInt64($0.times), bucketLower: $0.lower)) })
        for flavour in FlavourCatalog.chain(for: .syscall).map(\.flavour) {
            results.append(await run(CheckPlan(
                name: "keys: syscall read by arg:fd, value arg:count, mechanisms [\(flavour.rawValue)]",
                target: ProbeTarget(type: .syscall, name: "read"), flavours: [flavour], events: 1, expectation: .exact(total),
                trigger: workload, aggregate: AggregateSpec(by: ["arg:fd"], value: "arg:count"), keys: byFD)))
        }
        let bySize = Dictionary(uniqueKeysWithValues: reads.map { ("\($0.bytes)", KeyExpectation(calls: UInt64($0.times), bucketLower: $0.lower)) })
        for flavour in FlavourCatalog.chain(for: .function).map(\.flavour) {
            results.append(await run(CheckPlan(
                name: "keys: function vfs_read by arg:count, value arg:count, mechanisms [\(flavour.rawValue)]",
                target: ProbeTarget(type: .function, name: "vfs_read"), flavours: [flavour], events: 1, expectation: .exact(total),
                trigger: workload, aggregate: AggregateSpec(by: ["arg:count"], value: "arg:count"), keys: bySize)))
        }
        return results
    }

    static let fallbackCheckName = "function fallback fentry→kprobe"

    /// Tries kernel functions, in order, until one attaches with kprobe after fentry failed.
    /// The candidates are zero-argument syscall entries: each has a deterministic trigger,
    /// so the kprobe side is also checked for an exact count.
    func fallbackSearch() async -> (CheckResult, FallbackSearch) {
        let candidates: [(String, @Sendable () -> Void)] = [
            ("getppid", { _ = getppid() }),
            ("getuid", { _ = getuid() }),
            ("getpid", { _ = getpid() }),
            ("sched_yield", { _ = sched_yield() }),
        ]
        let possible = [Flavour.fentry, .kprobe].allSatisfy { capabilityReason($0, type: .function) == nil }
        var tried: [FallbackSearch.Candidate] = []
        var last: CheckResult?
        for (syscall, trigger) in candidates {
            let function = "\(prefix)sys_\(syscall)"
            var candidate = FallbackSearch.Candidate(
                function: function, inKallsyms: symbols.kallsyms.contains(function), inBTF: symbols.btf?.functions.contains(function),
                inFtraceFilterList: symbols.ftrace?.contains(function), result: "not tried")
            guard candidate.inKallsyms else {
                candidate.result = "absent from kallsyms"
                tried.append(candidate)
                continue
            }
            var check = await run(CheckPlan(
                name: "\(Self.fallbackCheckName) (\(function))", target: ProbeTarget(type: .function, name: function),
                flavours: nil, events: calls, expectation: .exact(calls), trigger: trigger))
            let fentryAttempt = check.attempts.first { $0.flavour == .fentry }
            let fellBack = check.mechanism == Flavour.kprobe.rawValue && fentryAttempt != nil && fentryAttempt?.outcome != .attached
            if fellBack {
                candidate.result = "fell back to kprobe"
                tried.append(candidate)
                let why = "\(function) is in /proc/kallsyms" + (candidate.inBTF == false ? " but not in vmlinux BTF" : "")
                    + (candidate.inFtraceFilterList == false ? " nor in ftrace's available_filter_functions" : "")
                    + "; the fentry attempt failed at \(fentryAttempt?.stage?.rawValue ?? "?") with \(fentryAttempt?.errno?.name ?? "no errno"): \(fentryAttempt?.message ?? "")"
                check.name = Self.fallbackCheckName
                check.notes.append(why)
                return (check, FallbackSearch(function: function, why: why, candidates: tried))
            }
            candidate.result = check.mechanism.map { "\($0) attached" } ?? "nothing attached: " + check.attempts.map { "\($0.flavour.rawValue) \($0.outcome.rawValue)" }.joined(separator: ", ")
            tried.append(candidate)
            last = check
            if !possible { break }  // only recorded: both sides of the fallback cannot work here
        }
        var check = last ?? CheckResult(name: Self.fallbackCheckName, target: "function:?", requestedMechanisms: nil,
                                        expectedMechanism: nil, mechanism: nil, expected: "", actual: nil, status: "fail",
                                        pass: false, attempts: [], attachMilliseconds: 0, notes: [])
        check.name = Self.fallbackCheckName
        check.expected = "a function that fentry cannot attach falls back to kprobe, with the fentry attempt recorded and exact counts"
        if possible {
            check.status = "fail"
            check.pass = false
            check.notes.append("no candidate fell back from fentry to kprobe: " + tried.map { "\($0.function): \($0.result)" }.joined(separator: "; "))
        } else {
            check.status = "unsupported here"
            check.pass = nil
            check.notes.append("fentry/fexit and kprobe/kretprobe must both work for this check: "
                               + [Flavour.fentry, .kprobe].compactMap { capabilityReason($0, type: .function) }.joined(separator: "; "))
        }
        return (check, FallbackSearch(function: nil, why: nil, candidates: tried))
    }

    // MARK: One check

    /// What is wrong with the mechanism that attached, against the capability report's
    /// prediction (the first usable in the chain); nil when it is the predicted one.
    static func mechanismProblem(predicted: Flavour?, chosen: String?) -> String? {
        guard let predicted else { return "\(chosen ?? "a mechanism") attached although the capability report predicted nothing would" }
        return predicted.rawValue == chosen ? nil : "expected \(predicted.rawValue) (first usable in the chain), got \(chosen ?? "none")"
    }

    /// Creates a check's probe, timing the attach. When nothing attaches, `result` says why:
    /// a failure where the capability report predicted a mechanism, else not applicable
    /// here; the outcome is logged, and nil returned.
    func create(_ spec: ProbeSpec, check: String, predicted: Flavour?, capabilityRuledOut: Bool, into result: inout CheckResult) async -> Probe? {
        let started = ContinuousClock.now
        do {
            let probe = try await manager.create(spec).0
            result.attachMilliseconds = Self.milliseconds(since: started)
            return probe
        } catch {
            result.attachMilliseconds = Self.milliseconds(since: started)
            result.attempts = error.attempts
            if let predicted {
                result.notes.append("expected \(predicted.rawValue) to attach, but: \(error.detail)")
            } else {
                result.status = capabilityRuledOut ? "unsupported here" : "target not in BTF here"
                result.pass = nil
            }
            Self.log("[\(result.status)] \(check): nothing attached (\(error.attempts.map { "\($0.flavour.rawValue) \($0.outcome.rawValue)" }.joined(separator: ", ")))")
            return nil
        }
    }

    func run(_ plan: CheckPlan) async -> CheckResult {
        let (predicted, reasons, capabilityRuledOut) = predict(plan.flavours, target: plan.target)
        let expectedText: String
        switch plan.expectation {
        case .exact(let count):
            expectedText = plan.target.type == .tracepoint ? "calls == \(count)" : "calls == latency count == histogram count == \(count)"
        case .atLeast(let count):
            expectedText = "calls >= \(count)"
        }
        var result = CheckResult(
            name: plan.name, target: plan.target.label, requestedMechanisms: plan.flavours?.map(\.rawValue),
            expectedMechanism: predicted?.rawValue, mechanism: nil, expected: expectedText + (plan.stacks.map { "; \($0)" } ?? ""), actual: nil, status: "fail",
            pass: false, attempts: [], attachMilliseconds: 0, notes: reasons)
        let name = "selftest-\(UInt32.random(in: 0...UInt32.max))"
        let spec = ProbeSpec(name: name, target: plan.target, mechanisms: plan.flavours?.map(\.rawValue),
                             filter: ProbeFilter(pid: pid, comm: plan.aggregate == nil && plan.streamed == nil ? nil : Self.callerThreadName),
                             aggregate: plan.aggregate, events: plan.streamed, budget: plan.budget)
        guard let probe = await create(spec, check: plan.name, predicted: predicted, capabilityRuledOut: capabilityRuledOut, into: &result) else {
            return result
        }
        let chosen: String? = probe.mechanism?.rawValue
        result.mechanism = chosen
        result.attempts = probe.attempts
        await Self.onRenamedThread { for _ in 0..<plan.events { plan.trigger() } }
        var stackFailures: [String] = []
        do {
            let metrics = try await manager.metrics(name)
            let latency = metrics.latencyNanoseconds
            result.actual = .init(calls: metrics.calls, latencyCount: latency?.count,
                                  histogramCount: latency.map { $0.buckets.reduce(0) { $0 + $1.count } },
                                  processName: metrics.byProcess.first?.comm)
            result.actual?.sampling = metrics.sampling
            if let aggregate = metrics.aggregate, plan.aggregate != nil {
                result.actual?.keys = Dictionary(aggregate.entries.map { e in
                    (e.key.map(\.text).joined(separator: ", "), CheckResult.Actual.Key(calls: e.calls, buckets: e.buckets.map { [$0.lower, Int64(clamping: $0.count)] }))
                }, uniquingKeysWith: { a, b in a.merged(b) })  // stacks whose frames read the same
                if let stacks = plan.stacks {
                    result.actual?.stackFull = aggregate.stackFull
                    stackFailures = stacks.failures(aggregate, calls: metrics.calls)
                }
            }
        } catch {
            result.notes.append("reading the probe failed: \(error.detail)")
        }
        var eventFailures: [String] = []
        if plan.streamed != nil, let actual = result.actual {
            eventFailures = await eventFailuresOf(name, calls: actual.calls, into: &result)
        }
        try? await manager.delete(name)

        var ok = result.actual.map { counted($0, plan) } ?? false
        if plan.budget != nil {
            result.expected += "; every call seen and recorded (sampling: sampled 1, seen_calls == calls, estimated_calls 0)"
            let s = result.actual?.sampling
            if s == nil || s?.sampled != 1 || s?.seenCalls != result.actual?.calls || s?.estimatedCalls != 0 {
                ok = false
                result.notes.append("budget sampling \(String(describing: s)) for \(result.actual?.calls ?? 0) calls")
            }
        }
        if !eventFailures.isEmpty {
            ok = false
            result.notes += eventFailures
        }
        if plan.stacks != nil {
            if !stackFailures.isEmpty || result.actual?.keys == nil {
                ok = false
                result.notes += stackFailures.isEmpty ? ["no key table was read"] : stackFailures
            }
        } else if plan.aggregate != nil {
            let found = result.actual?.keys ?? [:]
            let wanted = plan.keys.mapValues { CheckResult.Actual.Key(calls: $0.calls, buckets: [[$0.bucketLower, Int64($0.calls)]]) }
            if found != wanted {
                ok = false
                result.notes.append("keys: expected \(wanted.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value.calls)" }), got \(found.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value.calls) \($0.value.buckets)" })")
            }
            result.expected += "; keys " + plan.keys.sorted { $0.key < $1.key }.map { "\($0.key) = \($0.value.calls)" }.joined(separator: ", ")
        }
        // The calls came from a thread named callerThreadName: by_process must still name the
        // process after its leader, as /proc/PID/comm does.
        let leader = (try? String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines)
        if let actual = result.actual, actual.processName != leader {
            ok = false
            result.notes.append("by_process names this process \(actual.processName ?? "nothing"), /proc/\(pid)/comm says \(leader ?? "?")")
        }
        if let problem = Self.mechanismProblem(predicted: predicted, chosen: chosen) {
            ok = false
            result.notes.append(problem)
        }
        result.status = ok ? "pass" : "fail"
        result.pass = ok
        let actual = result.actual.map { "calls \($0.calls)" + ($0.latencyCount.map { ", latency count \($0)" } ?? "") } ?? "unread"
        Self.log("[\(result.status)] \(plan.name): \(chosen ?? "none"), \(actual)")
        return result
    }

    /// The first flavour of `flavours` (nil: the default chain) that the capability report
    /// and vmlinux BTF allow for `target`, why the ones before it are ruled out, and whether
    /// the capability report ruled any out.
    func predict(_ flavours: [Flavour]?, target: ProbeTarget) -> (predicted: Flavour?, reasons: [String], capabilityRuledOut: Bool) {
        let chain = flavours.map { $0.compactMap { FlavourCatalog.descriptor($0, for: target.type) } }
            ?? FlavourCatalog.chain(for: target.type)
        var reasons: [String] = []
        var capabilityRuledOut = false
        for descriptor in chain {
            if let why = capabilityReason(descriptor) {
                reasons.append(why)
                capabilityRuledOut = true
            } else if let why = btfReason(descriptor, target: target) {
                reasons.append(why)
            } else {
                return (descriptor.flavour, reasons, capabilityRuledOut)
            }
        }
        return (nil, reasons, capabilityRuledOut)
    }

    func counted(_ actual: CheckResult.Actual, _ plan: CheckPlan) -> Bool {
        switch plan.expectation {
        case .exact(let count):
            let n = UInt64(count)
            if plan.target.type == .tracepoint { return actual.calls == n }
            return actual.calls == n && actual.latencyCount == n && actual.histogramCount == n
        case .atLeast(let count):
            return actual.calls >= UInt64(count)
        }
    }

    /// Why the capability report rules `descriptor` out (or this build cannot use it), or nil.
    func capabilityReason(_ descriptor: FlavourDescriptor) -> String? {
        if let why = descriptor.unavailable { return "\(descriptor.flavour.rawValue): \(why)" }
        let broken = descriptor.needs.compactMap { m -> String? in
            guard let r = report.result(for: m) else { return "\(m.rawValue) not in the capability report" }
            return r.status == .supported ? nil : "\(m.rawValue) \(r.status.rawValue)\(r.errno.map { " (\($0.name))" } ?? "")"
        }
        return broken.isEmpty ? nil : "\(descriptor.flavour.rawValue): capability report says " + broken.joined(separator: ", ")
    }

    /// The same for a flavour name on a target type.
    func capabilityReason(_ flavour: Flavour, type: TargetType) -> String? {
        FlavourCatalog.descriptor(flavour, for: type).flatMap(capabilityReason) ?? nil
    }

    /// Why vmlinux BTF rules `descriptor` out for `target` (what it binds through, checked
    /// against /sys/kernel/btf/vmlinux read here, not by the planner), or nil.
    func btfReason(_ descriptor: FlavourDescriptor, target: ProbeTarget) -> String? {
        guard let btf = symbols.btf else { return nil }
        let name = descriptor.flavour.rawValue
        switch descriptor.btfRequirement(target, report.kernel) {
        case nil:
            return nil
        case .function(let functions):
            return functions.contains(where: btf.functions.contains) ? nil
                : "\(name): " + (functions.count == 1 ? "\(functions[0]) is not a function" : "none of \(functions.joined(separator: ", ")) is a function") + " in vmlinux BTF"
        case .tracepoints(let events):
            let missing = events.filter { !btf.typedefs.contains("btf_trace_\($0)") }
            return missing.isEmpty ? nil : "\(name): " + missing.map { "btf_trace_\($0)" }.joined(separator: ", ") + " not in vmlinux BTF"
        }
    }

    /// The name of the thread that makes every traced call, unlike the process's.
    static let callerThreadName = "tp-selftest-cal"

    /// Runs `work` on a new thread named ``callerThreadName`` and waits for it.
    static func onRenamedThread(_ work: @escaping @Sendable () -> Void) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            Thread {
                _ = tp_set_thread_name(callerThreadName)
                work()
                continuation.resume()
            }.start()
        }
    }

    static func milliseconds(since start: ContinuousClock.Instant) -> Int {
        let elapsed = ContinuousClock.now - start
        return Int(elapsed.components.seconds) * 1000 + Int(elapsed.components.attoseconds / 1_000_000_000_000_000)
    }
}

