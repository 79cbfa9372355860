import CBPFLayouts
import Foundation
import Glibc
import Testing
@testable import TraceCore

@Suite("EventJSON clock and members")
struct EventJSONClockTests {
    static func monotonicNow() -> UInt64 {
        var now = timespec()
        clock_gettime(CLOCK_MONOTONIC, &now)
        return UInt64(now.tv_sec) * 1_000_000_000 + UInt64(now.tv_nsec)
    }

    static func record(timeNs: UInt64, call: Bool) -> [UInt8] {
        var e = tp_event()
        e.time_ns = timeNs
        e.pid = 42
        e.tid = 43
        if call {
            e.flags = UInt32(TP_EV_CALL)
            e.latency_ns = 1500
            e.ret = -11
        }
        return withUnsafeBytes(of: e) { Array($0) }
    }

    static func format(_ json: inout EventJSON, _ bytes: [UInt8], seq: UInt64) throws -> [String: Any] {
        let text = bytes.withUnsafeBytes { json.format($0, seq: seq) }
        return try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any])
    }

    static func seconds(since1970 time: Any?) throws -> Double {
        let text = try #require(time as? String)
        // Foundation's ISO 8601 parser takes at most milliseconds: drop the rest of the fraction.
        let trimmed = text.replacingOccurrences(of: #"(\.\d{3})\d*Z$"#, with: "$1Z", options: .regularExpression)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return try #require(formatter.date(from: trimmed), "not RFC 3339: \(text)").timeIntervalSince1970
    }

    @Test("`time` is the wall clock of the event, from the first event on (it was ktime since 1970 before)")
    func timeIsWallClock() throws {
        var json = EventJSON(kind: "call", plan: .defaults(for: .syscall), layout: .own)
        let now = Self.monotonicNow()
        let first = try Self.format(&json, Self.record(timeNs: now, call: true), seq: 1)
        let wall = Date().timeIntervalSince1970
        #expect(abs(try Self.seconds(since1970: first["time"]) - wall) < 5, "\(first["time"] ?? "nil")")
        // Two seconds later on the kernel's clock (the offset is measured again): two seconds later on the wall.
        let later = try Self.format(&json, Self.record(timeNs: now + 2_000_000_000, call: true), seq: 2)
        let apart = try Self.seconds(since1970: later["time"]) - Self.seconds(since1970: first["time"])
        #expect(abs(apart - 2) < 0.5, "\(first["time"] ?? "nil") → \(later["time"] ?? "nil")")
        #expect((first["ktime_ns"] as? NSNumber)?.uint64Value == now && first["seq"] as? Int == 1)
        #expect(first["latency_ns"] as? Int == 1500 && first["ret"] as? Int == -11 && first["errno"] as? String == "EAGAIN")
    }

    @Test("A tracepoint event has no latency, ret or errno, and its key is {} without aggregate")
    func tracepointMembers() throws {
        var json = EventJSON(kind: "tracepoint", plan: .defaults(for: .tracepoint), layout: .own)
        let event = try Self.format(&json, Self.record(timeNs: Self.monotonicNow(), call: false), seq: 7)
        #expect(event["event"] as? String == "tracepoint" && event["pid"] as? Int == 42 && event["tid"] as? Int == 43)
        #expect(event["latency_ns"] == nil && event["ret"] == nil && event["errno"] == nil)
        #expect((event["key"] as? [String: Any])?.isEmpty == true)
        #expect(abs(try Self.seconds(since1970: event["time"]) - Date().timeIntervalSince1970) < 5)
    }
}
