import ArgumentParser
import Foundation
import Testing
import TraceAPI
import TraceCore
@testable import traceplane

@Suite("probe add: events options")
struct ProbeAddEventsTests {
    func add(_ arguments: [String]) throws -> ProbeSpec {
        try ProbeCommand.Add.parse(["nginx-reads", "syscall:read"] + arguments).spec()
    }

    @Test("Every --events-* option lands in the spec's events member, and the agent's decoder reads it back")
    func everyOption() throws {
        let spec = try add(["--events-min-latency", "1.5ms", "--events-max-per-second", "500", "--events-buffer-kib", "256"])
        #expect(spec.events == EventsSpec(minLatencyNs: 1_500_000, maxPerSecond: 500, bufferKiB: 256))
        let json = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
        #expect(json.contains(#""events":{"#) && json.contains(#""min_latency_ns":1500000"#) && json.contains(#""buffer_kib":256"#))
        let decoded = try SpecDecoder.decode(Array(json.utf8))
        #expect(decoded.events == spec.events && decoded.validate().isEmpty)
    }

    @Test("--events alone asks for events with the agent's defaults; any one option implies it; none means no events")
    func implied() throws {
        #expect(try add(["--events"]).events == EventsSpec())
        #expect(try add(["--events-max-per-second", "10"]).events == EventsSpec(maxPerSecond: 10))
        #expect(try add(["--events-min-latency", "0"]).events == EventsSpec(minLatencyNs: 0))
        #expect(try add(["--min-latency", "1ms"]).events == nil)
        #expect(!String(decoding: try JSONEncoder().encode(try add([])), as: UTF8.self).contains("events"))
    }

    @Test("--events-min-latency takes the durations --min-latency takes, and names itself when refused")
    func minLatency() throws {
        #expect(try add(["--events-min-latency", "200ns"]).events?.minLatencyNs == 200)
        #expect(try add(["--events-min-latency", "500us"]).events?.minLatencyNs == 500_000)
        do {
            _ = try add(["--events-min-latency", "5"])
            Issue.record("accepted a latency without a unit")
        } catch {
            #expect(ProbeCommand.Add.message(for: error) == "invalid --events-min-latency '5': no unit; use e.g. 200ns, 500us, 1ms, 1.5s")
        }
    }

    @Test("Bounds are the agent's to check: out-of-range values are sent as given and fail its validation")
    func bounds() throws {
        let spec = try add(["--events-buffer-kib", "3", "--events-max-per-second", "0"])
        #expect(spec.events == EventsSpec(maxPerSecond: 0, bufferKiB: 3))
        #expect(Set(spec.validate().map(\.field)) == ["events.max_per_second", "events.buffer_kib"])
    }
}
