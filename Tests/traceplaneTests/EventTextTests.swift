import Foundation
import Testing
@testable import traceplane

/// What `probe events` prints for each line of the events endpoint: the ext4slower-style
/// table, the stderr notices, `--json`, and the lines it refuses.
@Suite("probe events: lines")
struct EventTextTests {
    static let utc = TimeZone(identifier: "UTC")!

    static let call = #"{"event":"call","seq":17,"time":"2026-12-02T13:20:01.123456789Z","ktime_ns":123,"pid":42,"tid":43,"comm":"nginx","thread":"nginx-w1","cpu":1,"cgroup":"/system.slice/nginx.service","cgroup_id":1234,"container":{"unit":"nginx.service","runtime":null,"id":null,"pod_uid":null,"qos":null},"latency_ns":2100000,"ret":-11,"errno":"EAGAIN","key":{"arg:fd":7}}"#
    static let tracepoint = #"{"event":"tracepoint","seq":18,"time":"2026-12-02T13:20:02.500Z","ktime_ns":124,"pid":1,"tid":1,"comm":"systemd","thread":"systemd","cpu":0,"cgroup":null,"cgroup_id":1,"container":null,"key":{}}"#

    func render(_ line: String, json: Bool = false, zone: TimeZone = utc) throws -> EventPrinter.Output {
        try EventPrinter(probe: "web", json: json, timeZone: zone).render(Array(line.utf8))
    }

    /// The call line with some members replaced (`"latency_ns":…` etc. as JSON text).
    func call(latency: String = "2100000", ret: String = "-11", errno: String = #""EAGAIN""#, key: String = #"{"arg:fd":7}"#) -> String {
        Self.call.replacingOccurrences(of: #""latency_ns":2100000,"ret":-11,"errno":"EAGAIN","key":{"arg:fd":7}"#,
                                       with: #""latency_ns":\#(latency),"ret":\#(ret),"errno":\#(errno),"key":\#(key)"#)
    }

    func row(_ line: String) throws -> String {
        try #require(try render(line).stdout)
    }

    @Test("The header names the columns at the widths of the rows")
    func header() {
        #expect(EventText.header == "TIME         COMM             PID     TID        LAT(ms)      RET  KEY")
        #expect(EventPrinter(probe: "web", json: true, timeZone: Self.utc).header == nil)
    }

    @Test("A call prints its time, comm, pid, tid, latency in ms, -ERRNO and its keys, on stdout only")
    func callLine() throws {
        let output = try render(Self.call)
        #expect(output == EventPrinter.Output(stdout: "13:20:01.123 nginx            42      43           2.100  -EAGAIN  arg:fd=7"))
    }

    @Test("A tracepoint event prints - for LAT and RET, and ends at RET when it has no keys")
    func tracepointLine() throws {
        #expect(try row(Self.tracepoint) == "13:20:02.500 systemd          1       1                -        -")
    }

    @Test("Keys come in the order the agent sent them (aggregate.by), not sorted")
    func keyOrder() throws {
        let line = try row(call(key: #"{"comm":"nginx","arg:fd":7,"cpu":3}"#))
        #expect(line.hasSuffix("  comm=nginx arg:fd=7 cpu=3"))
    }

    @Test("RET: a negative return with an errno is -ERRNO; without one, or zero or positive, the number", arguments: [
        ("-11", #""EAGAIN""#, "-EAGAIN"), ("-2", #""ENOENT""#, "-ENOENT"), ("-5000", "null", "-5000"),
        ("-1", #""EPERM""#, "-EPERM"), ("0", "null", "0"), ("4096", "null", "4096"), ("-1", #""""#, "-1"),
    ])
    func returnValue(ret: String, errno: String, shown: String) throws {
        let line = try row(call(ret: ret, errno: errno))
        #expect(line.hasSuffix(" " + shown + "  arg:fd=7"))
        #expect(line.split(separator: " ", omittingEmptySubsequences: true)[5] == Substring(shown))
    }

    @Test("LAT(ms) has three decimals, rounded to the nearest microsecond", arguments: [
        (2_100_000 as UInt64, "2.100"), (0, "0.000"), (499, "0.000"), (500, "0.001"), (1_234_567, "1.235"),
        (999_999_499, "999.999"), (999_999_500, "1000.000"), (12_345_678_901_234, "12345678.901"),
        (UInt64.max, "18446744073709.552"),
    ])
    func latency(ns: UInt64, shown: String) throws {
        #expect(EventText.milliseconds(ns) == shown)
        if ns <= UInt64(Int64.max) {
            let line = try row(call(latency: String(ns)))
            #expect(line.split(separator: " ", omittingEmptySubsequences: true)[4] == Substring(shown))
        }
    }

    @Test("String keys print bare, quoted with C escapes only when empty or holding whitespace, quotes or control characters", arguments: [
        (#""nginx""#, "k=nginx"), (#""/var/log/app.log""#, "k=/var/log/app.log"), (#""C:\\dir""#, #"k=C:\dir"#),
        (#""nginx worker""#, #"k="nginx worker""#), (#""""#, #"k="""#), (#""a\"b""#, #"k="a\"b""#),
        (#""tab\there""#, #"k="tab\there""#), (#""new\nline""#, #"k="new\nline""#), (#""bell\u0007""#, #"k="bell\x07""#),
        (#""back\\slash space""#, #"k="back\\slash space""#), (#""naïve""#, "k=naïve"),
    ])
    func stringKeys(json: String, shown: String) throws {
        let line = try row(call(key: #"{"k":\#(json)}"#))
        #expect(line.hasSuffix("  " + shown))
        #expect(!line.contains("\n"))
    }

    @Test("Number keys print as sent (64-bit unsigned exactly), null as -, nested values as compact JSON")
    func otherKeys() throws {
        let line = try row(call(key: #"{"cgroup_id":18446744073709551615,"ret":-4095,"cgroup":null,"ok":true,"x":[1, {"a" : 2}]}"#))
        #expect(line.hasSuffix(#"  cgroup_id=18446744073709551615 ret=-4095 cgroup=- ok=true x=[1,{"a":2}]"#))
    }

    @Test("A comm with control characters stays on one line, shown with ?")
    func controlComm() throws {
        let line = try row(Self.call.replacingOccurrences(of: #""comm":"nginx""#, with: #""comm":"ev\nil\u001b""#))
        #expect(line.hasPrefix("13:20:01.123 ev?il?           42"))
    }

    @Test("The time is the agent's UTC time in the local zone, to the millisecond, truncated", arguments: [
        ("2026-12-02T13:20:01.123456789Z", "UTC", "13:20:01.123"),
        ("2026-12-02T13:20:01.999999999Z", "UTC", "13:20:01.999"),
        ("2026-12-02T13:20:01.123456789Z", "Asia/Kolkata", "18:50:01.123"),
        ("2026-12-02T13:20:01.5Z", "America/New_York", "08:20:01.500"),
        ("2026-07-02T13:20:01.05Z", "America/New_York", "09:20:01.050"),
        ("2026-12-02T23:59:59.000Z", "Asia/Tokyo", "08:59:59.000"),
        ("2026-01-01T00:00:00Z", "America/Los_Angeles", "16:00:00.000"),
        ("2024-02-29T12:00:00.001Z", "UTC", "12:00:00.001"),
    ])
    func localTime(time: String, zone: String, shown: String) throws {
        let tz = try #require(TimeZone(identifier: zone))
        #expect(EventText.localTime(time, timeZone: tz) == shown)
        let line = try #require(try render(Self.call.replacingOccurrences(of: "2026-12-02T13:20:01.123456789Z", with: time), zone: tz).stdout)
        #expect(line.hasPrefix(shown + " "))
    }

    @Test("A time not in the agent's form is printed as it came", arguments: [
        "2026-12-02 13:20:01Z", "2026-12-02T13:20:01+01:00", "2026-12-02T13:20:01.Z", "2026-13-02T13:20:01Z", "soon",
    ])
    func oddTime(time: String) throws {
        #expect(EventText.localTime(time, timeZone: Self.utc) == nil)
        #expect(try row(Self.call.replacingOccurrences(of: "2026-12-02T13:20:01.123456789Z", with: time)).hasPrefix(time + " "))
    }

    @Test("Days since the epoch match Foundation's calendar across eras and leap years")
    func civilDays() {
        var calendar = Calendar(identifier: .gregorian)
        calendar.timeZone = Self.utc
        for (y, m, d) in [(1970, 1, 1), (1969, 12, 31), (2000, 2, 29), (2100, 3, 1), (2026, 12, 2), (1600, 1, 1)] {
            let date = calendar.date(from: DateComponents(year: y, month: m, day: d))!
            #expect(EventText.daysFromCivil(year: y, month: m, day: d) == Int((date.timeIntervalSince1970 / 86_400).rounded(.down)))
        }
    }

    @Test("A gap prints a notice on stderr, nothing on stdout, and does not end the stream")
    func gap() throws {
        #expect(try render(#"{"event":"gap","missed":123}"#)
                == EventPrinter.Output(stderr: "... 123 events missed (this client read too slowly or resumed too late)"))
        #expect(try render(#"{"event":"gap","missed":1}"#).stderr == "... 1 event missed (this client read too slowly or resumed too late)")
    }

    @Test("end ends the stream: caught-up silently, the others with why on stderr", arguments: [
        ("caught-up", nil), ("deleted", "stream ended: probe web was deleted"),
        ("replaced", "stream ended: probe web was replaced by a new spec (run again to follow it)"),
        ("expired", "stream ended: probe web expired (its ttl ran out without a renewal)"),
        ("shutdown", "stream ended: the agent is shutting down"), ("reshuffled", "stream ended: reshuffled"),
    ] as [(String, String?)])
    func end(reason: String, notice: String?) throws {
        #expect(try render(#"{"event":"end","reason":"\#(reason)"}"#) == EventPrinter.Output(stderr: notice, end: reason))
    }

    @Test("Keep-alives print nothing; kinds this version does not know are skipped")
    func silentLines() throws {
        #expect(try render(#"{"event":"keep-alive"}"#) == EventPrinter.Output())
        #expect(try render(#"{"event":"keep-alive"}"#, json: true) == EventPrinter.Output())
        #expect(try render(#"{"event":"resync","at":3}"#) == EventPrinter.Output())
    }

    @Test("--json prints every line as it came (gap and end too) with the same stderr notices; only keep-alives are dropped")
    func jsonLines() throws {
        #expect(try render(Self.call, json: true) == EventPrinter.Output(stdout: Self.call))
        #expect(try render(Self.tracepoint, json: true) == EventPrinter.Output(stdout: Self.tracepoint))
        let gap = #"{"event":"gap","missed":7}"#
        #expect(try render(gap, json: true) == EventPrinter.Output(stdout: gap, stderr: EventText.gap(missed: 7)))
        let end = #"{"event":"end","reason":"deleted"}"#
        #expect(try render(end, json: true) == EventPrinter.Output(stdout: end, stderr: "stream ended: probe web was deleted", end: "deleted"))
        let unknown = #"{"event":"resync","at":3}"#
        #expect(try render(unknown, json: true) == EventPrinter.Output(stdout: unknown))
    }

    @Test("A line that is not one the endpoint sends is refused, quoting it", arguments: [
        ("not json", "not a JSON value at byte 0"),
        (#"{"event":"call","seq":17"#, "unexpected end at byte 24"),
        (#"{"seq":17}"#, #"no valid "event""#),
        (#"{"event":"call","seq":-1,"time":"t","pid":1,"tid":1,"comm":"c"}"#, #"no valid "seq""#),
        (#"{"event":"call","seq":1,"pid":1,"tid":1,"comm":"c"}"#, #"no valid "time""#),
        (#"{"event":"gap","missed":"many"}"#, #"no valid "missed""#),
        (#"{"event":"end"}"#, #"no valid "reason""#),
    ])
    func malformed(line: String, reason: String) {
        #expect {
            try render(line)
        } throws: { error in
            "\(error)" == "the agent sent a line that is not an event (\(reason)): \(line)"
        }
    }
}
