import Testing
@testable import TraceCore

/// The `events` member's bounds, per target type: each problem is one field error.
@Suite struct EventsSpecTests {
    func errors(_ type: TargetType, _ events: EventsSpec) -> [String] {
        let target: ProbeTarget = switch type {
        case .syscall: ProbeTarget(type: .syscall, name: "read")
        case .function: ProbeTarget(type: .function, name: "vfs_read")
        case .tracepoint: ProbeTarget(type: .tracepoint, name: "sched:sched_switch")
        case .uprobe: ProbeTarget(type: .uprobe, path: "/bin/true", symbol: "main")
        case .profile: ProbeTarget(type: .profile)
        }
        return ProbeSpec(name: "p", target: target, events: events).validate().map(\.field)
    }

    @Test("Every bound is accepted at its edge and refused one past it")
    func bounds() {
        #expect(errors(.syscall, EventsSpec(minLatencyNs: 0, maxPerSecond: 1, bufferKiB: 4)).isEmpty)
        #expect(errors(.syscall, EventsSpec(minLatencyNs: EventsSpec.maxMinLatencyNs, maxPerSecond: EventsSpec.maxMaxPerSecond, bufferKiB: 65_536)).isEmpty)
        #expect(errors(.syscall, EventsSpec(minLatencyNs: -1)) == ["events.min_latency_ns"])
        #expect(errors(.syscall, EventsSpec(minLatencyNs: EventsSpec.maxMinLatencyNs + 1)) == ["events.min_latency_ns"])
        #expect(errors(.syscall, EventsSpec(maxPerSecond: 0)) == ["events.max_per_second"])
        #expect(errors(.syscall, EventsSpec(maxPerSecond: EventsSpec.maxMaxPerSecond + 1)) == ["events.max_per_second"])
        for kib in [2, 3, 6, 1000, 131_072] {
            #expect(errors(.syscall, EventsSpec(bufferKiB: kib)) == ["events.buffer_kib"], "\(kib) KiB")
        }
    }

    @Test("Call targets take a threshold, tracepoints only a rate, profiles no events at all")
    func perTarget() {
        for type in [TargetType.syscall, .function, .uprobe] {
            #expect(errors(type, EventsSpec(minLatencyNs: 1_000_000)).isEmpty, "\(type)")
        }
        #expect(errors(.tracepoint, EventsSpec(maxPerSecond: 100)).isEmpty)
        #expect(errors(.tracepoint, EventsSpec(minLatencyNs: 1)) == ["events.min_latency_ns"])
        #expect(errors(.profile, EventsSpec()) == ["events"])
    }

    @Test("Defaults: 10,000 a second, 1 MiB of ring, every call when no threshold is given")
    func defaults() {
        let d = EventsSpec()
        #expect(d.rate == 10_000 && d.bufferBytes == 1 << 20 && d.threshold == 0)
    }
}
