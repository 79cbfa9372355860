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
        let configuration = CoreConfiguration(disabledMechanisms: try kernel.disabled())
        let (checks, fallback, report, symbols) = try await TracingCore.run(configuration) { core in
            let report = await core.capabilities.get()
            let symbols = KernelSymbols.read()
            let runner = SelfTestRunner(manager: core.probes, report: report, symbols: symbols, calls: calls,
                                        executable: core.backend.host.executablePath, reaper: core.reaper)
            let (checks, fallback) = await runner.runAll()
            return (checks, fallback, report, symbols)
        }

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
        /// The name `by_process` gives this process (the calls come from a renamed thread).
        var processName: String?
        /// Keyed checks: every key (parts joined by ", ") with its calls and its value
        /// buckets as [lower, count] pairs.
        var keys: [String: Key]?
        struct Key: Encodable, Hashable {
            var calls: UInt64
            var buckets: [[Int64]]

            /// Both keys' calls and buckets, as one key.
            func merged(_ other: Key) -> Key {
                let counts = Dictionary((buckets + other.buckets).map { ($0[0], $0[1]) }, uniquingKeysWith: +)
                return Key(calls: calls + other.calls, buckets: counts.sorted { $0.key < $1.key }.map { [$0.key, $0.value] })
            }
        }
        /// cgroup checks: every key of the probe keyed by cgroup (filtered to the workload's
        /// name), by its path under the cgroup2 mount.
        var cgroups: [String: CgroupKey]?
        /// cgroup checks: the probe filtered by filter.pod_uid (and keyed by cgroup).
        var podFilter: PodFilter?
        /// Event checks: events read from the probe's ring buffer, and the kernel's counts.
        var events: EventTally?
        struct EventTally: Encodable {
            var received: Int
            var emitted: UInt64
            var throttled: UInt64
            var lost: UInt64
        }
        /// Budget checks: the metrics' sampling member (calls seen, calls estimated, N).
        var sampling: ProbeMetrics.Sampling?
        /// Stack checks: stacks not recorded because the stack map was full.
        var stackFull: UInt64?
        /// Profile checks: samples per CPU, and the perf event fds this process holds
        /// before the profile, while it is attached, and after it is deleted.
        var samplesByCPU: [String: UInt64]?
        var perfFDs: PerfFDs?
        struct PerfFDs: Encodable, Hashable {
            var before: Int
            var attached: Int
            var after: Int
        }
        struct CgroupKey: Encodable, Hashable {
            var id: UInt64
            var calls: UInt64
            /// What the path says runs there (CgroupIdentity); null when unresolved.
            var container: CgroupIdentity?
            var removed: Bool
        }
        struct PodFilter: Encodable, Hashable {
            var podUID: String
            var calls: UInt64
            var latencyCount: UInt64?
            var keys: [String: UInt64]
            enum CodingKeys: String, CodingKey {
                case calls, keys
                case podUID = "pod_uid"
                case latencyCount = "latency_count"
            }
        }
        enum CodingKeys: String, CodingKey {
            case keys, cgroups, events, sampling
            case podFilter = "pod_filter"
            case stackFull = "stack_full"
            case samplesByCPU = "samples_by_cpu"
            case perfFDs = "perf_fds"
            case calls
            case latencyCount = "latency_count"
            case histogramCount = "histogram_count"
            case processName = "process_name"
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

