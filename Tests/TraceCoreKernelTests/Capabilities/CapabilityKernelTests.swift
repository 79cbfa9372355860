import CKernelOracle
import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// The real `CapabilityProber` on the real kernel, checked mechanism by mechanism against
/// independent oracles (raw bpf(2)/perf_event_open(2) in `CKernelOracle`), so the
/// expectations hold on any kernel: what the oracle can do, the report must call supported;
/// where the oracle fails, the report must fail at the same stage with the same errno.
@Suite("Capability probing on the real kernel", .serialized, .kernelExclusive,
       .enabled(if: RootRequirement.check("kernel tests (CapabilityKernelTests)") || RootRequirement.mustRun,
                "needs root (geteuid() == 0) and a real kernel; CI must run it as root"))
struct CapabilityKernelTests {
    /// One real probe, shared by the tests that only read the report.
    static let report = CapabilityProber(backend: LibBPFBackend()).probe()

    init() throws {
        try #require(RootRequirement.isRoot, "CI is set but the kernel tests are not running as root: they cannot check anything")
    }

    static let syscallEntry: String? = {
        var buffer = [CChar](repeating: 0, count: 64)
        guard oracle_syscall_entry(&buffer, buffer.count) == 0 else { return nil }
        return buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
    }()

    static func errnoName(_ err: Int32) -> String {
        String(cString: oracle_errno_name(err))
    }

    static func entry(_ mechanism: Mechanism) throws -> CapabilityResult {
        try #require(report.result(for: mechanism), "no entry for \(mechanism.rawValue) in the report")
    }

    /// Checks `entry` against a full oracle trial (load, attach, fire).
    static func expect(_ entry: CapabilityResult, matches oracle: oracle_outcome, sourceLocation: SourceLocation = #_sourceLocation) {
        let context = "\(entry.name): oracle stage \(oracle.stage) \(oracle.err == 0 ? "" : errnoName(oracle.err)), report \(entry.status.rawValue) at \(entry.stage?.rawValue ?? "-") \(entry.errno?.name ?? "-"): \(entry.message)"
        switch Int(oracle.stage) {
        case ORACLE_STAGE_NONE:
            #expect(entry.status == .supported, "\(context)", sourceLocation: sourceLocation)
            #expect(entry.stage == .attach, "\(context)", sourceLocation: sourceLocation)
            #expect(entry.errno == nil, "\(context)", sourceLocation: sourceLocation)
        case ORACLE_STAGE_LOAD, ORACLE_STAGE_ATTACH:
            #expect(entry.status != .supported, "\(context)", sourceLocation: sourceLocation)
            #expect(entry.stage?.rawValue == (Int(oracle.stage) == ORACLE_STAGE_LOAD ? "load" : "attach"), "\(context)", sourceLocation: sourceLocation)
            #expect(entry.errno?.name == errnoName(oracle.err), "\(context)", sourceLocation: sourceLocation)
            if oracle.err == EPERM || oracle.err == EACCES {
                #expect(entry.status == .denied, "\(context)", sourceLocation: sourceLocation)
            }
        case ORACLE_STAGE_FIRE:
            #expect(entry.status == .unsupported, "\(context)", sourceLocation: sourceLocation)
            #expect(entry.stage == .attach, "\(context)", sourceLocation: sourceLocation)
            #expect(entry.errno == nil, "\(context)", sourceLocation: sourceLocation)
        default:
            // The oracle could not even set up (no BTF type, no tracefs id, no PMU).
            #expect(entry.status != .supported, "\(context)", sourceLocation: sourceLocation)
        }
    }

    @Test("fentry and fexit: denied at load with the oracle's errno when the oracle cannot load them, supported when it can",
          arguments: [Mechanism.fentry, .fexit])
    func fentryMatchesOracle(mechanism: Mechanism) throws {
        let function = try #require(Self.syscallEntry, "vmlinux BTF has no getpgid entry function")
        let fexit: Int32 = mechanism == .fexit ? 1 : 0
        let loaded = fexit == 1 ? oracle_load_fexit(function) : oracle_load_fentry(function)
        let entry = try Self.entry(mechanism)
        if loaded < 0 {
            #expect(entry.stage == .load, "\(entry)")
            #expect(entry.errno?.name == Self.errnoName(-loaded), "\(entry)")
            #expect(entry.status != .supported)
            if -loaded == EPERM {
                #expect(entry.status == .denied)
                #expect(entry.message.contains("function tracing denied by the kernel"))
            }
        }
        Self.expect(entry, matches: oracle_try_fentry(function, fexit))
    }

    @Test("kprobe and kretprobe: unsupported at attach, naming CONFIG_KPROBES, when neither kprobe PMU nor kprobe_events exists",
          arguments: [Mechanism.kprobe, .kretprobe])
    func kprobeMatchesOracle(mechanism: Mechanism) throws {
        let config = oracle_config_option("CONFIG_KPROBES")
        let available = oracle_kprobes_available() == 1
        if config == 0 {
            #expect(!available, "CONFIG_KPROBES is off, yet a kprobe interface exists")
        }
        let entry = try Self.entry(mechanism)
        if !available {
            #expect(entry.status == .unsupported)
            #expect(entry.stage == .attach)
            #expect(entry.errno != nil)
            #expect(entry.message.contains("CONFIG_KPROBES"))
        } else if oracle_pmu_type("kprobe") >= 0 {
            let function = try #require(Self.syscallEntry, "vmlinux BTF has no getpgid entry function")
            Self.expect(entry, matches: oracle_try_kprobe(function, mechanism == .kretprobe ? 1 : 0))
        } else {
            #expect(!entry.message.contains("CONFIG_KPROBES"), "kprobe_events exists, so kprobes are built in")
        }
    }

    @Test("tracepoint, raw_tracepoint, tp_btf, uprobe and uretprobe are supported exactly when the oracle's trial works",
          arguments: [Mechanism.tracepoint, .rawTracepoint, .tpBTF, .uprobe, .uretprobe])
    func mechanismMatchesOracle(mechanism: Mechanism) throws {
        let oracle: oracle_outcome
        switch mechanism {
        case .tracepoint:
            oracle = oracle_try_perf_tracepoint("syscalls", "sys_enter_getpgid")
            #expect((oracle_perf_tracepoint("syscalls", "sys_enter_getpgid") == 0) == (Int(oracle.stage) == ORACLE_STAGE_NONE || Int(oracle.stage) == ORACLE_STAGE_FIRE))
        case .rawTracepoint:
            oracle = oracle_try_raw_tracepoint("sys_enter")
            #expect((oracle_raw_tracepoint_open("sys_enter") == 0) == (Int(oracle.stage) == ORACLE_STAGE_NONE || Int(oracle.stage) == ORACLE_STAGE_FIRE))
        case .tpBTF:
            oracle = oracle_try_tp_btf("sys_enter")
            if oracle_btf_has("btf_trace_sys_enter", Int32(ORACLE_BTF_KIND_TYPEDEF)) == 1 {
                #expect((oracle_load_tp_btf("sys_enter") == 0) == (Int(oracle.stage) != ORACLE_STAGE_LOAD))
            }
        case .uprobe:
            oracle = oracle_try_uprobe(0)
        case .uretprobe:
            oracle = oracle_try_uprobe(1)
        default:
            Issue.record("no oracle for \(mechanism.rawValue)")
            return
        }
        Self.expect(try Self.entry(mechanism), matches: oracle)
    }

    @Test("vmlinux_btf is supported exactly when /sys/kernel/btf/vmlinux exists and parses")
    func vmlinuxBTFMatchesOracle() throws {
        let entry = try #require(Self.report.result(for: .vmlinuxBTF))
        let parses = oracle_btf_has("task_struct", Int32(ORACLE_BTF_KIND_STRUCT)) == 1
        #expect((entry.status == .supported) == (access("/sys/kernel/btf/vmlinux", R_OK) == 0 && parses))
    }

    @Test("Every mechanism and feature that is not supported has a stage, a message and (unless it never fired or is disabled) an errno name")
    func failuresAreExplained() {
        let neverFired = Set(Mechanism.allCases.map { Classifier.neverFired($0).message })
        for entry in Self.report.mechanisms + Self.report.features where entry.status != .supported {
            #expect(!entry.message.isEmpty, "\(entry.name) has no message")
            guard entry.disabled != true else { continue }
            #expect(entry.stage == .load || entry.stage == .attach, "\(entry.name) has stage \(entry.stage?.rawValue ?? "nil")")
            if !neverFired.contains(entry.message) {
                let name = entry.errno?.name ?? ""
                #expect(name.hasPrefix("E") && name.count > 1, "\(entry.name) has no errno name: \(entry.errno?.name ?? "nil")")
            }
        }
        for entry in Self.report.mechanisms + Self.report.features where entry.status == .supported {
            #expect(entry.errno == nil, "\(entry.name) is supported but carries errno \(entry.errno?.name ?? "")")
        }
    }

    @Test("Kernel facts match uname, /sys/kernel/btf/vmlinux, statfs of tracefs and bpffs, and sysfs")
    func kernelFactsMatchTheSystem() throws {
        let facts = Self.report.kernel
        var name = utsname()
        #expect(uname(&name) == 0)
        let release = withUnsafeBytes(of: &name.release) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        let machine = withUnsafeBytes(of: &name.machine) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
        #expect(facts.release == release)
        #expect(facts.machine == machine)
        #expect(facts.btf == (access("/sys/kernel/btf/vmlinux", F_OK) == 0))
        #expect(facts.privileged)

        #expect(facts.tracefs.mounted, "tracefs not mounted: \(facts.tracefs.error ?? "")")
        #expect(oracle_fs_magic_is(facts.tracefs.path, 0x7472_6163) == 1, "\(facts.tracefs.path) is not tracefs")
        #expect(facts.bpffs.mounted, "bpffs not mounted: \(facts.bpffs.error ?? "")")
        #expect(oracle_fs_magic_is(facts.bpffs.path, 0xCAFE_4A11) == 1, "\(facts.bpffs.path) is not bpffs")

        if let entry = Self.syscallEntry {
            let prefix = try #require(facts.syscallPrefix, "BTF names \(entry) but the report has no syscall prefix")
            #expect(prefix + "sys_getpgid" == entry)
        }

        let sources = try FileManager.default.contentsOfDirectory(atPath: "/sys/bus/event_source/devices").sorted()
        #expect(facts.eventSources == sources)
        #expect(facts.kprobeEvents == (oracle_kprobe_events_exists() == 1))

        if let text = try? String(contentsOfFile: "/sys/kernel/security/lockdown", encoding: .utf8),
           let open = text.firstIndex(of: "["), let close = text.firstIndex(of: "]") {
            #expect(facts.lockdown == String(text[text.index(after: open)..<close]))
        }
        if let text = try? String(contentsOfFile: "/proc/sys/net/core/bpf_jit_enable", encoding: .utf8) {
            let expected = ["0": "disabled", "1": "enabled", "2": "enabled-debug"][text.trimmingCharacters(in: .whitespacesAndNewlines)]
            #expect(facts.jit == expected)
        }
    }

    @Test("Chains are usable exactly when every mechanism they require is supported")
    func chainsFollowStatuses() {
        for (target, steps) in Self.report.chains {
            for step in steps {
                let usable = step.requires.allSatisfy { Self.report.result(for: $0)?.status == .supported }
                #expect(step.usable == usable, "\(target)/\(step.mechanism)")
            }
        }
    }

    /// Programs, links, perf events and maps of the capability and kfunc objects.
    static func census() throws -> (all: oracle_fd_counts, owned: oracle_fd_counts) {
        var all = oracle_fd_counts()
        var owned = oracle_fd_counts()
        let rc = oracle_fd_census("cap_,kfunc_probe", "hits,capabili.,kfunc.", &all, &owned)
        try #require(rc == 0, "cannot take a census of /proc/self/fd: \(errnoName(-rc))")
        return (all, owned)
    }

    @Test("After probing and draining the reaper, the process holds no more BPF or perf fds than before and the kernel no capability programs")
    func probingLeaksNothing() async throws {
        Reaper.shared.drain()
        // Another suite's capability probe may be in flight: wait for it to be reaped.
        var before = try Self.census()
        for _ in 0..<50 where before.owned.total > 0 {
            try await Task.sleep(for: .milliseconds(100))
            before = try Self.census()
        }
        let beforeCount = oracle_bpf_fd_count()
        #expect(before.owned.total == 0, "capability fds were open before this test: \(before.owned)")

        for _ in 0..<2 {
            let report = CapabilityProber(backend: LibBPFBackend()).probe()
            #expect(report.supports(.tracepoint) || report.supports(.rawTracepoint) || report.supports(.tpBTF),
                    "nothing attached: the leak check would prove nothing")
        }
        Reaper.shared.drain()

        var after = try Self.census()
        var afterCount = oracle_bpf_fd_count()
        var programs = oracle_count_programs_with_prefix("cap_")
        for _ in 0..<50 where after.owned.total > 0 || programs > 0 || afterCount > beforeCount {
            try await Task.sleep(for: .milliseconds(100))
            after = try Self.census()
            afterCount = oracle_bpf_fd_count()
            programs = oracle_count_programs_with_prefix("cap_")
        }
        // Ours, attributed by program and map name: exact whatever else runs.
        #expect(after.owned.total == 0, "capability fds left open after probing: \(after.owned)")
        #expect(programs == 0, "\(programs) cap_* programs are still loaded in the kernel")
        // All of the process's BPF and perf fds: exact when no other suite changed its own
        // fds meanwhile (kernel suites take turns through `.kernelExclusive`).
        if after.all.total - after.owned.total == before.all.total - before.owned.total {
            #expect(afterCount <= beforeCount, "BPF/perf fds: \(beforeCount) before probing, \(afterCount) after")
        } else {
            print("CapabilityKernelTests: another suite changed its BPF/perf fds during the leak check (\(before.all) → \(after.all)); compared capability fds only")
        }
    }
}

extension oracle_fd_counts: @retroactive CustomStringConvertible {
    var total: Int { Int(progs + maps + links + perf_events) }
    public var description: String {
        "bpf-prog \(progs), bpf-map \(maps), bpf_link \(links), perf_event \(perf_events)"
    }
}
