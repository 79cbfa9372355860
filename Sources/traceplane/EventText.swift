import Foundation

/// One NDJSON line of `GET /v1/probes/{name}/events`, as `probe events` reads it.
enum EventLine: Sendable, Equatable {
    /// A call (`"event":"call"`) or a tracepoint hit (`"event":"tracepoint"`).
    case event(Event)
    /// `missed` events this client will never see.
    case gap(missed: UInt64)
    /// The last line: `deleted`, `replaced`, `expired`, `shutdown` or `caught-up`.
    case end(reason: String)
    case keepAlive
    /// A kind this command does not know (a newer agent's): skipped.
    case other(kind: String)

    struct Event: Sendable, Equatable {
        var kind: String
        var seq: UInt64
        /// RFC 3339 in UTC with nanoseconds, e.g. `2026-12-02T13:20:01.123456789Z`.
        var time: String
        var pid: Int64
        var tid: Int64
        var comm: String
        /// Calls only; nil for tracepoint events.
        var latencyNs: UInt64?
        var ret: Int64?
        /// The errno name of a negative `ret` (`EAGAIN`), when it is one.
        var errno: String?
        /// The probe's keys in `aggregate.by` order.
        var key: [OrderedJSON.Member]
    }

    /// A line that is not one the endpoint sends.
    struct Malformed: Error, CustomStringConvertible {
        var reason: String
        var line: String
        var description: String { "the agent sent a line that is not an event (\(reason)): \(line.prefix(200))" }
    }

    /// Reads one line (without its newline).
    /// - Throws: ``Malformed`` when it is not JSON, or a known kind lacks a member it must have.
    static func parse(_ line: some Collection<UInt8>) throws(Malformed) -> EventLine {
        let json: OrderedJSON
        do {
            json = try OrderedJSON.parse(line)
        } catch {
            throw Malformed(reason: error.description, line: String(decoding: line, as: UTF8.self))
        }
        func missing(_ member: String) -> Malformed {
            Malformed(reason: "no valid \(member)", line: String(decoding: line, as: UTF8.self))
        }
        guard let kind = json["event"]?.string else { throw missing("\"event\"") }
        switch kind {
        case "keep-alive":
            return .keepAlive
        case "gap":
            guard let missed = json["missed"]?.uint64 else { throw missing("\"missed\"") }
            return .gap(missed: missed)
        case "end":
            guard let reason = json["reason"]?.string else { throw missing("\"reason\"") }
            return .end(reason: reason)
        case "call", "tracepoint":
            guard let seq = json["seq"]?.uint64 else { throw missing("\"seq\"") }
            guard let time = json["time"]?.string else { throw missing("\"time\"") }
            guard let pid = json["pid"]?.int64 else { throw missing("\"pid\"") }
            guard let tid = json["tid"]?.int64 else { throw missing("\"tid\"") }
            guard let comm = json["comm"]?.string else { throw missing("\"comm\"") }
            var key: [OrderedJSON.Member] = []
            if case .object(let members)? = json["key"] { key = members }
            return .event(Event(kind: kind, seq: seq, time: time, pid: pid, tid: tid, comm: comm,
                                latencyNs: json["latency_ns"]?.uint64, ret: json["ret"]?.int64, errno: json["errno"]?.string, key: key))
        default:
            return .other(kind: kind)
        }
    }
}

/// The text of `probe events`: one line per event in bcc's ext4slower style, under a
/// header, and the notices for gaps and the stream's end.
enum EventText {
    static let header = row(time: "TIME", comm: "COMM", pid: "PID", tid: "TID", latency: "LAT(ms)", ret: "RET", keys: "KEY")

    /// `13:20:01.123 nginx            42      43          2.100  -EAGAIN  arg:fd=7`.
    static func line(_ event: EventLine.Event, timeZone: TimeZone) -> String {
        row(time: localTime(event.time, timeZone: timeZone) ?? event.time,
            comm: printable(event.comm),
            pid: String(event.pid), tid: String(event.tid),
            latency: event.latencyNs.map(milliseconds) ?? "-",
            ret: event.ret.map { Self.ret($0, errno: event.errno) } ?? "-",
            keys: event.key.map { "\(printable($0.name))=\(value($0.value))" }.joined(separator: " "))
    }

    static func row(time: String, comm: String, pid: String, tid: String, latency: String, ret: String, keys: String) -> String {
        let text = pad(time, 12) + " " + pad(comm, 16) + " " + pad(pid, 7) + " " + pad(tid, 7) + " "
            + pad(latency, 10, right: true) + " " + pad(ret, 8, right: true) + "  " + keys
        return keys.isEmpty ? String(text.dropLast(2)) : text
    }

    /// `s` padded with spaces to `width` characters, never cut.
    static func pad(_ s: String, _ width: Int, right: Bool = false) -> String {
        let fill = String(repeating: " ", count: max(0, width - s.count))
        return right ? fill + s : s + fill
    }

    /// Nanoseconds as milliseconds with three decimals, rounded to the nearest microsecond.
    static func milliseconds(_ ns: UInt64) -> String {
        let us = ns / 1000 + (ns % 1000 >= 500 ? 1 : 0)
        let fraction = String(us % 1000)
        return "\(us / 1000)." + String(repeating: "0", count: 3 - fraction.count) + fraction
    }

    /// `-EAGAIN` for a negative return with an errno name, else the number.
    static func ret(_ ret: Int64, errno: String?) -> String {
        if ret < 0, let errno, !errno.isEmpty { return "-" + errno }
        return String(ret)
    }

    /// A key's value: numbers as sent, null as `-`, strings bare unless they would be
    /// ambiguous or break the line (empty, or holding whitespace, quotes or control
    /// characters): then double-quoted with C escapes.
    static func value(_ value: OrderedJSON) -> String {
        switch value {
        case .null: return "-"
        case .number(let n): return n
        case .string(let s):
            let plain = !s.isEmpty && !s.unicodeScalars.contains { $0.properties.isWhitespace || $0 == "\"" || isControl($0) }
            return plain ? s : quoted(s)
        case .bool, .array, .object: return value.text
        }
    }

    /// C-style: control characters (C0 and C1) as `\xXX`.
    static func quoted(_ s: String) -> String {
        OrderedJSON.quoted(s, escaping: isControl) { "\\x" + ($0 < 0x10 ? "0" : "") + String($0, radix: 16) }
    }

    static func isControl(_ scalar: Unicode.Scalar) -> Bool {
        scalar.value < 0x20 || (0x7F...0x9F).contains(scalar.value)
    }

    /// A name with control characters shown as `?`, so one event stays one line.
    static func printable(_ s: String) -> String {
        guard s.unicodeScalars.contains(where: isControl) else { return s }
        return String(String.UnicodeScalarView(s.unicodeScalars.map { isControl($0) ? "?" : $0 }))
    }

    /// `HH:MM:SS.mmm` in `timeZone` of an RFC 3339 UTC time (`…T13:20:01.123456789Z`);
    /// nil when `text` is not of that form. Milliseconds are truncated, as clocks are.
    static func localTime(_ text: String, timeZone: TimeZone) -> String? {
        let b = Array(text.utf8)
        func number(_ range: Range<Int>) -> Int? {
            guard range.upperBound <= b.count, b[range].allSatisfy({ (UInt8(ascii: "0")...UInt8(ascii: "9")).contains($0) }) else { return nil }
            return Int(String(decoding: b[range], as: UTF8.self))
        }
        guard b.count >= 20, b[4] == UInt8(ascii: "-"), b[7] == UInt8(ascii: "-"), b[10] == UInt8(ascii: "T") || b[10] == UInt8(ascii: "t"),
              b[13] == UInt8(ascii: ":"), b[16] == UInt8(ascii: ":"), b.last == UInt8(ascii: "Z") || b.last == UInt8(ascii: "z"),
              let year = number(0..<4), let month = number(5..<7), let day = number(8..<10),
              let hour = number(11..<13), let minute = number(14..<16), let second = number(17..<19),
              (1...12).contains(month), (1...31).contains(day), hour < 24, minute < 60, second <= 60 else { return nil }
        var millis = 0
        if b.count > 20 {
            guard b[19] == UInt8(ascii: "."), let _ = number(20..<b.count - 1) else { return nil }
            let digits = Array(b[20..<b.count - 1].prefix(3)) + Array(repeating: UInt8(ascii: "0"), count: 3)
            millis = Int(String(decoding: digits.prefix(3), as: UTF8.self)) ?? 0
        }
        let epoch = daysFromCivil(year: year, month: month, day: day) * 86_400 + hour * 3600 + minute * 60 + second
        let offset = timeZone.secondsFromGMT(for: Date(timeIntervalSince1970: TimeInterval(epoch)))
        let local = ((epoch + offset) % 86_400 + 86_400) % 86_400
        func two(_ v: Int) -> String { v < 10 ? "0\(v)" : "\(v)" }
        let ms = String(millis)
        return "\(two(local / 3600)):\(two(local / 60 % 60)):\(two(local % 60))." + String(repeating: "0", count: 3 - ms.count) + ms
    }

    /// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
    static func daysFromCivil(year: Int, month: Int, day: Int) -> Int {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        return era * 146_097 + dayOfEra - 719_468
    }

    /// The notice for a `gap` line.
    static func gap(missed: UInt64) -> String {
        "... \(missed) event\(missed == 1 ? "" : "s") missed (this client read too slowly or resumed too late)"
    }

    /// Why the stream of `probe` ended; nil for `caught-up` (the normal end without -f).
    static func end(reason: String, probe: String) -> String? {
        switch reason {
        case "caught-up": return nil
        case "deleted": return "stream ended: probe \(probe) was deleted"
        case "replaced": return "stream ended: probe \(probe) was replaced by a new spec (run again to follow it)"
        case "expired": return "stream ended: probe \(probe) expired (its ttl ran out without a renewal)"
        case "shutdown": return "stream ended: the agent is shutting down"
        default: return "stream ended: \(reason)"
        }
    }
}

/// What `probe events` makes of each line of the stream, for the table or `--json`.
struct EventPrinter: Sendable {
    var probe: String
    /// Print the lines as received (keep-alives left out) instead of the table.
    var json: Bool
    var timeZone: TimeZone

    /// What one line becomes: a line for stdout, a notice for stderr, and whether it ended
    /// the stream (with its reason).
    struct Output: Sendable, Equatable {
        var stdout: String?
        var stderr: String?
        var end: String?
    }

    /// The table's header; nil with `--json`.
    var header: String? { json ? nil : EventText.header }

    /// - Throws: ``EventLine/Malformed`` for a line that is not one the endpoint sends.
    func render(_ line: [UInt8]) throws(EventLine.Malformed) -> Output {
        let parsed = try EventLine.parse(line)
        let raw = json ? String(decoding: line, as: UTF8.self) : nil
        switch parsed {
        case .keepAlive:
            return Output()
        case .event(let event):
            return Output(stdout: raw ?? EventText.line(event, timeZone: timeZone))
        case .gap(let missed):
            return Output(stdout: raw, stderr: EventText.gap(missed: missed))
        case .end(let reason):
            return Output(stdout: raw, stderr: EventText.end(reason: reason, probe: probe), end: reason)
        case .other:
            return Output(stdout: raw)
        }
    }

    /// Prints the stream `body` to `sink`: the header, then what each line becomes, as
    /// soon as its newline arrives, however the lines are cut into chunks.
    ///
    /// - Returns: the `end` line's reason; nothing after it is read.
    /// - Throws: ``AgentClient/Failure`` when the body fails, holds a malformed or
    ///   overlong line, or stops without an `end` line; `CancellationError` when the task
    ///   is cancelled; and whatever `sink.out` throws.
    func printStream(_ body: some AsyncSequence<Data, any Error>, to sink: EventSink) async throws -> String {
        if let header { try sink.out(header) }
        var framer = LineFramer()
        do {
            for try await chunk in body {
                for line in try framer.lines(in: chunk) {
                    let output = try render(line)
                    if let text = output.stdout { try sink.out(text) }
                    if let text = output.stderr { sink.err(text) }
                    if let reason = output.end { return reason }
                }
            }
        } catch let error as AgentClient.TransportError {
            throw AgentClient.Failure(description: "lost the event stream of \(probe): \(error.description)")
        } catch let error as LineFramer.Overlong {
            throw AgentClient.Failure(description: "the event stream of \(probe) holds \(error.description)")
        } catch let error as EventLine.Malformed {
            throw AgentClient.Failure(description: error.description)
        }
        // An AsyncStream also ends, without an error, when its task is cancelled.
        try Task.checkCancellation()
        throw AgentClient.Failure(description: "the event stream of \(probe) stopped without an end line"
            + (framer.pendingBytes > 0 ? ", in the middle of a line" : "") + " (the connection to the agent dropped)")
    }
}
