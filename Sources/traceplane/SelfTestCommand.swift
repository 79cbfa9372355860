import ArgumentParser
import CLibBPF
import Foundation
import Glibc
import TraceCore

/// `traceplane selftest`: proves, on the running kernel, that every probe type attaches
/// with the mechanism the capability report predicts and counts exactly. It drives the
/// same TraceCore code the agent serves (CapabilityStore, ProbeManager, Planner,
/// LibBPFBackend) and makes every traced event happen itself, filtered to its own pid.
/// The kernel-matrix stage boots it under QEMU; the result is one JSON document between
/// marker lines on stdout.
struct SelfTest: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "selftest",
        abstract: "Check capabilities, fallbacks and exact counts of every probe type on this kernel (prints JSON between marker lines).",
        discussion: "Exits 0 when every check that applies here passes. Needs root.")

    static let beginMarker = "TRACEPLANE-SELFTEST-BEGIN"
    static let endMarker = "TRACEPLANE-SELFTEST-END"

    @Option(help: "Events to make per exact-count check.")
    var calls: Int = 1000

    @OptionGroup var kernel: KernelOptions

    func run() async throws {
        try kernel.bootstrapLogging()
        guard (1...1_000_000).contains(calls) else { throw ValidationError("--calls must be from 1 to 1000000") }
        let backend = LibBPFBackend()
        let store = CapabilityStore(prober: CapabilityProber(backend: backend, disabled: try kernel.disabled()))
        let report = await store.refresh()
        let manager = ProbeManager(planner: Planner(backend: backend), report: { await store.current })
        let symbols = KernelSymbols.read()
        let runner = SelfTestRunner(manager: manager, report: report, symbols: symbols, calls: calls,
                                    executable: backend.host.executablePath)
        let (checks, fallback) = await runner.runAll()
        await manager.removeAll()
        Reaper.shared.drain()

        let failed = checks.filter { $0.pass == false }
        let document = SelfTestDocument(
            kernel: report.kernel, callsPerCheck: calls, capabilitiesProbedMilliseconds: report.durationMilliseconds,
            btfFunctions: symbols.btf?.functions.count, mechanisms: report.mechanisms, features: report.features,
            checks: checks, fallback: fallback,
            summary: .init(checks: checks.count, passed: checks.filter { $0.pass == true }.count, failed: failed.count,
                           notApplicable: checks.filter { $0.pass == nil }.count),
            pass: failed.isEmpty)
        // One unbuffered write, so that nothing interleaves with the document on a console.
        let json = String(decoding: try ReportJSON.encode(document), as: UTF8.self)
        FileHandle.standardOutput.write(Data("\(Self.beginMarker)\n\(json)\n\(Self.endMarker)\n".utf8))
        if !failed.isEmpty {
            SelfTestRunner.log("selftest: \(failed.count) check(s) failed: \(failed.map(\.name).joined(separator: "; "))")
            throw ExitCode(1)
        }
    }
}

// MARK: - Result document

struct SelfTestDocument: Encodable {
    struct Summary: Encodable {
        var checks: Int
        var passed: Int
        var failed: Int
        var notApplicable: Int
        enum CodingKeys: String, CodingKey {
            case checks, passed, failed
            case notApplicable = "not_applicable"
        }
    }
    var kernel: KernelFacts
    var callsPerCheck: Int
    var capabilitiesProbedMilliseconds: Double
    var btfFunctions: Int?
    var mechanisms: [CapabilityResult]
    var features: [CapabilityResult]
    var checks: [CheckResult]
    var fallback: FallbackSearch
    var summary: Summary
    var pass: Bool

    enum CodingKeys: String, CodingKey {
        case kernel, mechanisms, features, checks, fallback, summary, pass
        case callsPerCheck = "calls_per_check"
        case capabilitiesProbedMilliseconds = "capabilities_probed_ms"
        case btfFunctions = "btf_functions"
    }
}

/// One check: what was asked, what the capability report predicted, what happened.
struct CheckResult: Encodable {
    struct Actual: Encodable {
        var calls: UInt64
        /// Latency samples and the sum of the histogram's buckets (null for tracepoints).
        var latencyCount: UInt64?
        var histogramCount: UInt64?
        enum CodingKeys: String, CodingKey {
            case calls
            case latencyCount = "latency_count"
            case histogramCount = "histogram_count"
        }
    }
    var name: String
    var target: String
    /// The `mechanisms` of the spec; null for the default chain.
    var requestedMechanisms: [String]?
    /// The first flavour of the chain that the capability report and vmlinux BTF allow.
    var expectedMechanism: String?
    /// The flavour that attached; null when none did.
    var mechanism: String?
    var expected: String
    var actual: Actual?
    /// `pass`, `fail`, `unsupported here` (the capability report rules out every flavour of
    /// the chain) or `target not in BTF here` (fentry/tp_btf only, and the target lacks BTF).
    var status: String
    /// null when the check does not apply to this kernel.
    var pass: Bool?
    var attempts: [AttachAttempt]
    var attachMilliseconds: Int
    var notes: [String]

    enum CodingKeys: String, CodingKey {
        case name, target, mechanism, expected, actual, status, pass, attempts, notes
        case requestedMechanisms = "requested_mechanisms"
        case expectedMechanism = "expected_mechanism"
        case attachMilliseconds = "attach_ms"
    }

    func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(target, forKey: .target)
        try c.encode(requestedMechanisms, forKey: .requestedMechanisms)
        try c.encode(expectedMechanism, forKey: .expectedMechanism)
        try c.encode(mechanism, forKey: .mechanism)
        try c.encode(expected, forKey: .expected)
        try c.encode(actual, forKey: .actual)
        try c.encode(status, forKey: .status)
        try c.encode(pass, forKey: .pass)
        try c.encode(attempts, forKey: .attempts)
        try c.encode(attachMilliseconds, forKey: .attachMilliseconds)
        try c.encode(notes, forKey: .notes)
    }
}

/// The search for a kernel function that fentry cannot attach but kprobe can.
struct FallbackSearch: Encodable {
    struct Candidate: Encodable {
        var function: String
        var inKallsyms: Bool
        var inBTF: Bool?
        var inFtraceFilterList: Bool?
        /// `fell back to kprobe`, `fentry attached`, `absent from kallsyms`, `not tried`, or what failed.
        var result: String
        enum CodingKeys: String, CodingKey {
            case function, result
            case inKallsyms = "in_kallsyms"
            case inBTF = "in_btf"
            case inFtraceFilterList = "in_ftrace_filter_list"
        }
        func encode(to encoder: any Encoder) throws {
            var c = encoder.container(keyedBy: CodingKeys.self)
            try c.encode(function, forKey: .function)
            try c.encode(inKallsyms, forKey: .inKallsyms)
            try c.encode(inBTF, forKey: .inBTF)
            try c.encode(inFtraceFilterList, forKey: .inFtraceFilterList)
            try c.encode(result, forKey: .result)
        }
    }
    /// The function that demonstrated the fallback; null when none did.
    var function: String?
    var why: String?
    var candidates: [Candidate]

    func encode(to encoder: any Encoder) throws {
        enum K: String, CodingKey { case function, why, candidates }
        var c = encoder.container(keyedBy: K.self)
        try c.encode(function, forKey: .function)
        try c.encode(why, forKey: .why)
        try c.encode(candidates, forKey: .candidates)
    }
}

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
}

struct SelfTestRunner: Sendable {
    let manager: ProbeManager
    let report: CapabilityReport
    let symbols: KernelSymbols
    let calls: Int
    let executable: String
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
        for flavour in Flavour.defaultChain(for: .syscall) {
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
        for flavour in Flavour.defaultChain(for: .tracepoint) {
            results.append(await run(CheckPlan(name: "tracepoint sched:sched_switch, mechanisms [\(flavour.rawValue)]",
                                               target: switchTP, flavours: [flavour], events: sleeps,
                                               expectation: .atLeast(sleeps), trigger: sleepCall)))
        }

        let uprobe = ProbeTarget(type: .uprobe, path: executable, symbol: "traceplane_uprobe_target")
        results.append(await run(CheckPlan(name: "uprobe traceplane_uprobe_target, default chain", target: uprobe, flavours: nil,
                                           events: n, expectation: .exact(n),
                                           trigger: { _ = traceplane_uprobe_target(41) })))
        return (results, search)
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
            let fentryAttempt = check.attempts.first { $0.mechanism == Flavour.fentry.rawValue }
            let fellBack = check.mechanism == Flavour.kprobe.rawValue && fentryAttempt != nil && fentryAttempt?.outcome != .attached
            if fellBack {
                candidate.result = "fell back to kprobe"
                tried.append(candidate)
                let why = "\(function) is in /proc/kallsyms" + (candidate.inBTF == false ? " but not in vmlinux BTF" : "")
                    + (candidate.inFtraceFilterList == false ? " nor in ftrace's available_filter_functions" : "")
                    + "; the fentry attempt failed at \(fentryAttempt?.stage ?? "?") with \(fentryAttempt?.errno ?? "no errno"): \(fentryAttempt?.message ?? "")"
                check.name = Self.fallbackCheckName
                check.notes.append(why)
                return (check, FallbackSearch(function: function, why: why, candidates: tried))
            }
            candidate.result = check.mechanism.map { "\($0) attached" } ?? "nothing attached: " + check.attempts.map { "\($0.mechanism) \($0.outcome.rawValue)" }.joined(separator: ", ")
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

    func run(_ plan: CheckPlan) async -> CheckResult {
        let chain = plan.flavours ?? Flavour.defaultChain(for: plan.target.type)
        var reasons: [String] = []
        var capabilityRuledOut = false
        var predicted: Flavour?
        for flavour in chain {
            if let why = capabilityReason(flavour, type: plan.target.type) {
                reasons.append(why)
                capabilityRuledOut = true
            } else if let why = btfReason(flavour, target: plan.target) {
                reasons.append(why)
            } else {
                predicted = flavour
                break
            }
        }
        let expectedText: String
        switch plan.expectation {
        case .exact(let count):
            expectedText = plan.target.type == .tracepoint ? "calls == \(count)" : "calls == latency count == histogram count == \(count)"
        case .atLeast(let count):
            expectedText = "calls >= \(count)"
        }
        var result = CheckResult(
            name: plan.name, target: plan.target.label, requestedMechanisms: plan.flavours?.map(\.rawValue),
            expectedMechanism: predicted?.rawValue, mechanism: nil, expected: expectedText, actual: nil, status: "fail",
            pass: false, attempts: [], attachMilliseconds: 0, notes: reasons)
        let name = "selftest-\(UInt32.random(in: 0...UInt32.max))"
        let spec = ProbeSpec(name: name, target: plan.target, mechanisms: plan.flavours?.map(\.rawValue),
                             filter: ProbeFilter(pid: pid))
        let started = ContinuousClock.now
        let probe: Probe
        do {
            probe = try await manager.create(spec).0
        } catch {
            result.attachMilliseconds = Self.milliseconds(since: started)
            result.attempts = error.attempts
            if let predicted {
                result.notes.append("expected \(predicted.rawValue) to attach, but: \(error.detail)")
            } else {
                result.status = capabilityRuledOut ? "unsupported here" : "target not in BTF here"
                result.pass = nil
            }
            Self.log("[\(result.status)] \(plan.name): nothing attached (\(error.attempts.map { "\($0.mechanism) \($0.outcome.rawValue)" }.joined(separator: ", ")))")
            return result
        }
        result.attachMilliseconds = Self.milliseconds(since: started)
        let chosen: String? = probe.mechanism
        result.mechanism = chosen
        result.attempts = probe.attempts
        for _ in 0..<plan.events { plan.trigger() }
        do {
            let metrics = try await manager.metrics(name)
            let latency = metrics.latencyNanoseconds
            result.actual = .init(calls: metrics.calls, latencyCount: latency?.count,
                                  histogramCount: latency.map { $0.buckets.reduce(0) { $0 + $1.count } })
        } catch {
            result.notes.append("reading the probe failed: \(error.detail)")
        }
        try? await manager.delete(name)

        var ok = result.actual.map { counted($0, plan) } ?? false
        if let predicted, predicted.rawValue != chosen {
            ok = false
            result.notes.append("expected \(predicted.rawValue) (first usable in the chain), got \(chosen ?? "none")")
        } else if predicted == nil {
            ok = false
            result.notes.append("\(chosen ?? "a mechanism") attached although the capability report predicted nothing would")
        }
        result.status = ok ? "pass" : "fail"
        result.pass = ok
        let actual = result.actual.map { "calls \($0.calls)" + ($0.latencyCount.map { ", latency count \($0)" } ?? "") } ?? "unread"
        Self.log("[\(result.status)] \(plan.name): \(chosen ?? "none"), \(actual)")
        return result
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

    /// Why the capability report rules `flavour` out for `type`, or nil when it does not.
    func capabilityReason(_ flavour: Flavour, type: TargetType) -> String? {
        let broken = flavour.requires(for: type).compactMap { m -> String? in
            guard let r = report.result(for: m) else { return "\(m.rawValue) not in the capability report" }
            return r.status == .supported ? nil : "\(m.rawValue) \(r.status.rawValue)\(r.errno.map { " (\($0))" } ?? "")"
        }
        return broken.isEmpty ? nil : "\(flavour.rawValue): capability report says " + broken.joined(separator: ", ")
    }

    /// Why vmlinux BTF rules `flavour` out for `target` (checked independently of the
    /// planner, by reading /sys/kernel/btf/vmlinux), or nil.
    func btfReason(_ flavour: Flavour, target: ProbeTarget) -> String? {
        guard let btf = symbols.btf, let name = target.name else { return nil }
        switch (flavour, target.type) {
        case (.fentry, .syscall):
            // The planner binds fentry to the syscall's entry, or to __do_sys_X when the entry
            // is a BTF-less alias (zero-argument syscalls).
            let functions = ["\(prefix)sys_\(name)", "__do_sys_\(name)"]
            return functions.contains(where: btf.functions.contains) ? nil : "fentry: neither \(functions.joined(separator: " nor ")) is a function in vmlinux BTF"
        case (.fentry, .function):
            return btf.functions.contains(name) ? nil : "fentry: \(name) is not a function in vmlinux BTF"
        case (.tpBTF, .syscall):
            // The shared hook binds to raw_syscalls sys_enter/sys_exit.
            let missing = ["sys_enter", "sys_exit"].filter { !btf.typedefs.contains("btf_trace_\($0)") }
            return missing.isEmpty ? nil : "tp_btf: " + missing.map { "btf_trace_\($0)" }.joined(separator: ", ") + " not in vmlinux BTF"
        case (.tpBTF, .tracepoint):
            let event = name.split(separator: ":").last.map(String.init) ?? name
            return btf.typedefs.contains("btf_trace_\(event)") ? nil : "tp_btf: btf_trace_\(event) is not in vmlinux BTF"
        default:
            return nil
        }
    }

    static func milliseconds(since start: ContinuousClock.Instant) -> Int {
        let elapsed = ContinuousClock.now - start
        return Int(elapsed.components.seconds) * 1000 + Int(elapsed.components.attoseconds / 1_000_000_000_000_000)
    }
}

// MARK: - Kernel symbols, read independently of the code under test

/// Kernel symbol facts the checks predict with: /proc/kallsyms, ftrace's filter list and
/// the function and typedef names in vmlinux BTF.
struct KernelSymbols: Sendable {
    var kallsyms: Set<String>
    var ftrace: Set<String>?
    var btf: VmlinuxBTFNames?

    static func read() -> KernelSymbols {
        KernelSymbols(kallsyms: names(path: "/proc/kallsyms", field: 2) ?? [],
                      ftrace: names(path: "/sys/kernel/tracing/available_filter_functions", field: 0),
                      btf: VmlinuxBTFNames.read())
    }

    /// The `field`-th whitespace-separated word of every line (text symbols only for kallsyms).
    static func names(path: String, field: Int) -> Set<String>? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.readToEnd() else { return nil }
        var set = Set<String>()
        for line in data.split(separator: UInt8(ascii: "\n")) {
            let words = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
            guard words.count > field else { continue }
            if field == 2, let kind = words[1].first, kind != UInt8(ascii: "T") && kind != UInt8(ascii: "t") { continue }
            set.insert(String(decoding: words[field], as: UTF8.self))
        }
        return set
    }
}

/// Function and typedef names from the kernel's BTF (`/sys/kernel/btf/vmlinux`), parsed
/// from the raw format (include/uapi/linux/btf.h).
struct VmlinuxBTFNames: Sendable {
    var functions: Set<String>
    var typedefs: Set<String>

    static func read(path: String = "/sys/kernel/btf/vmlinux") -> VmlinuxBTFNames? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.readToEnd() else { return nil }
        return parse([UInt8](data))
    }

    static func parse(_ bytes: [UInt8]) -> VmlinuxBTFNames? {
        func u32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        guard bytes.count >= 24, bytes[0] == 0x9F, bytes[1] == 0xEB else { return nil }
        let headerLength = Int(u32(4))
        let typesStart = headerLength + Int(u32(8)), typesEnd = typesStart + Int(u32(12))
        let stringsStart = headerLength + Int(u32(16)), stringsEnd = stringsStart + Int(u32(20))
        guard typesEnd <= bytes.count, stringsEnd <= bytes.count else { return nil }
        func string(_ offset: UInt32) -> String {
            var end = stringsStart + Int(offset)
            let start = end
            while end < stringsEnd && bytes[end] != 0 { end += 1 }
            return String(decoding: bytes[start..<end], as: UTF8.self)
        }
        var names = VmlinuxBTFNames(functions: [], typedefs: [])
        var at = typesStart
        while at + 12 <= typesEnd {
            let nameOffset = u32(at), info = u32(at + 4)
            let kind = (info >> 24) & 0x1F, vlen = Int(info & 0xFFFF)
            at += 12
            switch kind {
            case 1, 14, 17: at += 4                       // INT, VAR, DECL_TAG
            case 3: at += 12                              // ARRAY
            case 4, 5, 15, 19: at += 12 * vlen            // STRUCT, UNION, DATASEC, ENUM64
            case 6, 13: at += 8 * vlen                    // ENUM, FUNC_PROTO
            case 2, 7, 9, 10, 11, 16, 18: break           // PTR, FWD, VOLATILE, CONST, RESTRICT, FLOAT, TYPE_TAG
            case 8: names.typedefs.insert(string(nameOffset))
            case 12: names.functions.insert(string(nameOffset))
            default: return nil                           // a kind this reader does not know
            }
        }
        return names
    }
}
