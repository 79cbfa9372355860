import Foundation
import Glibc
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// Stack keys and profiles on the real kernel: a test program with known call chains (built
/// here with frame pointers) makes known numbers of getppid calls under known stacks; the
/// counts per stack are exact, the frames are named from the program's own symbol table.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("StackKernelTests") || RootRequirement.mustRun,
                                               "needs root and a real kernel"))
struct StackKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))

    init() async throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    func manager() async -> ProbeManager {
        let report = await Self.store.get()
        return ProbeManager(planner: Planner(backend: Self.backend), maxProbes: 16, report: { report })
    }

    /// The folded stacks of `a` (calls per stack, root first).
    static func folded(_ a: KeyedAggregate) -> [(stack: String, calls: UInt64)] {
        StackSamples.samples(a).map { ($0.frames.joined(separator: ";"), $0.count) }
    }

    static func perfFDs() -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.filter { fd in
            var buffer = [UInt8](repeating: 0, count: 256)
            let n = buffer.withUnsafeMutableBytes { readlink("/proc/self/fd/\(fd)", $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count - 1) }
            return n > 0 && String(decoding: buffer.prefix(n), as: UTF8.self).contains("perf_event")
        }.count
    }

    @Test("by ustack on getppid: exactly N and M calls under a→b→c and x→y, still named after the process exits")
    func userStacksOfKnownChains() async throws {
        let manager = await manager()
        let chains = try CallChains(["700", "300"])
        defer { chains.finish() }
        let probe = try await manager.create(ProbeSpec(name: "ustack", target: ProbeTarget(type: .syscall, name: "getppid"),
                                                       filter: ProbeFilter(pid: Int(chains.pid)), aggregate: AggregateSpec(by: ["ustack"], value: "none"))).0
        // The shared hook has no stack maps: it says so, and the planner moves on.
        let hub = try #require(probe.attempts.first { $0.flavour == .tpBTF })
        #expect(hub.outcome == .unsupported && hub.message.contains("ustack"), "\(hub.message)")
        try chains.go()
        let metrics = try await manager.metrics("ustack")
        #expect(metrics.calls == 1000)
        let a = try #require(metrics.aggregate)
        let stacks = Self.folded(a)
        let abc = stacks.filter { $0.stack.contains("main;chain_a;chain_b;chain_c;direct_getppid") }
        let xy = stacks.filter { $0.stack.contains("main;chain_x;chain_y;direct_getppid") }
        #expect(abc.map(\.calls) == [700], "\(stacks)")
        #expect(xy.map(\.calls) == [300], "\(stacks)")
        #expect(stacks.count == 2, "only the two chains call getppid: \(stacks)")
        #expect(a.stackFull == 0)

        // The process exits: its stacks keep the names they had.
        chains.finish()
        try await Task.sleep(for: .milliseconds(100))
        let after = Self.folded(try #require(try await manager.metrics("ustack").aggregate))
        #expect(after.map(\.stack).sorted() == stacks.map(\.stack).sorted())
        await manager.removeAll()
    }

    @Test("A full stack map is counted: stack_full, and the keys it leaves out in dropped_keys; every call in the totals")
    func fullStackMap() async throws {
        let manager = await manager()
        let chains = try CallChains(["10", "10", "10"])
        defer { chains.finish() }
        _ = try await manager.create(ProbeSpec(name: "ufull", target: ProbeTarget(type: .syscall, name: "getppid"),
                                               filter: ProbeFilter(pid: Int(chains.pid)),
                                               aggregate: AggregateSpec(by: ["ustack"], value: "none", maxKeys: 4)))
        try chains.go()
        let metrics = try await manager.metrics("ufull")
        let a = try #require(metrics.aggregate)
        // 12 distinct stacks (a→b→c, x→y, then chain_r at depths 1 to 10, one call each)
        // into 4 entries: the first 4 stored, 8 calls lost their stack, and their marker
        // key found the key table full.
        #expect(metrics.calls == 30)
        #expect(a.stackFull == 8)
        #expect(a.droppedKeys == 8)
        #expect(a.entries.reduce(0) { $0 + $1.calls } == 22)
        await manager.removeAll()
    }

    @Test("sched:sched_switch by kstack: the kernel stacks run through __schedule", arguments: ["tp_btf", "raw_tracepoint", "tracepoint"])
    func kernelStacksOfSchedSwitch(mechanism: String) async throws {
        let manager = await manager()
        let probe = try await manager.create(ProbeSpec(name: "kstack", target: ProbeTarget(type: .tracepoint, name: "sched:sched_switch"),
                                                       mechanisms: [mechanism], aggregate: AggregateSpec(by: ["kstack"]))).0
        #expect(probe.mechanism?.rawValue == mechanism)
        for _ in 0..<20 { usleep(1000) }
        let a = try #require(try await manager.metrics("kstack").aggregate)
        let stacks = Self.folded(a)
        #expect(!stacks.isEmpty)
        let scheduled = stacks.filter { $0.stack.split(separator: ";").contains("__schedule") }.reduce(0) { $0 + $1.calls }
        let total = stacks.reduce(0) { $0 + $1.calls }
        #expect(scheduled * 10 >= total * 9, "most switches come through __schedule: \(scheduled) of \(total); \(stacks.prefix(3))")
        // Through a BPF raw tracepoint the stack starts in the probe's own program, loaded
        // after the kernel symbols were first read (the earlier cases): it is named (and so
        // recognised and left out, with the BPF runner), and the stack begins at the
        // tracepoint (in __schedule, or its static call's __traceiter_sched_switch). A program not yet in the table would be named after whatever symbol
        // precedes it.
        if mechanism != "tracepoint" {
            #expect(stacks.allSatisfy { $0.stack.hasSuffix(";__schedule") || $0.stack.hasSuffix(";__schedule;__traceiter_sched_switch") },
                    "\(stacks.prefix(2))")
        }
        #expect(!stacks.contains { $0.stack.contains("bpf_prog_") || $0.stack.contains("[unknown]") }, "\(stacks.prefix(2))")
        await manager.removeAll()
    }

    @Test("A 99 Hz profile of a busy loop puts most of its samples in the hot function; deleting it closes every perf fd and program")
    func profileOfABusyLoop() async throws {
        let manager = await manager()
        // Earlier tests' perf-tracepoint links may still be on the reaper's queue.
        await BlockingWork.attach.run { Reaper.shared.drain() }
        let fdsBefore = Self.perfFDs()
        let programsBefore = KernelCensus.programIDs()
        let spinner = Process()
        spinner.executableURL = URL(fileURLWithPath: try CallChains.binary.get())
        spinner.arguments = ["spin", "2.5"]
        let probe = try await manager.create(ProbeSpec(name: "prof", target: ProbeTarget(type: .profile, frequencyHz: 99))).0
        #expect(probe.mechanism == .perfEvent)
        #expect(Self.perfFDs() == fdsBefore + OnlineCPUs.read().count, "one perf event per online CPU")
        try spinner.run()
        try await Task.sleep(for: .seconds(2))
        let a = try #require(try await manager.metrics("prof").aggregate)
        #expect(a.by == AggregateSpec.profileKeys)
        let mine = Self.folded(a).filter { $0.stack.hasPrefix(CallChains.comm + ";") }
        let samples = mine.reduce(0) { $0 + $1.calls }
        let hot = mine.filter { $0.stack.contains("main;spin_hot") }.reduce(0) { $0 + $1.calls }
        #expect(samples >= 40, "about 99 samples a second of a process that runs all the time: \(samples)")
        #expect(hot * 10 >= samples * 8, "most samples are in spin_hot: \(hot) of \(samples)")
        spinner.waitUntilExit()
        await manager.removeAll()
        await BlockingWork.attach.run { Reaper.shared.drain() }
        #expect(Self.perfFDs() == fdsBefore, "every perf fd closed")
        #expect(await KernelCensus.settledPrograms(excluding: programsBefore).isEmpty)
    }
}
