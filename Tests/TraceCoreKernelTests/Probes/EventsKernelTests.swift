import CKernelOracle
import CLibBPF
import Foundation
import Glibc
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// Events (spec `events`) on the real kernel, as root: each flavour's ring buffer, the
/// kernel's rate limit, and the keys an event carries, with workloads of known calls.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("EventsKernelTests") || RootRequirement.mustRun,
                             "needs root and a real kernel"))
struct EventsKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))

    init() async throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    func manager() async -> ProbeManager {
        let report = await Self.store.get()
        return ProbeManager(planner: Planner(backend: Self.backend), maxProbes: 64, report: { report })
    }

    /// Every event the feed still holds, oldest first, once `count` were read from the ring.
    static func events(_ manager: ProbeManager, _ name: String, count: UInt64) async throws -> [[String: Any]] {
        let events = try #require(try await manager.events(name).events)
        let deadline = ContinuousClock.now + .seconds(10)
        while events.consumed < count && ContinuousClock.now < deadline { try await Task.sleep(for: .milliseconds(20)) }
        let subscription = events.feed.subscribe(after: 0, follow: false)
        defer { subscription.cancel() }
        var out: [[String: Any]] = []
        while let item = subscription.next() {
            switch item {
            case .event(_, _, let json):
                out.append(try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any], "\(json)"))
            case .gap(let missed): Issue.record("a gap of \(missed) in a feed read from its start")
            case .end: return out
            }
        }
        Issue.record("the feed did not end a follow:false subscription")
        return out
    }

    @Test("Every read is an event with threshold 0: 100 reads of one fd give 100 events with pid, tid, thread, ret and the arg:fd key",
          arguments: ["tp_btf", "raw_tracepoint", "tracepoint"])
    func readsAreEvents(mechanism: String) async throws {
        let manager = await manager()
        let comm = "kt-ev-\(mechanism.prefix(3))"
        let spec = ProbeSpec(name: "ev-read", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: [mechanism],
                             filter: ProbeFilter(comm: comm), aggregate: AggregateSpec(by: ["arg:fd"]),
                             events: EventsSpec(minLatencyNs: 0, maxPerSecond: 1000))
        let probe = try await manager.create(spec).0
        #expect(probe.mechanism?.rawValue == mechanism)
        let fd = open("/dev/zero", O_RDONLY | O_CLOEXEC)
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 16)
        let tid = Int(KeyedAggregateKernelTests.threadID)
        let old = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines) ?? "test"
        _ = oracle_set_thread_name(comm)
        for _ in 0..<100 { _ = Glibc.read(fd, &buffer, 16) }
        _ = oracle_set_thread_name(old)
        let events = try await Self.events(manager, "ev-read", count: 100)
        #expect(events.count == 100)
        #expect(events.compactMap { $0["seq"] as? Int } == Array(1...100))
        for e in events.prefix(100) {
            #expect(e["event"] as? String == "call" && e["pid"] as? Int == Int(getpid()) && e["tid"] as? Int == tid, "\(e)")
            #expect(e["thread"] as? String == comm && e["ret"] as? Int == 16, "\(e)")
            #expect((e["key"] as? [String: Any])?["arg:fd"] as? Int == Int(fd), "\(e)")
        }
        let counts = try #require(try await manager.metrics("ev-read").events)
        #expect(counts.emitted == 100 && counts.throttled == 0 && counts.lost == 0 && counts.consumed == 100, "\(counts)")
        try await manager.delete("ev-read")
    }

    @Test("A tracepoint target's events: max_per_second 5 over 200 events in one burst lets exactly 5 through", arguments: [nil, "tracepoint"] as [String?])
    func tracepointRate(mechanism: String?) async throws {
        let manager = await manager()
        let spec = ProbeSpec(name: "ev-tp", target: ProbeTarget(type: .tracepoint, name: "syscalls:sys_enter_getppid"), mechanisms: mechanism.map { [$0] },
                             filter: ProbeFilter(pid: Int(getpid())), events: EventsSpec(maxPerSecond: 5))
        _ = try await manager.create(spec)
        // Within one second of the kernel's clock (a burst of 200 takes well under a millisecond).
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        if now.tv_nsec > 900_000_000 { usleep(useconds_t((1_000_000_000 - now.tv_nsec) / 1000 + 1000)) }
        for _ in 0..<200 { _ = getppid() }
        let events = try await Self.events(manager, "ev-tp", count: 5)
        #expect(events.count == 5 && events.allSatisfy { $0["event"] as? String == "tracepoint" && $0["latency_ns"] == nil }, "\(events)")
        let counts = try #require(try await manager.metrics("ev-tp").events)
        #expect(counts.emitted == 5 && counts.throttled == 195, "\(counts)")
        try await manager.delete("ev-tp")
    }
}
