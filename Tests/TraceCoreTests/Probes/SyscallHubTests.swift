import Dispatch
import Foundation
import Glibc
import Synchronization
import Testing
import CBPFLayouts
@testable import TraceCore
import TraceCoreTestSupport

/// The shared raw_syscalls hook on the fake kernel: one object for many probes, slots,
/// the per-syscall table, and detach with the last probe.
@Suite struct SyscallHubTests {
    let kernel = FakeKernel()
    let reaper = Reaper()

    func planner(slots: Int = 256) -> Planner { Planner(backend: kernel, reaper: reaper, hubSlots: slots) }
    func report() -> CapabilityReport { CapabilityProber(backend: kernel, reaper: reaper).probe() }

    func spec(_ syscall: String, _ mechanism: String = "tp_btf", pid: Int? = nil, comm: String? = nil) -> ProbeSpec {
        ProbeSpec(name: syscall, target: ProbeTarget(type: .syscall, name: syscall), mechanisms: [mechanism],
                  filter: pid == nil && comm == nil ? nil : ProbeFilter(pid: pid, comm: comm))
    }

    func hubObjects() -> [FakeKernel.ObjectRecord] { kernel.objects.filter { $0.spec.object == SyscallHubBPF.object } }

    /// The `by_nr` value the hub wrote for syscall `name`: (count, slots).
    func listed(_ name: String, in object: any LoadedObject) throws -> (count: UInt32, slots: [UInt32]) {
        let nr = UInt32(try #require(SyscallTable.number(of: name)))
        let value = try #require(try object.lookup(SyscallHubBPF.Maps.byNr, index: nr, as: hub_nr.self)?.first)
        let slots = withUnsafeBytes(of: value.slots) { Array($0.bindMemory(to: UInt32.self)) }
        return (value.count, Array(slots.prefix(Int(value.count))))
    }

    @Test("Many syscall probes share one hub object: one load, one pair of links, a slot each")
    func probesShareOneHub() throws {
        let planner = planner(), report = report()
        let loadsBefore = hubObjects().count
        let a = try planner.attach(spec("getppid", pid: 42), report: report).get()
        let b = try planner.attach(spec("getppid", comm: "bash"), report: report).get()
        let c = try planner.attach(spec("read"), report: report).get()
        #expect(hubObjects().count == loadsBefore + 1, "one hub object for every probe")
        #expect(kernel.openLinks.filter { $0.program.name.hasPrefix("hub_btf_") }.count == 2)
        #expect(a.isShared && b.isShared && c.isShared)
        #expect(a.attempts.last?.message.contains("shared by all syscall probes (syscall nr ") == true)
        let hub = try #require(planner.hubs[.tpBTF])
        #expect(hub.memberCount == 3)
        let object = try #require(kernel.openObjects.first { $0.spec.object == SyscallHubBPF.object })
        #expect(object.programs == [SyscallHubBPF.Programs.hubBtfEnter, SyscallHubBPF.Programs.hubBtfExit])
        #expect(object.spec.programs.map(\.loadTimeTarget) == ["sys_enter", "sys_exit"])
        let maps = SyscallHubBPF.Maps.self
        #expect(object.spec.mapChanges[maps.aggs] == .maxEntries(256) && object.spec.mapChanges[maps.filters] == .maxEntries(256))
        #expect(object.spec.mapChanges[maps.procs] == .maxEntries(256 * UInt32(SyscallHub.processesPerSlot)))
        #expect(object.spec.readOnly[SyscallHubBPF.Globals.taskCommOffset] == [0xB8, 0x0B, 0, 0], "the process-name offsets from BTF (3000)")
        for probe in [a, b, c] { probe.detach(reaper: reaper) }
        reaper.drain()
        #expect(hub.memberCount == 0)
        #expect(!hub.isLoaded)
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("The hub lists each syscall's slots and writes each probe's filter")
    func tablesAndFilters() throws {
        let planner = planner(), report = report()
        let a = try planner.attach(spec("getppid", pid: 42), report: report).get()
        let b = try planner.attach(spec("getppid", comm: "bash"), report: report).get()
        let fake = try #require(kernel.openObjects.first { $0.spec.object == SyscallHubBPF.object })
        let object = FakeObjectView(kernel: kernel, id: fake.id)
        let getppid = try listed("getppid", in: object)
        #expect(getppid.count == 2)
        #expect(Set(getppid.slots).count == 2)
        let filterA = try #require(try object.lookup(SyscallHubBPF.Maps.filters, index: getppid.slots[0], as: hub_filter.self)?.first)
        #expect(filterA.tgid == 42 && filterA.comm_set == 0)
        let filterB = try #require(try object.lookup(SyscallHubBPF.Maps.filters, index: getppid.slots[1], as: hub_filter.self)?.first)
        #expect(filterB.tgid == 0 && filterB.comm_set == 1 && cString(filterB.comm) == "bash")
        a.detach(reaper: reaper)
        #expect(try listed("getppid", in: object) == (1, [getppid.slots[1]]))
        b.detach(reaper: reaper)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A slot is cleared when it is taken again: a new probe never inherits counts")
    func reusedSlotStartsFromZero() throws {
        let planner = planner(), report = report()
        let keep = try planner.attach(spec("getpid"), report: report).get()  // holds the hub loaded
        let first = try planner.attach(spec("getppid"), report: report).get()
        let fake = try #require(kernel.openObjects.first { $0.spec.object == SyscallHubBPF.object })
        let object = FakeObjectView(kernel: kernel, id: fake.id)
        let slot = try listed("getppid", in: object).slots[0]
        // Counts left behind in the slot, as a program still running for `first` would.
        var agg = hub_agg()
        agg.stats.calls = 99
        try object.update(SyscallHubBPF.Maps.aggs, index: slot, to: agg)
        var proc = tp_proc()
        proc.tgid = 7
        proc.calls = 5
        setCString(&proc.comm, "x")
        try object.update(SyscallHubBPF.Maps.procs, index: slot * UInt32(SyscallHub.processesPerSlot) + 3, to: proc)
        let leftOver = try first.read()
        #expect(leftOver.calls == 99 && leftOver.processes.map(\.pid) == [7] && leftOver.processes.first?.comm == "x")
        first.detach(reaper: reaper)
        let second = try planner.attach(spec("read"), report: report).get()
        #expect(try listed("read", in: object).slots == [slot], "the freed slot is taken again")
        let counters = try second.read()
        #expect(counters.calls == 0 && counters.processes.isEmpty)
        for probe in [keep, second] { probe.detach(reaper: reaper) }
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("Past the per-syscall limit the planner moves on to the next mechanism, and says why")
    func perSyscallLimitFallsBack() throws {
        let planner = planner(), report = report()
        var probes: [AttachedProbe] = []
        for _ in 0..<SyscallHub.perSyscall {
            probes.append(try planner.attach(spec("getppid"), report: report).get())
        }
        let spec = ProbeSpec(name: "x", target: ProbeTarget(type: .syscall, name: "getppid"), mechanisms: ["tp_btf", "tracepoint"])
        let extra = try planner.attach(spec, report: report).get()
        #expect(extra.flavour == .tracepoint)
        let refused = try #require(extra.attempts.first)
        #expect(refused.flavour == .tpBTF && refused.outcome == .error && refused.errno == .EBUSY)
        #expect(refused.message.contains("already serves \(SyscallHub.perSyscall) probes"))
        for probe in probes + [extra] { probe.detach(reaper: reaper) }
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A full hub refuses the next probe, which moves on to the next mechanism")
    func fullHubFallsBack() throws {
        let planner = planner(slots: 2), report = report()
        let a = try planner.attach(spec("getppid"), report: report).get()
        let b = try planner.attach(spec("getpid"), report: report).get()
        let spec = ProbeSpec(name: "x", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: ["tp_btf", "tracepoint"])
        let c = try planner.attach(spec, report: report).get()
        #expect(c.flavour == .tracepoint)
        #expect(c.attempts.first?.errno == .EBUSY && c.attempts.first?.message.contains("is full (2 probes)") == true)
        for probe in [a, b, c] { probe.detach(reaper: reaper) }
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A hub that cannot attach is rolled back and reported like any mechanism")
    func failedHubAttachIsRolledBack() throws {
        kernel.failAttach(SyscallHubBPF.Programs.hubBtfExit, errno: .EPERM)
        let result = planner().attach(spec("getppid"), report: report())
        guard case .failure(let failure) = result else {
            Issue.record("attach should fail")
            return
        }
        #expect(failure.attempts.map(\.flavour) == [.tpBTF])
        #expect(failure.attempts.first?.stage == .attach && failure.attempts.first?.errno == .EPERM)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("tp_btf and raw_tracepoint probes use separate hubs")
    func oneHubPerFlavour() throws {
        let planner = planner(), report = report()
        let a = try planner.attach(spec("getppid", "tp_btf"), report: report).get()
        let b = try planner.attach(spec("getppid", "raw_tp"), report: report).get()
        #expect(a.flavour == .tpBTF && b.flavour == .rawTracepoint)
        let p = SyscallHubBPF.Programs.self
        #expect(kernel.openObjects.filter { $0.spec.object == SyscallHubBPF.object }.map(\.programs)
            == [[p.hubBtfEnter, p.hubBtfExit], [p.hubRawEnter, p.hubRawExit]])
        #expect(kernel.openLinks.filter { $0.program.name.hasPrefix("hub_raw_") }.map(\.point)
            == [.rawTracepoint(name: "sys_enter"), .rawTracepoint(name: "sys_exit")])
        a.detach(reaper: reaper)
        b.detach(reaper: reaper)
        a.detach(reaper: reaper)  // idempotent
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A hub load holds no lock readers need: while it runs, reads of the hub answer at once")
    func loadDoesNotBlockReaders() throws {
        let planner = planner(), report = report()
        let hub = try #require(planner.hubs[.tpBTF])
        let gate = kernel.holdLoads()
        let joined = DispatchSemaphore(value: 0)
        let result = Mutex<Result<AttachedProbe, AttachFailure>?>(nil)
        Thread {
            result.withLock { $0 = planner.attach(spec("getppid"), report: report) }
            joined.signal()
        }.start()
        #expect(gate.waitForLoad(timeout: 10), "the join never started loading")
        let answered = DispatchSemaphore(value: 0)
        Thread {
            _ = hub.memberCount
            _ = hub.isLoaded
            answered.signal()
        }.start()
        let readWhileLoading = answered.wait(timeout: .now() + 5) == .success
        gate.open()
        #expect(readWhileLoading, "reading the hub waited for its load")
        #expect(joined.wait(timeout: .now() + 10) == .success)
        let probe = try #require(try result.withLock { $0 }?.get())
        #expect(hub.memberCount == 1)
        probe.detach(reaper: reaper)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }
}

/// Map access to a fake object by id, for tests that inspect what the hub wrote.
final class FakeObjectView: LoadedObject {
    let kernel: FakeKernel
    let id: Int
    init(kernel: FakeKernel, id: Int) {
        self.kernel = kernel
        self.id = id
    }
    func attach(program: BPFProgramID, to point: AttachPoint) throws(KernelError) -> any AttachedLink { fatalError("not used") }
    func readMap(_ name: BPFMapID) throws(KernelError) -> [MapEntry] { fatalError("not used") }
    func readArrayValues(map name: BPFMapID, first: UInt32, count: Int, valueSize: Int) throws(KernelError) -> [UInt8] {
        try kernel.readArrayValues(object: id, map: name, first: first, count: count, valueSize: valueSize)
    }
    func lookup(map name: BPFMapID, key: [UInt8]) throws(KernelError) -> [[UInt8]]? { try kernel.lookup(object: id, map: name, key: key) }
    func update(map name: BPFMapID, key: [UInt8], value: [UInt8]) throws(KernelError) {
        try kernel.update(object: id, map: name, key: key, value: value)
    }
    func setInnerMap(_ outer: BPFMapID, index: UInt32, maxEntries: UInt32) throws(KernelError) { fatalError("not used") }
    func removeInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError) { fatalError("not used") }
    func readInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError) -> [MapEntry] { fatalError("not used") }
    func programStats() -> [ProgramStats] { [] }
    func close() {}
}
