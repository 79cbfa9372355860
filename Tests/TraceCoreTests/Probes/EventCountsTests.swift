import Foundation
import Testing
@testable import TraceCore

@Suite("EventCounts (the metrics' events member)")
struct EventCountsTests {
    static func json(_ counts: ProbeCounters.EventCounts) throws -> [String: Any] {
        let data = try JSONEncoder().encode(counts)
        return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
    }

    @Test("A tracepoint's min_latency_ns is null, not absent; a call target's is its threshold; both read back")
    func minLatencyNull() throws {
        let tracepoint = ProbeCounters.EventCounts(minLatencyNs: nil, maxPerSecond: 50, bufferKiB: 1024, emitted: 3, throttled: 2,
                                                   lost: 1, consumed: 3, subscribers: 0, missed: 0)
        let members = try Self.json(tracepoint)
        #expect(Set(members.keys) == ["min_latency_ns", "max_per_second", "buffer_kib", "emitted", "throttled", "lost", "consumed", "subscribers", "missed"])
        #expect(members["min_latency_ns"] is NSNull)
        var call = tracepoint
        call.minLatencyNs = 0
        #expect(try Self.json(call)["min_latency_ns"] as? Int == 0)
        for counts in [tracepoint, call] {
            #expect(try JSONDecoder().decode(ProbeCounters.EventCounts.self, from: JSONEncoder().encode(counts)) == counts)
        }
    }
}
