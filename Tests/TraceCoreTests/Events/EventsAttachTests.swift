import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// What happens when a probe's ring buffer cannot be opened (the fake kernel has none): the
/// attempt fails with the kernel's errno, and everything made for it is freed.
@Suite struct EventsAttachTests {
    let kernel = FakeKernel()
    let reaper = Reaper()

    func planner() -> Planner { Planner(backend: kernel, reaper: reaper) }
    func report() -> CapabilityReport { CapabilityProber(backend: kernel, reaper: reaper).probe() }

    func spec(_ mechanism: String, events: EventsSpec? = EventsSpec(minLatencyNs: 1000)) -> ProbeSpec {
        ProbeSpec(name: "ev", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: [mechanism], events: events)
    }

    @Test("A probe's own object whose ring cannot be opened: the attempt fails with EOPNOTSUPP and the object and links are freed")
    func ownObjectRingFailure() throws {
        let report = report()
        reaper.drain()
        let failure = try #require(planner().attach(spec("tracepoint"), report: report).failure)
        #expect(failure.attempts.map(\.flavour) == [.tracepoint])
        #expect(failure.attempts.first?.errno == .EOPNOTSUPP, "\(failure.attempts)")
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A hub slot whose ring cannot be opened: the attempt fails, the slot's ring is taken out again, and the hub is dropped")
    func hubSlotRingFailure() throws {
        let report = report()
        reaper.drain()
        let planner = planner()
        let failure = try #require(planner.attach(spec("tp_btf"), report: report).failure)
        #expect(failure.attempts.first?.errno == .EOPNOTSUPP, "\(failure.attempts)")
        for object in kernel.objects where object.spec.object == SyscallHubBPF.object {
            #expect(kernel.innerMaps(object: object.id, outer: SyscallHubBPF.Maps.slotEvents).isEmpty, "no ring left in the slot")
        }
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
        // The same probe without events attaches: nothing of the failed one is in the way.
        let probe = try planner.attach(spec("tp_btf", events: nil), report: report).get()
        #expect(probe.events == nil && planner.hubs[.tpBTF]?.memberCount == 1)
        probe.detach(reaper: reaper)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }
}

extension Result {
    var failure: Failure? { if case .failure(let f) = self { f } else { nil } }
}
