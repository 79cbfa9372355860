import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// The shared raw_syscalls hook on the real kernel: many probes, one program pair, exact
/// and separate counts, nothing left once the last probe leaves.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("SyscallHubKernelTests") || RootRequirement.mustRun,
                                               "needs root and a real kernel"))
struct SyscallHubKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))
    static var pid: Int { Int(getpid()) }

    init() async throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        try await Task.sleep(for: .milliseconds(1))
    }

    func manager() async -> ProbeManager {
        let report = await Self.store.get()
        return ProbeManager(planner: Planner(backend: Self.backend), report: { report })
    }

    static func hubPrograms() -> [String] {
        KernelCensus.programIDs().map(KernelCensus.programName).filter { $0.hasPrefix("hub_") }.sorted()
    }

    func spec(_ name: String, _ syscall: String, _ mechanism: String, filter: ProbeFilter) -> ProbeSpec {
        ProbeSpec(name: name, target: ProbeTarget(type: .syscall, name: syscall), mechanisms: [mechanism], filter: filter)
    }

    @Test("Probes sharing the hook keep exact, separate counts; one program pair serves them all",
          arguments: ["tp_btf", "raw_tracepoint"])
    func separateExactCounts(mechanism: String) async throws {
        Reaper.shared.drain()
        #expect(await KernelCensus.settledPrograms().isEmpty, "programs of an earlier test are still loaded")
        let manager = await manager()
        let me = try String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        // Two probes on one syscall with different filters, one on another syscall.
        _ = try await manager.create(spec("by-pid", "getppid", mechanism, filter: ProbeFilter(pid: Self.pid)))
        _ = try await manager.create(spec("by-comm", "getppid", mechanism, filter: ProbeFilter(comm: me)))
        _ = try await manager.create(spec("no-one", "getppid", mechanism, filter: ProbeFilter(comm: "no-such-comm")))
        _ = try await manager.create(spec("other", "getpgid", mechanism, filter: ProbeFilter(pid: Self.pid)))
        let prefix = mechanism == "tp_btf" ? "hub_btf_" : "hub_raw_"
        #expect(Self.hubPrograms() == [prefix + "enter", prefix + "exit"], "one shared pair, whatever the number of probes")
        let n = 1_777, m = 333
        for _ in 0..<n { _ = getppid() }
        for _ in 0..<m { _ = getpgid(0) }
        for (name, expected) in [("by-pid", n), ("by-comm", n), ("no-one", 0), ("other", m)] {
            let metrics = try await manager.metrics(name)
            #expect(metrics.mechanism.rawValue == mechanism)
            #expect(metrics.calls == UInt64(expected), "\(name)")
            let latency = try #require(metrics.latencyNanoseconds)
            #expect(latency.count == UInt64(expected) && latency.buckets.reduce(0) { $0 + $1.count } == UInt64(expected), "\(name)")
            if expected > 0 {
                #expect(metrics.byProcess.first?.pid == Self.pid && metrics.byProcess.first?.calls == UInt64(expected), "\(name)")
            } else {
                #expect(metrics.byProcess.isEmpty, "\(name)")
            }
        }
        await manager.removeAll()
        Reaper.shared.drain()
        #expect(await KernelCensus.settledPrograms().isEmpty, "the hub is detached with its last probe")
    }

    @Test("A probe that takes a freed slot starts from zero")
    func freedSlotStartsFromZero() async throws {
        let manager = await manager()
        _ = try await manager.create(spec("anchor", "getpgid", "tp_btf", filter: ProbeFilter(pid: Self.pid)))
        _ = try await manager.create(spec("first", "getppid", "tp_btf", filter: ProbeFilter(pid: Self.pid)))
        for _ in 0..<500 { _ = getppid() }
        #expect(try await manager.metrics("first").calls == 500)
        try await manager.delete("first")
        _ = try await manager.create(spec("second", "getppid", "tp_btf", filter: ProbeFilter(pid: Self.pid)))
        for _ in 0..<42 { _ = getppid() }
        let metrics = try await manager.metrics("second")
        #expect(metrics.calls == 42)
        #expect(metrics.byProcess.map(\.calls) == [42])
        await manager.removeAll()
    }

    @Test("500 create/delete cycles through the hook leave no program, map, link or fd behind")
    func cyclesDoNotLeak() async throws {
        let manager = await manager()
        Reaper.shared.drain()
        let before = FDCensus.take()
        let progsBefore = KernelCensus.programIDs()
        for i in 0..<500 {
            let syscall = i % 2 == 0 ? "getppid" : "getpid"
            _ = try await manager.create(spec("cycle", syscall, i % 3 == 0 ? "raw_tracepoint" : "tp_btf", filter: ProbeFilter(pid: Self.pid)))
            try await manager.delete("cycle")
        }
        Reaper.shared.drain()
        #expect(FDCensus.take().kernelObjects == before.kernelObjects)
        let leaked = await KernelCensus.settledPrograms(excluding: progsBefore)
        #expect(leaked.isEmpty, "programs still loaded in the kernel: \(leaked.sorted())")
    }
}
