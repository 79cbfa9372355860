import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// Probes `kernel` with a private reaper and waits until everything handed to it is closed.
private func probe(_ kernel: FakeKernel, disabled: Set<Mechanism> = []) -> CapabilityReport {
    let reaper = Reaper()
    let report = CapabilityProber(backend: kernel, disabled: disabled, reaper: reaper).probe()
    reaper.drain()
    return report
}

private func result(_ report: CapabilityReport, _ mechanism: Mechanism) throws -> CapabilityResult {
    try #require(report.result(for: mechanism), "the report has no entry for \(mechanism.rawValue)")
}

private func result(_ report: CapabilityReport, _ feature: Feature) throws -> CapabilityResult {
    try #require(report.result(for: feature), "the report has no entry for \(feature.rawValue)")
}

private func chain(_ report: CapabilityReport, _ target: TargetType) -> [String: Bool] {
    Dictionary(uniqueKeysWithValues: (report.chains[target.rawValue] ?? []).map { ($0.mechanism.rawValue, $0.usable) })
}

@Suite("CapabilityProber on the development machine fake")
struct CapabilityProberDevelopmentMachineTests {
    @Test("fentry and fexit are denied at load with EPERM: function tracing denied by the kernel",
          arguments: [Mechanism.fentry, .fexit])
    func fentryDenied(mechanism: Mechanism) throws {
        let report = probe(.developmentMachine())
        let entry = try result(report, mechanism)
        #expect(entry.status == .denied)
        #expect(entry.stage == .load)
        #expect(entry.errno == .EPERM)
        #expect(entry.message.contains("function tracing denied by the kernel"))
        #expect(entry.disabled == nil)
    }

    @Test("kprobe and kretprobe are unsupported at attach with ENOENT, naming CONFIG_KPROBES",
          arguments: [Mechanism.kprobe, .kretprobe])
    func kprobesUnsupported(mechanism: Mechanism) throws {
        let entry = try result(probe(.developmentMachine()), mechanism)
        #expect(entry.status == .unsupported)
        #expect(entry.stage == .attach)
        #expect(entry.errno == .ENOENT)
        #expect(entry.message.contains("CONFIG_KPROBES"))
    }

    @Test("kprobe_multi is unsupported at attach with EOPNOTSUPP")
    func kprobeMultiUnsupported() throws {
        let entry = try result(probe(.developmentMachine()), .kprobeMulti)
        #expect(entry.status == .unsupported)
        #expect(entry.stage == .attach)
        #expect(entry.errno == .EOPNOTSUPP)
    }

    @Test("tracepoints, raw tracepoints, tp_btf, uprobes and perf events are supported after firing",
          arguments: [Mechanism.tracepoint, .rawTracepoint, .tpBTF, .uprobe, .uretprobe, .perfEvent])
    func workingMechanismsSupported(mechanism: Mechanism) throws {
        let entry = try result(probe(.developmentMachine()), mechanism)
        #expect(entry.status == .supported)
        #expect(entry.stage == .attach)
        #expect(entry.errno == nil)
        #expect(entry.message == "loaded, attached and fired")
        #expect(entry.durationMicroseconds >= 0)
    }

    @Test("The report lists every mechanism and feature once, in declaration order, with the host's facts")
    func reportShape() {
        let kernel = FakeKernel.developmentMachine()
        let report = probe(kernel)
        #expect(report.mechanisms.map(\.name) == Mechanism.allCases.map(\.rawValue))
        #expect(report.features.map(\.name) == Feature.allCases.map(\.rawValue))
        #expect(report.kernel == KernelFacts.developmentMachine())
        #expect(report.durationMilliseconds >= 0)
        #expect(Set(report.chains.keys) == Set(TargetType.allCases.map(\.rawValue)))
    }

    @Test("fentry and fexit carry their bpftrace aliases kfunc and kretfunc; others none")
    func aliases() throws {
        let report = probe(.developmentMachine())
        #expect(try result(report, .fentry).aliases == ["kfunc"])
        #expect(try result(report, .fexit).aliases == ["kretfunc"])
        #expect(try result(report, .tracepoint).aliases == nil)
    }

    @Test("Chains: only the tracepoint-based steps and uprobes are usable")
    func chainsUsable() {
        let report = probe(.developmentMachine())
        #expect(chain(report, .function) == ["fentry": false, "kprobe": false])
        #expect(chain(report, .syscall) == ["fentry": false, "kprobe": false, "tracepoint": true, "tp_btf": true, "raw_tracepoint": true])
        #expect(chain(report, .tracepoint) == ["tp_btf": true, "raw_tracepoint": true, "tracepoint": true])
        #expect(chain(report, .uprobe) == ["uprobe": true])
        #expect(report.chains["syscall"]?.map(\.mechanism.rawValue) == ["fentry", "kprobe", "tp_btf", "raw_tracepoint", "tracepoint"])
        #expect(report.chains["function"]?.first?.requires == [.fentry, .fexit])
    }

    @Test("Every object and link is closed after the reaper drains, links before their objects")
    func nothingLeaks() {
        let kernel = FakeKernel.developmentMachine()
        _ = probe(kernel)
        #expect(kernel.isClean, "\(kernel.leakReport)")
        #expect(kernel.openObjects.isEmpty)
        #expect(kernel.openLinks.isEmpty)
        // 11 mechanisms: 2 fail to load, 9 load (+1 kfunc feature object); 3 fail to attach.
        #expect(kernel.loadCount == 10)
        #expect(kernel.closedObjectCount == 10)
        #expect(kernel.attachCount == 6)
        #expect(kernel.closedLinkCount == 6)
        #expect(kernel.objects.allSatisfy { !$0.droppedOpen })
    }

    @Test("An attach failure rolls back: the loaded object is closed and no link remains")
    func attachFailureClosesObject() throws {
        let kernel = FakeKernel.developmentMachine()
        _ = probe(kernel)
        let kprobeObject = try #require(kernel.objects.first { $0.programs.map(\.name) == ["cap_kprobe"] })
        #expect(!kprobeObject.isOpen)
        #expect(!kernel.links.contains { $0.program.name == "cap_kprobe" })
    }
}

@Suite("CapabilityProber plans and scripted outcomes")
struct CapabilityProberScriptedTests {
    @Test("On a kernel where everything works, every mechanism, feature and chain is usable")
    func everythingSupported() {
        let report = probe(FakeKernel())
        #expect(report.mechanisms.allSatisfy { $0.status == .supported })
        #expect(report.features.allSatisfy { $0.status == .supported && $0.stage == .load && $0.errno == nil })
        #expect(report.chains.values.allSatisfy { $0.allSatisfy(\.usable) })
    }

    @Test("Each mechanism loads its own program from the capability object, with target_tgid set to our pid")
    func loadSpecs() throws {
        let kernel = FakeKernel()
        _ = probe(kernel)
        let specs = kernel.loadedSpecs.filter { $0.object == CapabilityBPF.object }
        #expect(specs.count == Mechanism.allCases.count)
        let pid = withUnsafeBytes(of: UInt32(getpid()).littleEndian) { [UInt8]($0) }
        for mechanism in Mechanism.allCases {
            let spec = try #require(specs.first { $0.programs.map(\.name) == ["cap_\(mechanism.rawValue)"] },
                                    "no load of cap_\(mechanism.rawValue)")
            #expect(spec.readOnly == [CapabilityBPF.Globals.targetTgid: pid])
        }
        let targets = Dictionary(uniqueKeysWithValues: specs.map { ($0.programs[0].name, $0.programs[0].loadTimeTarget) })
        #expect(targets["cap_fentry"] == "__x64_sys_getpgid")
        #expect(targets["cap_fexit"] == "__x64_sys_getpgid")
        #expect(targets["cap_tp_btf"] == "sys_enter")
        #expect(targets["cap_kprobe"] == .some(nil))
        #expect(kernel.loadedSpecs.contains { $0.object == FeaturesBPF.object && $0.programs.map(\.name) == ["feat_kfunc_calls"] })
    }

    @Test("Each mechanism attaches at the planned point: getpgid's kernel entry, its tracepoint, sys_enter, our executable")
    func attachPoints() {
        let kernel = FakeKernel(executablePath: "/opt/agent/traceplane")
        _ = probe(kernel)
        let points = Dictionary(uniqueKeysWithValues: kernel.links.map { ($0.program.name, $0.point) })
        let pid = getpid()
        #expect(points["cap_fentry"] == .loadTimeTarget)
        #expect(points["cap_kprobe"] == .kprobe(function: "__x64_sys_getpgid", retprobe: false))
        #expect(points["cap_kretprobe"] == .kprobe(function: "__x64_sys_getpgid", retprobe: true))
        #expect(points["cap_kprobe_multi"] == .kprobeMulti(pattern: "__x64_sys_getpgid", retprobe: false))
        #expect(points["cap_tracepoint"] == .tracepoint(category: "syscalls", name: "sys_enter_getpgid"))
        #expect(points["cap_raw_tracepoint"] == .rawTracepoint(name: "sys_enter"))
        #expect(points["cap_tp_btf"] == .loadTimeTarget)
        #expect(points["cap_uprobe"] == .uprobe(binary: "/opt/agent/traceplane", symbol: "traceplane_uprobe_target", pid: pid, retprobe: false))
        #expect(points["cap_uretprobe"] == .uprobe(binary: "/opt/agent/traceplane", symbol: "traceplane_uprobe_target", pid: pid, retprobe: true))
        guard case .cpuClock = points["cap_perf_event"] else {
            Issue.record("perf_event did not attach to a cpu-clock event: \(String(describing: points["cap_perf_event"]))")
            return
        }
    }

    @Test("Without a known syscall prefix the kernel entry is plain sys_getpgid")
    func noSyscallPrefix() {
        let kernel = FakeKernel(facts: .canned(syscallPrefix: nil))
        _ = probe(kernel)
        #expect(kernel.loadedSpecs.first { $0.programs.first?.name == "cap_fentry" }?.programs.first?.loadTimeTarget == "sys_getpgid")
        #expect(kernel.links.first { $0.program.name == "cap_kprobe" }?.point == .kprobe(function: "sys_getpgid", retprobe: false))
    }

    @Test("A mechanism switched off by the operator is reported disabled by configuration and never loaded")
    func disabledByConfiguration() throws {
        let kernel = FakeKernel()
        let report = probe(kernel, disabled: [.fentry])
        let fentry = try result(report, .fentry)
        #expect(fentry.status == .unsupported)
        #expect(fentry.disabled == true)
        #expect(fentry.stage == nil)
        #expect(fentry.errno == nil)
        #expect(fentry.message.contains("disabled by configuration"))
        #expect(fentry.message.contains("--disable-mechanism fentry"))
        #expect(fentry.aliases == ["kfunc"])
        #expect(!kernel.loadedSpecs.contains { $0.programs.contains { $0.name == "cap_fentry" } })
        // fexit is still probed, but the fentry chain step needs both.
        #expect(try result(report, .fexit).status == .supported)
        #expect(chain(report, .function)["fentry"] == false)
        #expect(chain(report, .function)["kprobe"] == true)
    }

    @Test("A program that attaches but never fires is unsupported at attach, without errno, and is cleaned up")
    func neverFired() throws {
        let kernel = FakeKernel()
        kernel.neverFires(CapabilityBPF.Programs.capTracepoint)
        let report = probe(kernel)
        let entry = try result(report, .tracepoint)
        #expect(entry.status == .unsupported)
        #expect(entry.stage == .attach)
        #expect(entry.errno == nil)
        #expect(entry.message == Classifier.neverFired(.tracepoint).message)
        #expect(chain(report, .tracepoint)["tracepoint"] == false)
        #expect(kernel.isClean, "\(kernel.leakReport)")
        // It was fired three times before giving up.
        #expect(kernel.links.contains { $0.program.name == "cap_tracepoint" })
        #expect(kernel.calls.filter { $0 == .fire(.getpgid) }.count >= 3)
    }

    @Test("A perf event that never fires is spun for doubling CPU time (3 to 48 ms) before it is called unsupported")
    func perfEventSpinsLonger() throws {
        let kernel = FakeKernel()
        kernel.neverFires(CapabilityBPF.Programs.capPerfEvent)
        let report = probe(kernel)
        #expect(try result(report, .perfEvent).status == .unsupported)
        let spins = kernel.calls.compactMap { call -> Int? in if case .fire(.spin(let ms)) = call { ms } else { nil } }
        #expect(spins == [3, 6, 12, 24, 48], "\(spins)")
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A uretprobe failure makes the uprobe chain step unusable although uprobe works")
    func chainNeedsBothHalves() throws {
        let kernel = FakeKernel()
        kernel.failAttach(CapabilityBPF.Programs.capUretprobe, errno: .EINVAL)
        let report = probe(kernel)
        #expect(try result(report, .uprobe).status == .supported)
        #expect(try result(report, .uretprobe).status == .error)
        #expect(chain(report, .uprobe) == ["uprobe": false])
    }

    @Test("A failure to read the hits map is an error at attach, with the read errno")
    func hitsReadFailure() throws {
        let kernel = FakeKernel()
        kernel.failMapRead(CapabilityBPF.Maps.hits, of: CapabilityBPF.Programs.capRawTracepoint,
                           with: KernelError(stage: .read, errno: .EFAULT, operation: "read map hits"))
        let entry = try result(probe(kernel), .rawTracepoint)
        #expect(entry.status == .error)
        #expect(entry.stage == .attach)
        #expect(entry.errno == .EFAULT)
        #expect(entry.message.contains("counter map"))
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A failure to open the embedded object is reported at stage load as an error")
    func openFailureReportedAtLoad() throws {
        let kernel = FakeKernel()
        kernel.failLoad(CapabilityBPF.Programs.capUprobe, with: KernelError(stage: .open, errno: .EINVAL, operation: "open BPF object capability"))
        let entry = try result(probe(kernel), .uprobe)
        #expect(entry.status == .error)
        #expect(entry.stage == .load)
        #expect(entry.errno == .EINVAL)
    }

    @Test("ESRCH at load of fentry is unsupported: the function is not in BTF")
    func fentryMissingFromBTF() throws {
        let kernel = FakeKernel()
        kernel.failLoad(CapabilityBPF.Programs.capFentry, errno: .ESRCH)
        let entry = try result(probe(kernel), .fentry)
        #expect(entry.status == .unsupported)
        #expect(entry.stage == .load)
        #expect(entry.errno == .ESRCH)
        #expect(entry.message.contains("not in the kernel's BTF"))
    }

    @Test("An unprivileged agent's EPERM is denied for lack of privileges")
    func unprivileged() throws {
        let kernel = FakeKernel(facts: .developmentMachine(privileged: false))
        kernel.failLoad(CapabilityBPF.Programs.capTracepoint, errno: .EPERM)
        let entry = try result(probe(kernel), .tracepoint)
        #expect(entry.status == .denied)
        #expect(entry.message.contains("lacks privileges"))
    }

    @Test("EBUSY at attach is an error")
    func busyIsError() throws {
        let kernel = FakeKernel()
        kernel.failAttach(at: .rawTracepoint(name: "sys_enter"), errno: .EBUSY)
        let entry = try result(probe(kernel), .rawTracepoint)
        #expect(entry.status == .error)
        #expect(entry.stage == .attach)
        #expect(entry.errno == .EBUSY)
        #expect(entry.message.contains("busy"))
    }
}

@Suite("CapabilityProber features")
struct CapabilityProberFeatureTests {
    @Test("Host feature failures map EPERM/EACCES to denied, 'not there' errnos to unsupported, others to error")
    func featureStatuses() throws {
        let kernel = FakeKernel()
        kernel.fakeHost.failFeature(.ringBuffer, errno: .EPERM, operation: "create a ring buffer map")
        kernel.fakeHost.failFeature(.taskStorage, errno: .EINVAL)
        kernel.fakeHost.failFeature(.bpfLink, errno: .EBUSY, stage: .attach)
        kernel.fakeHost.failFeature(.bpfCookie, errno: .ENOTSUPP)
        let report = probe(kernel)

        let ring = try result(report, .ringBuffer)
        #expect(ring.status == .denied)
        #expect(ring.errno == .EPERM)
        #expect(ring.message == "create a ring buffer map was denied by the kernel")

        let task = try result(report, .taskStorage)
        #expect(task.status == .unsupported)
        #expect(task.errno == .EINVAL)
        #expect(task.message.contains("hash keyed by thread id"))

        let link = try result(report, .bpfLink)
        #expect(link.status == .error)
        #expect(link.stage == .attach)
        #expect(link.errno == .EBUSY)

        let cookie = try result(report, .bpfCookie)
        #expect(cookie.status == .unsupported)
        #expect(cookie.errno == .ENOTSUPP)

        #expect(try result(report, .vmlinuxBTF).status == .supported)
    }

    @Test("Every feature but BPF kfunc calls is asked of the host; kfunc calls load a real program")
    func featuresAskedOfHost() {
        let kernel = FakeKernel()
        _ = probe(kernel)
        let checked = Set(kernel.calls.compactMap { if case .check(let f) = $0 { f } else { nil } })
        #expect(checked == Set(Feature.allCases).subtracting([.bpfKfuncCalls]))
        #expect(kernel.calls.filter { $0 == .inspect }.count == 1)
    }

    @Test("BPF kfunc calls are unsupported when the kfunc program is rejected, and the detail is kept")
    func kfuncCallsRejected() throws {
        let kernel = FakeKernel()
        kernel.failLoad(FeaturesBPF.Programs.featKfuncCalls, errno: .EINVAL, detail: "verifier: calling kernel function is not supported")
        let entry = try result(probe(kernel), .bpfKfuncCalls)
        #expect(entry.status == .unsupported)
        #expect(entry.stage == .load)
        #expect(entry.errno == .EINVAL)
        #expect(entry.message.contains("BPF kfunc calls are not available"))
        #expect(entry.message.contains("calling kernel function is not supported"))
    }

    @Test("The kfunc program's object is closed after the check")
    func kfuncObjectClosed() {
        let kernel = FakeKernel()
        _ = probe(kernel)
        let kfunc = kernel.objects.filter { $0.spec.object == FeaturesBPF.object }
        #expect(kfunc.count == 1)
        #expect(kfunc.allSatisfy { !$0.isOpen })
    }
}
