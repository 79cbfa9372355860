import Foundation
import CKernelOracle
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// The kernel side of budgets, driven directly (no controller): 1-in-N sampling weights,
/// suspension by the control map, and parking (programs detached) on every flavour a
/// syscall probe takes here. The calls are this thread's, pinned to one CPU, so each CPU's
/// sampling tick is known and every count is exact.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("BudgetKernelTests") || RootRequirement.mustRun,
                                               "needs root and a real kernel"))
struct BudgetKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))

    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    /// Makes `n` getppid calls from this thread on one CPU.
    static func calls(_ n: Int) {
        let made = oracle_getppid_on_cpu(0, n)
        #expect(made == n, "pinning to CPU 0: \(made)")
    }

    static func counts(_ probe: AttachedProbe) throws -> (calls: UInt64, seen: UInt64, estimated: UInt64, histogram: UInt64, process: UInt64) {
        let c = try probe.read()
        return (c.calls, c.seen, c.estimated, c.buckets.reduce(0) { $0 + $1.count }, c.processes.first?.calls ?? 0)
    }

    @Test("1-in-4 counts every 4th call 4 times; suspended records nothing but sees every call; parked detaches the links",
          arguments: ["tp_btf", "raw_tracepoint", "tracepoint"])
    func samplingSuspensionParking(mechanism: String) async throws {
        Reaper.shared.drain()
        let report = await Self.store.get()
        let planner = Planner(backend: Self.backend, budgetsEveryProbe: true)
        let spec = ProbeSpec(name: "budget-\(mechanism)", target: ProbeTarget(type: .syscall, name: "getppid"), mechanisms: [mechanism],
                             filter: ProbeFilter(pid: Int(getpid())))
        let linksBefore = FDCensus.take().bpfLinks
        let probe = try planner.attach(spec, report: report).get()
        #expect(probe.budgeted && probe.flavour.rawValue == mechanism)
        let linksAttached = FDCensus.take().bpfLinks
        #expect(linksAttached == linksBefore + 2, "entry and exit programs")

        Self.calls(1_000)
        var c = try Self.counts(probe)
        #expect(c == (1_000, 1_000, 0, 1_000, 1_000), "every call recorded: \(c)")

        try probe.setBudget(sampleEvery: 4, suspended: false)
        Self.calls(1_000) // 250 recorded, each counted 4 times
        c = try Self.counts(probe)
        #expect(c == (2_000, 2_000, 1_000, 2_000, 2_000), "\(c)")
        Self.calls(3) // three calls before the next sample: none recorded yet
        c = try Self.counts(probe)
        #expect(c.calls == 2_000 && c.seen == 2_003, "\(c)")
        Self.calls(1) // the 4th: recorded, counted 4 times
        c = try Self.counts(probe)
        #expect(c == (2_004, 2_004, 1_004, 2_004, 2_004), "\(c)")

        try probe.setBudget(sampleEvery: 1, suspended: true)
        Self.calls(500)
        c = try Self.counts(probe)
        #expect(c.calls == 2_004 && c.seen == 2_504 && c.histogram == 2_004, "suspended: \(c)")

        try probe.park(reaper: .shared)
        Reaper.shared.drain()
        #expect(probe.isParked && FDCensus.take().bpfLinks == linksBefore, "parked: no link of ours left")
        Self.calls(500)
        c = try Self.counts(probe)
        #expect(c.calls == 2_004 && c.seen == 2_504, "parked: nothing runs: \(c)")

        try probe.setBudget(sampleEvery: 1, suspended: false)
        try probe.unpark(reaper: .shared)
        #expect(!probe.isParked && FDCensus.take().bpfLinks == linksAttached)
        Self.calls(100)
        c = try Self.counts(probe)
        #expect(c == (2_104, 2_604, 1_004, 2_104, 2_104), "attached again, every call: \(c)")

        probe.detach(reaper: .shared)
        Reaper.shared.drain()
        #expect(FDCensus.take().bpfLinks == linksBefore)
        #expect(await KernelCensus.settledPrograms().isEmpty, "nothing of ours left loaded")
    }

    @Test("a parked probe of the shared hook lets the hook detach only when every member is parked")
    func hubDetachesWhenAllParked() async throws {
        Reaper.shared.drain()
        let report = await Self.store.get()
        let planner = Planner(backend: Self.backend, budgetsEveryProbe: true)
        func spec(_ name: String) -> ProbeSpec {
            ProbeSpec(name: name, target: ProbeTarget(type: .syscall, name: "getppid"), mechanisms: ["tp_btf"], filter: ProbeFilter(pid: Int(getpid())))
        }
        let before = FDCensus.take().bpfLinks
        let a = try planner.attach(spec("a"), report: report).get()
        let b = try planner.attach(spec("b"), report: report).get()
        #expect(FDCensus.take().bpfLinks == before + 2, "one program pair for both")
        try a.park(reaper: .shared)
        Reaper.shared.drain()
        #expect(FDCensus.take().bpfLinks == before + 2, "b still needs the hook")
        Self.calls(100)
        #expect(try a.read().calls == 0 && b.read().calls == 100)
        try b.park(reaper: .shared)
        Reaper.shared.drain()
        #expect(FDCensus.take().bpfLinks == before, "every member parked: the hook is detached")
        Self.calls(100)
        try a.unpark(reaper: .shared)
        #expect(FDCensus.take().bpfLinks == before + 2)
        Self.calls(10)
        #expect(try a.read().calls == 10 && b.read().calls == 100)
        b.detach(reaper: .shared)
        a.detach(reaper: .shared)
        Reaper.shared.drain()
        #expect(FDCensus.take().bpfLinks == before)
        #expect(await KernelCensus.settledPrograms().isEmpty)
    }
}
