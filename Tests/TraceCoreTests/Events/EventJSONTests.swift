import CBPFLayouts
import Foundation
import Testing
@testable import TraceCore

/// The JSON of one kernel event record, checked by parsing it back (JSONSerialization is
/// the independent reader) and against the exact bytes of the fixed members.
@Suite struct EventJSONTests {
    static func record(comm: String, thread: String, ret: Int64, flags: UInt32 = UInt32(TP_EV_CALL)) -> [UInt8] {
        var e = tp_event()
        e.time_ns = 1_234_567_890_123
        e.latency_ns = 2_100_000
        e.ret = ret
        e.cgroup_id = 0  // no such cgroup: path and container are null
        e.pid = 42
        e.tid = 43
        e.cpu = 1
        e.flags = flags
        withUnsafeMutableBytes(of: &e.comm) { raw in for (i, b) in comm.utf8.prefix(15).enumerated() { raw[i] = b } }
        withUnsafeMutableBytes(of: &e.thread) { raw in for (i, b) in thread.utf8.prefix(15).enumerated() { raw[i] = b } }
        return withUnsafeBytes(of: e) { Array($0) }
    }

    func format(_ bytes: [UInt8], kind: String = "call", seq: UInt64 = 7) throws -> (String, [String: Any]) {
        let plan = try AggregatePlan.resolve(ProbeSpec(target: ProbeTarget(type: .syscall, name: "read")), schema: nil).get()
        var json = EventJSON(kind: kind, plan: plan, layout: .own)
        let text = bytes.withUnsafeBytes { json.format($0, seq: seq) }
        let object = try #require(try JSONSerialization.jsonObject(with: Data(text.utf8)) as? [String: Any], "\(text)")
        return (text, object)
    }

    @Test("A call: every member, the errno name of a negative return, a wall-clock time near now")
    func call() throws {
        let (text, o) = try format(Self.record(comm: "nginx", thread: "nginx-w1", ret: -11))
        #expect(text.hasPrefix(#"{"event":"call","seq":7,"time":""#), "\(text)")
        #expect(o["ktime_ns"] as? Int == 1_234_567_890_123 && o["pid"] as? Int == 42 && o["tid"] as? Int == 43 && o["cpu"] as? Int == 1)
        #expect(o["comm"] as? String == "nginx" && o["thread"] as? String == "nginx-w1")
        #expect(o["latency_ns"] as? Int == 2_100_000 && o["ret"] as? Int == -11 && o["errno"] as? String == "EAGAIN")
        #expect(o["cgroup"] is NSNull && o["cgroup_id"] as? Int == 0 && o["container"] is NSNull)
        #expect((o["key"] as? [String: Any])?.isEmpty == true)
        let time = try #require(o["time"] as? String)
        #expect(time.count == 30 && time.hasSuffix("Z"), "nanoseconds, UTC: \(time)")
        // The record's monotonic time plus the measured offset: this event was "made" at
        // CLOCK_MONOTONIC 1234.567890123 s, so its wall time is now minus (uptime - 1234.57 s).
        var mono = timespec()
        clock_gettime(CLOCK_MONOTONIC, &mono)
        let expected = Date().timeIntervalSince1970 - (Double(mono.tv_sec) + Double(mono.tv_nsec) / 1e9 - 1234.567890123)
        let formatter = ISO8601DateFormatter()
        formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        let parsed = try #require(formatter.date(from: time))
        #expect(abs(parsed.timeIntervalSince1970 - expected) < 0.01, "\(time)")
    }

    @Test("A tracepoint event has no latency, ret or errno; a non-negative return has errno null")
    func tracepointAndSuccess() throws {
        let (_, tp) = try format(Self.record(comm: "sh", thread: "sh", ret: 0, flags: 0), kind: "tracepoint")
        #expect(tp["event"] as? String == "tracepoint" && tp["latency_ns"] == nil && tp["ret"] == nil && tp["errno"] == nil)
        let (_, ok) = try format(Self.record(comm: "sh", thread: "sh", ret: 3))
        #expect(ok["ret"] as? Int == 3 && ok["errno"] is NSNull)
    }

    @Test("Names with quotes, backslashes, control characters and invalid UTF-8 stay valid JSON and read back")
    func escaping() throws {
        let (_, o) = try format(Self.record(comm: "a\"b\\c\n\u{01}", thread: "ü", ret: 0))
        #expect(o["comm"] as? String == "a\"b\\c\n\u{01}" && o["thread"] as? String == "ü")
        var bad = Self.record(comm: "x", thread: "y", ret: 0)
        bad[48] = 0xFF  // comm's first byte: not UTF-8
        let (_, b) = try format(bad)
        #expect(b["comm"] as? String == "\u{FFFD}")
    }

    @Test("Numbers at their extremes")
    func numbers() {
        var out = JSONBytes(capacity: 64)
        out.number(UInt64.max); out.raw(","); out.number(Int64.min); out.raw(","); out.number(UInt64(0)); out.raw(","); out.number(Int64(-7))
        #expect(String(decoding: out.bytes, as: UTF8.self) == "18446744073709551615,-9223372036854775808,0,-7")
    }
}
