import Foundation
import Glibc
import Testing
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

    func hubObjects() -> [FakeKernel.ObjectRecord] { kernel.objects.filter { $0.spec.object == "syscall_hub" } }

    /// The `by_nr` value the hub wrote for syscall `name`: (count, slots).
    func listed(_ name: String, in object: any LoadedObject) throws -> (count: UInt32, slots: [UInt32]) {
        let nr = UInt32(try #require(SyscallTable.number(of: name)))
        let value = try #require(try object.lookup(map: "by_nr", key: Planner.bytes(nr))?.first)
        return (value.u32(at: 0), (0..<Int(value.u32(at: 0))).map { value.u32(at: 4 + 4 * $0) })
    }

    @Test("The hub's Swift constants match bpf/latency.h")
    func constantsMatchTheBPFHeader() throws {
        let header = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent().appendingPathComponent("bpf/latency.h")
        let text = try String(contentsOf: header, encoding: .utf8)
        func define(_ name: String) -> Int? {
            for line in text.split(separator: "\n") {
                let words = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
                if words.count >= 3, words[0] == "#define", words[1] == name { return Int(words[2]) }
            }
            return nil
        }
        #expect(define("HUB_PER_NR") == SyscallHub.perSyscall)
        #expect(define("HUB_MAX_NR") == SyscallHub.maxSyscallNumber)
        #expect(define("HUB_PROCS_BITS").map { 1 << $0 } == SyscallHub.processesPerSlot)
        #expect(define("TP_PROCS_BITS").map { 1 << $0 } == ProbeCounters.processTableEntries)
    }

    @Test("Many syscall probes share one hub object: one load, one pair of links, a slot each")
    func probesShareOneHub() throws {
        let planner = planner(), report = report()
        let loadsBefore = hubObjects().count
        let a = try planner.attach(spec("getppid", pid: 42), report: report).get()
        let b = try planner.attach(spec("getppid", comm: "bash"), report: report).get()
        let c = try planner.attach(spec("read"), report: report).get()
        #expect(hubObjects().count == loadsBefore + 1, "one hub object for every probe")
        #expect(kernel.openLinks.filter { $0.program.hasPrefix("hub_btf_") }.count == 2)
        #expect(a.isShared && b.isShared && c.isShared)
        #expect(a.attempts.last?.message.contains("shared by all syscall probes (syscall nr ") == true)
        let hub = try #require(planner.hubs[.tpBTF])
        #expect(hub.memberCount == 3)
        let object = try #require(kernel.openObjects.first { $0.spec.object == "syscall_hub" })
        #expect(object.programs == ["hub_btf_enter", "hub_btf_exit"])
        #expect(object.spec.programs.map(\.loadTimeTarget) == ["sys_enter", "sys_exit"])
        #expect(object.spec.mapChanges["aggs"] == .maxEntries(256) && object.spec.mapChanges["filters"] == .maxEntries(256))
        #expect(object.spec.mapChanges["procs"] == .maxEntries(256 * UInt32(SyscallHub.processesPerSlot)))
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
        let fake = try #require(kernel.openObjects.first { $0.spec.object == "syscall_hub" })
        let object = FakeObjectView(kernel: kernel, id: fake.id)
        let getppid = try listed("getppid", in: object)
        #expect(getppid.count == 2)
        #expect(Set(getppid.slots).count == 2)
        let filterA = try #require(try object.lookup(map: "filters", key: Planner.bytes(getppid.slots[0]))?.first)
        #expect(filterA.u32(at: 0) == 42 && filterA.u32(at: 4) == 0)
        let filterB = try #require(try object.lookup(map: "filters", key: Planner.bytes(getppid.slots[1]))?.first)
        #expect(filterB.u32(at: 0) == 0 && filterB.u32(at: 4) == 1 && Array(filterB[8..<12]) == Array("bash".utf8))
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
        let fake = try #require(kernel.openObjects.first { $0.spec.object == "syscall_hub" })
        let object = FakeObjectView(kernel: kernel, id: fake.id)
        let slot = try listed("getppid", in: object).slots[0]
        // Counts left behind in the slot, as a program still running for `first` would.
        var agg = [UInt8](repeating: 0, count: SyscallHub.aggValueSize)
        agg.replaceSubrange(0..<8, with: Planner.bytes(UInt64(99)))
        try object.update(map: "aggs", key: Planner.bytes(slot), value: agg)
        let procKey = Planner.bytes(slot * UInt32(SyscallHub.processesPerSlot) + 3)
        try object.update(map: "procs", key: procKey, value: Planner.bytes(UInt32(7)) + [0, 0, 0, 0] + Planner.bytes(UInt64(5)) + Array("x".utf8) + [UInt8](repeating: 0, count: 15))
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
        #expect(refused.mechanism == "tp_btf" && refused.outcome == .error && refused.errno == "EBUSY")
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
        #expect(c.attempts.first?.errno == "EBUSY" && c.attempts.first?.message.contains("is full (2 probes)") == true)
        for probe in [a, b, c] { probe.detach(reaper: reaper) }
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A hub that cannot attach is rolled back and reported like any mechanism")
    func failedHubAttachIsRolledBack() throws {
        kernel.failAttach("hub_btf_exit", errno: EPERM)
        let result = planner().attach(spec("getppid"), report: report())
        guard case .failure(let failure) = result else {
            Issue.record("attach should fail")
            return
        }
        #expect(failure.attempts.map(\.mechanism) == ["tp_btf"])
        #expect(failure.attempts.first?.stage == "attach" && failure.attempts.first?.errno == "EPERM")
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("tp_btf and raw_tracepoint probes use separate hubs")
    func oneHubPerFlavour() throws {
        let planner = planner(), report = report()
        let a = try planner.attach(spec("getppid", "tp_btf"), report: report).get()
        let b = try planner.attach(spec("getppid", "raw_tp"), report: report).get()
        #expect(a.flavour == .tpBTF && b.flavour == .rawTracepoint)
        #expect(kernel.openObjects.filter { $0.spec.object == "syscall_hub" }.map(\.programs)
            == [["hub_btf_enter", "hub_btf_exit"], ["hub_raw_enter", "hub_raw_exit"]])
        #expect(kernel.openLinks.filter { $0.program.hasPrefix("hub_raw_") }.map(\.point)
            == [.rawTracepoint(name: "sys_enter"), .rawTracepoint(name: "sys_exit")])
        a.detach(reaper: reaper)
        b.detach(reaper: reaper)
        a.detach(reaper: reaper)  // idempotent
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
    func attach(program: String, to point: AttachPoint) throws(KernelError) -> any AttachedLink { fatalError("not used") }
    func readMap(_ name: String) throws(KernelError) -> [MapEntry] { fatalError("not used") }
    func readArrayValues(map name: String, first: UInt32, count: Int, valueSize: Int) throws(KernelError) -> [UInt8] {
        try kernel.readArrayValues(object: id, map: name, first: first, count: count, valueSize: valueSize)
    }
    func lookup(map name: String, key: [UInt8]) throws(KernelError) -> [[UInt8]]? { try kernel.lookup(object: id, map: name, key: key) }
    func update(map name: String, key: [UInt8], value: [UInt8]) throws(KernelError) {
        try kernel.update(object: id, map: name, key: key, value: value)
    }
    func programStats() -> [ProgramStats] { [] }
    func close() {}
}
