import CKernelOracle
import CLibBPF
import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// Probes on the real kernel, as root: exact counts, fallbacks, no leaks.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("ProbeKernelTests") || RootRequirement.mustRun,
                             "needs root and a real kernel"))
struct ProbeKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))

    init() async throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        // Warm up lazily created runtime fds (timers, thread pools) before any census.
        try await Task.sleep(for: .milliseconds(1))
    }

    func manager(maxProbes: Int = 256) async -> ProbeManager {
        let report = await Self.store.get()
        return ProbeManager(planner: Planner(backend: Self.backend), maxProbes: maxProbes, report: { report })
    }

    static var pid: Int { Int(getpid()) }

    @Test("N getppid calls from a filtered pid give exactly N calls, and the histogram counts each once",
          arguments: ["tracepoint", "tp_btf", "raw_tracepoint", nil] as [String?])
    func exactSyscallCounts(mechanism: String?) async throws {
        let manager = await manager()
        let spec = ProbeSpec(name: "getppid-exact", target: ProbeTarget(type: .syscall, name: "getppid"),
                             mechanisms: mechanism.map { [$0] }, filter: ProbeFilter(pid: Self.pid))
        let probe = try await manager.create(spec).0
        if let mechanism { #expect(probe.mechanism?.rawValue == mechanism) }
        let n = 2_345
        for _ in 0..<n { _ = getppid() }
        let metrics = try await manager.metrics("getppid-exact")
        #expect(metrics.calls == UInt64(n))
        #expect(metrics.errors == 0)
        let latency = try #require(metrics.latencyNanoseconds)
        #expect(latency.count == UInt64(n))
        #expect(latency.buckets.reduce(0) { $0 + $1.count } == UInt64(n))
        #expect(latency.sum > 0)
        #expect(metrics.byProcess.first?.pid == Self.pid)
        #expect(metrics.byProcess.first?.calls == UInt64(n))
        await manager.removeAll()
    }

    @Test("A syscall probe with no mechanisms lists every attempt before the one that attached")
    func defaultChainRecordsAttempts() async throws {
        let manager = await manager()
        let report = await Self.store.get()
        let probe = try await manager.create(ProbeSpec(name: "read-default", target: ProbeTarget(type: .syscall, name: "read"))).0
        let attached = try #require(probe.attempts.last)
        #expect(attached.outcome == .attached)
        #expect(attached.flavour == probe.mechanism)
        // Every mechanism before the attached one failed, and each failure says why.
        for attempt in probe.attempts.dropLast() {
            #expect(attempt.outcome != .attached)
            #expect(attempt.errno != nil && !attempt.message.isEmpty)
        }
        // Which flavour wins follows the capability report, never the kernel version.
        let firstUsable = try #require(report.chains["syscall"]?.first { $0.usable })
        #expect(probe.mechanism == firstUsable.mechanism)
        await manager.removeAll()
    }

    @Test("write errors are counted: negative returns of the traced syscall")
    func errorsAreCounted() async throws {
        let manager = await manager()
        _ = try await manager.create(ProbeSpec(name: "close-errors", target: ProbeTarget(type: .syscall, name: "close"),
                                               filter: ProbeFilter(pid: Self.pid)))
        for _ in 0..<37 { _ = Glibc.close(-1) }  // EBADF each time
        let metrics = try await manager.metrics("close-errors")
        #expect(metrics.calls >= 37)
        #expect(metrics.errors >= 37)
        await manager.removeAll()
    }

    @Test("A sched:sched_switch tracepoint probe counts context switches, with no latency")
    func tracepointCounts() async throws {
        let manager = await manager()
        let probe = try await manager.create(ProbeSpec(name: "switches", target: ProbeTarget(type: .tracepoint, name: "sched:sched_switch"))).0
        for _ in 0..<20 { usleep(1000) }
        let metrics = try await manager.metrics("switches")
        #expect(metrics.calls >= 20)
        #expect(metrics.latencyNanoseconds == nil)
        #expect(["tp_btf", "raw_tracepoint", "tracepoint"].contains(probe.mechanism?.rawValue))
        await manager.removeAll()
    }

    @Test("Every tracepoint flavour counts sched:sched_switch", arguments: ["tp_btf", "raw_tracepoint", "tracepoint"])
    func tracepointFlavours(mechanism: String) async throws {
        let manager = await manager()
        let probe = try await manager.create(ProbeSpec(name: "switches-\(mechanism.replacingOccurrences(of: "_", with: "-"))",
                                                       target: ProbeTarget(type: .tracepoint, name: "sched:sched_switch"),
                                                       mechanisms: [mechanism])).0
        #expect(probe.mechanism?.rawValue == mechanism)
        for _ in 0..<10 { usleep(1000) }
        #expect(try await manager.metrics(probe.name).calls >= 10)
        await manager.removeAll()
    }

    @Test("A uprobe on a function of this test binary counts the exact number of calls")
    func uprobeExactCount() async throws {
        let manager = await manager()
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let probe = try await manager.create(ProbeSpec(name: "uprobe-exact",
                                                       target: ProbeTarget(type: .uprobe, path: exe, symbol: "traceplane_uprobe_target"),
                                                       filter: ProbeFilter(pid: Self.pid))).0
        #expect(probe.mechanism == .uprobe)
        var sink: Int32 = 0
        for i in 0..<1_234 { sink &+= traceplane_uprobe_target(Int32(i)) }
        #expect(sink != 0)
        let metrics = try await manager.metrics("uprobe-exact")
        #expect(metrics.calls == 1_234)
        #expect(metrics.latencyNanoseconds?.count == 1_234)
        await manager.removeAll()
    }

    @Test("function:vfs_read lists a failed attempt per mechanism when neither fentry nor kprobe works here")
    func functionFallbackFailure() async throws {
        let manager = await manager()
        let report = await Self.store.get()
        let spec = ProbeSpec(name: "vfs-read", target: ProbeTarget(type: .function, name: "vfs_read"))
        let fentryWorks = report.supports(.fentry) && report.supports(.fexit)
        let kprobeWorks = report.supports(.kprobe) && report.supports(.kretprobe)
        Reaper.shared.drain()
        let before = FDCensus.take()
        do throws(ProbeError) {
            let probe = try await manager.create(spec).0
            #expect(fentryWorks || kprobeWorks, "attached although the capability report says neither works")
            #expect(probe.mechanism == (fentryWorks ? .fentry : .kprobe))
        } catch {
            #expect(!fentryWorks && !kprobeWorks)
            #expect(error.kind == .attachFailed)
            #expect(error.attempts.map(\.flavour) == [.fentry, .kprobe])
            let fentry = error.attempts[0], kprobe = error.attempts[1]
            // The fentry verdict matches the capability report's (denied with EPERM on the dev kernel).
            #expect(fentry.outcome.rawValue == report.result(for: .fentry)?.status.rawValue)
            #expect(fentry.stage == report.result(for: .fentry)?.stage)
            #expect(fentry.errno == report.result(for: .fentry)?.errno)
            #expect(kprobe.outcome == .unsupported)
            #expect(kprobe.stage == .attach)
            #expect(await manager.count == 0)
        }
        await manager.removeAll()
        Reaper.shared.drain()
        #expect(FDCensus.take().kernelObjects == before.kernelObjects, "a failed attach must leave nothing behind")
    }

    @Test("1,000 create/delete cycles leave no BPF program, map, link or fd behind")
    func createDeleteCyclesDoNotLeak() async throws {
        let manager = await manager()
        Reaper.shared.drain()
        let before = FDCensus.take()
        let progsBefore = KernelCensus.programIDs()
        var mechanisms: [String: Int] = [:]
        let started = ContinuousClock.now
        for i in 0..<1_000 {
            // Per-probe objects and perf links (the shared hook has its own cycle test).
            let spec = ProbeSpec(name: "cycle", target: ProbeTarget(type: .syscall, name: i % 2 == 0 ? "getppid" : "getpid"),
                                 mechanisms: ["tracepoint"])
            mechanisms[try await manager.create(spec).0.mechanism?.rawValue ?? "none", default: 0] += 1
            try await manager.delete("cycle")
        }
        Reaper.shared.drain()
        print("1,000 create/delete cycles took \(ContinuousClock.now - started); mechanisms: \(mechanisms)")
        #expect(await manager.count == 0)
        #expect(FDCensus.take().kernelObjects == before.kernelObjects)
        let leaked = await KernelCensus.settledPrograms(excluding: progsBefore)
        #expect(leaked.isEmpty, "programs still loaded in the kernel: \(leaked.sorted())")
    }

    @Test("Past the probe limit, create fails with tooMany and keeps nothing")
    func probeLimit() async throws {
        let manager = await manager(maxProbes: 3)
        for i in 0..<3 {
            _ = try await manager.create(ProbeSpec(name: "lim-\(i)", target: ProbeTarget(type: .tracepoint, name: "sched:sched_switch")))
        }
        await #expect(throws: ProbeError.self) {
            _ = try await manager.create(ProbeSpec(name: "lim-3", target: ProbeTarget(type: .tracepoint, name: "sched:sched_switch")))
        }
        #expect(await manager.count == 3)
        await manager.removeAll()
    }

    @Test("A probe with a TTL is detached within a second of expiring")
    func ttlExpiry() async throws {
        let manager = await manager()
        Reaper.shared.drain()
        let before = FDCensus.take()
        _ = try await manager.create(ProbeSpec(name: "short-lived", target: ProbeTarget(type: .syscall, name: "getppid"), ttlSeconds: 1))
        #expect(await manager.count == 1)
        try await Task.sleep(for: .milliseconds(2_100))
        #expect(await manager.count == 0)
        Reaper.shared.drain()
        #expect(FDCensus.take().kernelObjects == before.kernelObjects)
        await manager.removeAll()
    }

    @Test("by_process names the process (its leader's comm), not the thread that made the first call",
          arguments: ["tracepoint", "tp_btf"])
    func processNamesAreTheLeaders(mechanism: String) async throws {
        let manager = await manager()
        _ = try await manager.create(ProbeSpec(name: "names", target: ProbeTarget(type: .syscall, name: "getppid"),
                                               mechanisms: [mechanism], filter: ProbeFilter(pid: Self.pid)))
        // Only renamed threads make the calls: the first one claims the process's entry.
        let threads = 3, calls = 400
        let done = DispatchGroup()
        for i in 0..<threads {
            done.enter()
            Thread {
                _ = oracle_set_thread_name("renamed-\(i)")
                for _ in 0..<calls { _ = getppid() }
                done.leave()
            }.start()
        }
        done.wait()
        // The oracle: /proc/PID/comm of a thread group is its leader's name.
        let leader = try String(contentsOfFile: "/proc/\(Self.pid)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        let metrics = try await manager.metrics("names")
        #expect(metrics.byProcess.count == 1)
        #expect(metrics.byProcess.first?.pid == Self.pid)
        #expect(metrics.byProcess.first?.calls == UInt64(threads * calls))
        #expect(metrics.byProcess.first?.comm == leader, "named after a thread instead of the process (leader: \(leader))")
        #expect(!(metrics.byProcess.first?.comm.hasPrefix("renamed-") ?? true))
        await manager.removeAll()
    }

    @Test("A process that execs after its first traced call shows its new name", arguments: ["tracepoint", "tp_btf"])
    func processNamesFollowExec(mechanism: String) async throws {
        // perl makes 3 traced calls, then execs perl again under another name (a symlink),
        // which makes 100 more and waits: /proc/PID/comm is then the oracle.
        let dir = NSTemporaryDirectory() + "exec-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try FileManager.default.createSymbolicLink(atPath: dir + "/after-exec", withDestinationPath: "/usr/bin/perl")
        let child = Process()
        child.executableURL = URL(fileURLWithPath: "/usr/bin/perl")
        child.arguments = ["-e", "$|=1; <STDIN>; getppid() for 1..3; exec '\(dir)/after-exec', '-e', '$|=1; getppid() for 1..100; print qq(ready\\n); <STDIN>'"]
        let input = Pipe(), output = Pipe()
        child.standardInput = input
        child.standardOutput = output
        try child.run()
        defer { if child.isRunning { child.terminate() } }
        let pid = Int(child.processIdentifier)
        let manager = await manager()
        _ = try await manager.create(ProbeSpec(name: "exec-names", target: ProbeTarget(type: .syscall, name: "getppid"),
                                               mechanisms: [mechanism], filter: ProbeFilter(pid: pid)))
        input.fileHandleForWriting.write(Data("go\n".utf8))
        let ready = output.fileHandleForReading.availableData
        #expect(String(decoding: ready, as: UTF8.self) == "ready\n")
        let oracle = try String(contentsOfFile: "/proc/\(pid)/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        #expect(oracle == "after-exec")
        let metrics = try await manager.metrics("exec-names")
        #expect(metrics.byProcess.map(\.pid) == [pid])
        #expect(metrics.byProcess.first?.calls == 103)
        #expect(metrics.byProcess.first?.comm == oracle, "still named \(metrics.byProcess.first?.comm ?? "-") after exec")
        try input.fileHandleForWriting.close()
        child.waitUntilExit()
        await manager.removeAll()
    }
}
