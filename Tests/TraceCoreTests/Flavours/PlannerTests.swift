import Glibc
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// Every branch of the planner's loop over the flavour catalog, on the fake kernel.
@Suite("Planner on the fake kernel")
struct PlannerTests {
    let reaper = Reaper()

    func report(_ kernel: FakeKernel, disabled: Set<Mechanism> = []) -> CapabilityReport {
        let report = CapabilityProber(backend: kernel, disabled: disabled, reaper: reaper).probe()
        reaper.drain()
        return report
    }

    func syscall(_ name: String, _ mechanisms: [String]? = nil, pid: Int? = nil) -> ProbeSpec {
        ProbeSpec(name: "p", target: ProbeTarget(type: .syscall, name: name), mechanisms: mechanisms,
                  filter: pid.map { ProbeFilter(pid: $0) })
    }

    func function(_ name: String, _ mechanisms: [String]? = nil) -> ProbeSpec {
        ProbeSpec(name: "f", target: ProbeTarget(type: .function, name: name), mechanisms: mechanisms)
    }

    /// Loads of the probes' own object (not the capability probe's).
    func latencyLoads(_ kernel: FakeKernel) -> [LoadSpec] { kernel.loadedSpecs.filter { $0.object == LatencyBPF.object } }

    func finish(_ probes: [AttachedProbe], _ kernel: FakeKernel, sourceLocation: SourceLocation = #_sourceLocation) {
        for probe in probes { probe.detach(reaper: reaper) }
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)", sourceLocation: sourceLocation)
    }

    @Test("On the development machine the syscall chain records fentry and kprobe from the capability probe, without loading them, and joins the hub")
    func verdictsAreNotRetried() throws {
        let kernel = FakeKernel.developmentMachine()
        let report = report(kernel)
        let probe = try Planner(backend: kernel, reaper: reaper).attach(syscall("read"), report: report).get()
        #expect(probe.flavour == .tpBTF && probe.isShared)
        #expect(probe.attempts.map(\.flavour) == [.fentry, .kprobe, .tpBTF])
        let fentry = probe.attempts[0], kprobe = probe.attempts[1]
        #expect(fentry.outcome == .denied && fentry.stage == .load && fentry.errno == .EPERM)
        #expect(fentry.message.contains("not retried"))
        #expect(kprobe.outcome == .unsupported && kprobe.stage == .attach && kprobe.errno == .ENOENT)
        #expect(latencyLoads(kernel).isEmpty, "a mechanism the capability probe ruled out is not loaded again")
        #expect(probe.attempts[2].message.contains("via raw_syscalls sys_enter/sys_exit via tp_btf") && probe.attempts[2].message.contains("slot 0"))
        finish([probe], kernel)
    }

    @Test("A mechanism switched off by configuration is skipped with that reason, and the next one attaches")
    func disabledMechanism() throws {
        let kernel = FakeKernel()
        let report = report(kernel, disabled: [.fexit])
        let probe = try Planner(backend: kernel, reaper: reaper).attach(function("vfs_read"), report: report).get()
        #expect(probe.flavour == .kprobe)
        let skipped = try #require(probe.attempts.first)
        #expect(skipped.flavour == .fentry && skipped.outcome == .unsupported && skipped.stage == nil && skipped.errno == nil)
        #expect(skipped.message == "fexit is disabled by configuration (--disable-mechanism)")
        #expect(!latencyLoads(kernel).contains { $0.programs.contains { $0.id == LatencyBPF.Programs.latFentry } })
        finish([probe], kernel)
    }

    @Test("A capability verdict of resource exhaustion does not rule the mechanism out: it is tried")
    func exhaustionVerdictIsRetried() throws {
        let kernel = FakeKernel()
        kernel.failLoad(CapabilityBPF.Programs.capFentry, errno: .EMFILE)
        let report = report(kernel)
        #expect(report.result(for: .fentry)?.status == .error && report.result(for: .fentry)?.isResourceExhaustion == true)
        let probe = try Planner(backend: kernel, reaper: reaper).attach(function("vfs_read"), report: report).get()
        #expect(probe.flavour == .fentry, "fds are back: fentry works")
        finish([probe], kernel)
    }

    @Test("fentry on a syscall binds to __x64_sys_X, then to __do_sys_X when the first is not in BTF; other errors stop there")
    func doSysRetry() throws {
        let kernel = FakeKernel()
        kernel.failLoad(with: KernelError(stage: .load, errno: .ESRCH, operation: "load lat_fentry"),
                        when: { $0.programs.first?.loadTimeTarget == "__x64_sys_getppid" })
        let report = report(kernel)
        let planner = Planner(backend: kernel, reaper: reaper)
        let probe = try planner.attach(syscall("getppid", ["fentry"]), report: report).get()
        #expect(latencyLoads(kernel).map { $0.programs.map(\.loadTimeTarget) } == [["__x64_sys_getppid", "__x64_sys_getppid"],
                                                                                   ["__do_sys_getppid", "__do_sys_getppid"]])
        #expect(probe.boundTo == "__do_sys_getppid")
        #expect(probe.attempts.last?.message.contains("(__do_sys_getppid)") == true)

        kernel.failLoad(with: KernelError(stage: .load, errno: .EPERM, operation: "load lat_fentry"),
                        when: { $0.programs.first?.loadTimeTarget == "__x64_sys_getpid" })
        let before = latencyLoads(kernel).count
        let failed = planner.attach(syscall("getpid", ["fentry"]), report: report)
        guard case .failure(let failure) = failed else { Issue.record("getpid attached"); return }
        #expect(latencyLoads(kernel).count == before + 1, "EPERM is not 'not in BTF': no second binding")
        #expect(failure.attempts.map(\.errno) == [.EPERM])
        finish([probe], kernel)
    }

    @Test("A kernel that refuses task storage for the program type (EINVAL) gets the same flavour with a thread-id hash")
    func taskStorageRetry() throws {
        let kernel = FakeKernel()
        kernel.failLoad(with: KernelError(stage: .load, errno: .EINVAL, operation: "load lat_kprobe"),
                        when: { $0.object == LatencyBPF.object && $0.mapChanges[LatencyBPF.Maps.starts] == nil })
        let report = report(kernel)
        let probe = try Planner(backend: kernel, reaper: reaper).attach(function("vfs_read", ["kprobe"]), report: report).get()
        #expect(!probe.taskStorage)
        let loads = latencyLoads(kernel)
        #expect(loads.count == 2)
        #expect(loads[0].readOnly[LatencyBPF.Globals.useTaskStorage] == [1] && loads[1].readOnly[LatencyBPF.Globals.useTaskStorage] == [0])
        #expect(loads[1].mapChanges[LatencyBPF.Maps.starts] == .taskStorageToHash(maxEntries: LatencyObject.threadHashEntries))
        #expect(probe.attempts.count == 1 && probe.attempts[0].outcome == .attached)
        finish([probe], kernel)
    }

    @Test("An attach that fails half-way is rolled back (links, then the object) and the next flavour is tried")
    func halfAttachRollback() throws {
        let kernel = FakeKernel()
        kernel.failAttach(LatencyBPF.Programs.latKretprobe, errno: .ENOENT)
        kernel.failLoad(LatencyBPF.Programs.latFentry, errno: .ESRCH)
        let report = report(kernel)
        let result = Planner(backend: kernel, reaper: reaper).attach(function("not_traceable"), report: report)
        guard case .failure(let failure) = result else { Issue.record("attached"); return }
        #expect(failure.attempts.map(\.flavour) == [.fentry, .kprobe])
        #expect(failure.attempts[0].stage == .load && failure.attempts[0].errno == .ESRCH)
        #expect(failure.attempts[0].message.contains("not in the kernel's BTF"))
        #expect(failure.attempts[1].stage == .attach && failure.attempts[1].errno == .ENOENT)
        #expect(!failure.exhausted)
        reaper.drain()
        let kprobe = try #require(kernel.objects.first { $0.programs.contains(LatencyBPF.Programs.latKprobe) })
        #expect(!kprobe.isOpen)
        #expect(kernel.links.filter { $0.object == kprobe.id }.map(\.program) == [LatencyBPF.Programs.latKprobe])
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("Running out of fds or memory ends the chain: later flavours are not tried and the failure says exhausted",
          arguments: [Errno.EMFILE, .ENFILE, .ENOMEM])
    func exhaustionStopsTheChain(code: Errno) throws {
        let kernel = FakeKernel.developmentMachine()
        let report = report(kernel)
        kernel.failLoad(object: SyscallHubBPF.object, with: KernelError(stage: .load, errno: code, operation: "load hub"))
        let result = Planner(backend: kernel, reaper: reaper).attach(syscall("read"), report: report)
        guard case .failure(let failure) = result else { Issue.record("attached"); return }
        #expect(failure.exhausted)
        #expect(failure.attempts.map(\.flavour) == [.fentry, .kprobe, .tpBTF], "raw_tp and tracepoint are not tried")
        #expect(failure.attempts.last?.outcome == .error && failure.attempts.last?.message.contains("the agent ran out of") == true)
        #expect(latencyLoads(kernel).isEmpty)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A flavour this build cannot use is an unsupported attempt that says why, and the next one is tried")
    func unavailableInThisBuild() throws {
        let kernel = FakeKernel()
        let report = report(kernel)
        let base = FlavourDescriptor.syscallHubBTF
        let refused = FlavourDescriptor(id: base.id, flavour: base.flavour, places: base.places, needs: base.needs,
                                        strategy: base.strategy, measures: base.measures,
                                        unavailable: "this build's architecture has no syscall number in pt_regs", recipe: base.recipe)
        let attempt = try #require(Planner.skip(refused, report: report))
        #expect(attempt.flavour == .tpBTF && attempt.outcome == .unsupported && attempt.stage == nil)
        #expect(attempt.message == "this build's architecture has no syscall number in pt_regs")
        #if arch(x86_64)
        #expect(Planner.skip(.syscallHubBTF, report: report) == nil, "the x86-64 build can use the shared hook")
        #else
        #expect(Planner.skip(.syscallHubBTF, report: report)?.outcome == .unsupported)
        #endif
    }

    @Test("A probe's object carries its filter, where timestamps live and the process-name offsets")
    func recipeSettings() throws {
        let kernel = FakeKernel()
        let report = report(kernel)
        var spec = syscall("read", ["tracepoint"], pid: 4242)
        spec.filter?.comm = "nginx"
        let probe = try Planner(backend: kernel, reaper: reaper).attach(spec, report: report).get()
        let load = try #require(latencyLoads(kernel).first)
        let g = LatencyBPF.Globals.self
        #expect(load.readOnly[g.filterTgid] == [0x92, 0x10, 0, 0])
        #expect(load.readOnly[g.filterCommSet] == [1])
        #expect(load.readOnly[g.filterComm] == Array("nginx".utf8) + [UInt8](repeating: 0, count: 11))
        #expect(load.readOnly[g.taskGroupLeaderOffset] == [0x50, 0x09, 0, 0] && load.readOnly[g.taskCommOffset] == [0xB8, 0x0B, 0, 0])
        #expect(kernel.links.filter { $0.program.object == LatencyBPF.object }.map(\.point) == [.tracepoint(category: "syscalls", name: "sys_enter_read"),
                                                                                                 .tracepoint(category: "syscalls", name: "sys_exit_read")])
        finish([probe], kernel)
    }

    @Test("A uprobe path that is no ELF file is refused before any load, with one attempt")
    func uprobeBinaryRefused() throws {
        let kernel = FakeKernel()
        let spec = ProbeSpec(name: "u", target: ProbeTarget(type: .uprobe, path: "/etc/hostname", symbol: "malloc"))
        let result = Planner(backend: kernel, reaper: reaper).attach(spec, report: report(kernel))
        guard case .failure(let failure) = result else { Issue.record("attached"); return }
        #expect(failure.attempts.count == 1 && failure.attempts[0].stage == nil && failure.attempts[0].errno == .ENOEXEC)
        #expect(latencyLoads(kernel).isEmpty)
    }

    @Test("A spec's mechanisms pick the flavour of that name for the target type, in the spec's order")
    func specOrder() throws {
        let kernel = FakeKernel()
        let report = report(kernel)
        let planner = Planner(backend: kernel, reaper: reaper)
        let a = try planner.attach(syscall("read", ["tracepoint", "tp_btf"]), report: report).get()
        #expect(a.flavour == .tracepoint && !a.isShared && a.attempts.count == 1)
        let tp = ProbeSpec(name: "t", target: ProbeTarget(type: .tracepoint, name: "sched:sched_switch"), mechanisms: ["tp_btf"])
        let b = try planner.attach(tp, report: report).get()
        #expect(b.flavour == .tpBTF && !b.isShared && b.countsOnly)
        #expect(latencyLoads(kernel).last?.programs.map(\.loadTimeTarget) == ["sched_switch"])
        finish([a, b], kernel)
    }
}

/// Keys a flavour cannot provide are unsupported attempts naming the key; the planner moves on.
@Suite("Planner and keys")
struct PlannerKeyTests {
    let reaper = Reaper()

    @Test("A linear histogram longer than the hub's tables skips tp_btf and raw_tp (naming why) and lands on the per-syscall tracepoints")
    func longLinearSkipsHub() throws {
        let kernel = FakeKernel.developmentMachine()
        let report = CapabilityProber(backend: kernel, reaper: reaper).probe()
        reaper.drain()
        let spec = ProbeSpec(name: "p", target: ProbeTarget(type: .syscall, name: "read"),
                             aggregate: AggregateSpec(by: ["arg:fd"], value: "arg:count", histogram: HistogramSpec(kind: "linear", min: 0, max: 1000, step: 10)))
        let probe = try Planner(backend: kernel, reaper: reaper).attach(spec, report: report).get()
        #expect(probe.flavour == .tracepoint && !probe.isShared)
        let hub = probe.attempts.filter { $0.flavour == .tpBTF || $0.flavour == .rawTracepoint }
        #expect(hub.count == 2 && hub.allSatisfy { $0.outcome == .unsupported && $0.stage == nil && $0.message.contains("100 buckets") })
        // The key table is sized before load: 8-byte key, stats + 102 slots, 1,024 keys.
        let load = try #require(kernel.loadedSpecs.last { $0.object == LatencyBPF.object })
        #expect(load.mapChanges[LatencyBPF.Maps.keys] == .sizes(key: 8, value: UInt32(32 + 8 * 102), maxEntries: 1024))
        #expect(load.readOnly[LatencyBPF.Globals.keyed] == [1])
        probe.detach(reaper: reaper)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A probe without aggregate sets none of the keyed globals: its programs are today's")
    func defaultSpecUnchanged() throws {
        let kernel = FakeKernel.developmentMachine()
        let report = CapabilityProber(backend: kernel, reaper: reaper).probe()
        reaper.drain()
        let spec = ProbeSpec(name: "p", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: ["tracepoint"])
        let probe = try Planner(backend: kernel, reaper: reaper).attach(spec, report: report).get()
        let load = try #require(kernel.loadedSpecs.last { $0.object == LatencyBPF.object })
        let keyedGlobals = Set(load.readOnly.keys.map(\.name)).intersection(["keyed", "key_n", "val_kind", "count_procs", "min_latency_ns", "need_args"])
        #expect(keyedGlobals.isEmpty)
        #expect(load.mapChanges[LatencyBPF.Maps.keys] == nil)
        probe.detach(reaper: reaper)
        reaper.drain()
    }
}
