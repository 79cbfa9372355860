import ArgumentParser
import Foundation
import Testing
@testable import traceplane

/// What a sink was given, in order.
final class Transcript: @unchecked Sendable {
    // Guards `lines`: sinks are called from the printing task, tests read from theirs.
    private let lock = NSLock()
    private var lines: [String] = []

    var all: [String] { lock.withLock { lines } }
    var sink: EventSink {
        EventSink(out: { line in self.lock.withLock { self.lines.append("out: " + line) } },
                  err: { line in self.lock.withLock { self.lines.append("err: " + line) } })
    }
}

/// `probe events`: its request, and the stream loop over chunked bodies.
@Suite("probe events: request and stream")
struct EventsCommandTests {
    let printer = EventPrinter(probe: "web", json: false, timeZone: TimeZone(identifier: "UTC")!)

    func body(_ chunks: [String], failing: (any Error)? = nil) -> AsyncThrowingStream<Data, any Error> {
        let (stream, continuation) = AsyncThrowingStream<Data, any Error>.makeStream()
        for chunk in chunks { continuation.yield(Data(chunk.utf8)) }
        continuation.finish(throwing: failing)
        return stream
    }

    @Test("Without -f it asks for follow=false; with -f or --follow, for the live stream; always NDJSON")
    func request() throws {
        let once = try ProbeCommand.Events.parse(["web"])
        #expect(once.path == "/v1/probes/web/events?follow=false")
        #expect(once.requestHeaders == ["Accept": "application/x-ndjson"])
        #expect(try ProbeCommand.Events.parse(["web", "-f"]).path == "/v1/probes/web/events")
        #expect(try ProbeCommand.Events.parse(["web", "--follow", "--json"]).json)
        #expect(try ProbeCommand.Events.parse(["web", "--agent", "https://h:9480"]).connection.agent == "https://h:9480")
    }

    @Test("--since-id N resumes after N (Last-Event-ID); it must be a non-negative integer")
    func sinceID() throws {
        #expect(try ProbeCommand.Events.parse(["web", "--since-id", "17"]).requestHeaders
                == ["Accept": "application/x-ndjson", "Last-Event-ID": "17"])
        #expect(try ProbeCommand.Events.parse(["web", "--since-id", "18446744073709551615"]).sinceID == .max)
        for bad in ["-1", "x", "1.5"] {
            #expect(throws: (any Error).self) { try ProbeCommand.Events.parse(["web", "--since-id", bad]) }
        }
        #expect(throws: (any Error).self) { try ProbeCommand.Events.parse([]) }
    }

    @Test("The stream prints the header, then each line as its newline arrives, however it is chunked, and stops at end")
    func chunked() async throws {
        let call = EventTextTests.call
        let transcript = Transcript()
        let reason = try await printer.printStream(body([
            String(call.prefix(40)), String(call.dropFirst(40)) + "\n{\"event\":\"keep-alive\"}\n{\"event\":\"ga", "p\",\"missed\":3}\r\n",
            EventTextTests.tracepoint + "\n{\"event\":\"end\",\"reason\":\"deleted\"}\n",
            "{\"event\":\"call\" — never read: the stream ended above\n",
        ]), to: transcript.sink)
        #expect(reason == "deleted")
        #expect(transcript.all == [
            "out: " + EventText.header,
            "out: 13:20:01.123 nginx            42      43           2.100  -EAGAIN  arg:fd=7",
            "err: ... 3 events missed (this client read too slowly or resumed too late)",
            "out: 13:20:02.500 systemd          1       1                -        -",
            "err: stream ended: probe web was deleted",
        ])
    }

    @Test("Each event is printed before the next chunk arrives (the output really streams)")
    func streams() async throws {
        let (stream, continuation) = AsyncThrowingStream<Data, any Error>.makeStream()
        let transcript = Transcript()
        let printing = Task { [printer] in try await printer.printStream(stream, to: transcript.sink) }
        continuation.yield(Data((EventTextTests.call + "\n" + EventTextTests.tracepoint.prefix(30)).utf8))
        var waited = 0
        while transcript.all.count < 2 && waited < 500 {
            try await Task.sleep(for: .milliseconds(10))
            waited += 1
        }
        #expect(transcript.all.count == 2, "the first event was not printed while the stream stayed open")
        continuation.yield(Data(EventTextTests.tracepoint.dropFirst(30).utf8))
        continuation.yield(Data("\n{\"event\":\"end\",\"reason\":\"caught-up\"}\n".utf8))
        #expect(try await printing.value == "caught-up")
        #expect(transcript.all.count == 3)
    }

    @Test("--json passes the lines through, gap and end included, with the notices on stderr and no header")
    func json() async throws {
        let transcript = Transcript()
        let lines = [EventTextTests.call, #"{"event":"keep-alive"}"#, #"{"event":"gap","missed":1}"#, #"{"event":"end","reason":"caught-up"}"#]
        let json = EventPrinter(probe: "web", json: true, timeZone: .current)
        #expect(try await json.printStream(body([lines.joined(separator: "\n") + "\n"]), to: transcript.sink) == "caught-up")
        #expect(transcript.all == ["out: " + lines[0], "out: " + lines[2], "err: " + EventText.gap(missed: 1), "out: " + lines[3]])
    }

    @Test("A stream that stops without an end line fails, and says when it stopped mid-line")
    func noEnd() async {
        await #expect {
            try await printer.printStream(body([EventTextTests.call + "\n"]), to: Transcript().sink)
        } throws: { error in
            "\(error)" == "the event stream of web stopped without an end line (the connection to the agent dropped)"
        }
        await #expect {
            try await printer.printStream(body([EventTextTests.call + "\n{\"event\":\"ca"]), to: Transcript().sink)
        } throws: { error in
            "\(error)" == "the event stream of web stopped without an end line, in the middle of a line (the connection to the agent dropped)"
        }
    }

    @Test("A connection that fails mid-stream, a malformed line and an endless line each fail with what happened")
    func failures() async {
        let lost = AgentClient.TransportError(description: "no answer within 60s (timed out)", retryable: true)
        await #expect {
            try await printer.printStream(body([EventTextTests.call + "\n"], failing: lost), to: Transcript().sink)
        } throws: { error in
            "\(error)" == "lost the event stream of web: no answer within 60s (timed out)"
        }
        await #expect {
            try await printer.printStream(body(["<html>\n"]), to: Transcript().sink)
        } throws: { error in
            "\(error)" == "the agent sent a line that is not an event (not a JSON value at byte 0): <html>"
        }
        await #expect {
            try await printer.printStream(body([String(repeating: "x", count: LineFramer.defaultMaxLine + 2)]), to: Transcript().sink)
        } throws: { error in
            "\(error)" == "the event stream of web holds a line longer than \(LineFramer.defaultMaxLine) bytes"
        }
    }

    @Test("A sink that fails (stdout closed) stops the stream with its error")
    func sinkFails() async {
        struct Closed: Error {}
        let sink = EventSink(out: { _ in throw Closed() }, err: { _ in })
        await #expect(throws: Closed.self) {
            try await printer.printStream(body([EventTextTests.call + "\n"]), to: sink)
        }
    }

    @Test("curl's response head: the status and lowercased headers, once the blank line is in; 1xx heads are separate")
    func curlHead() throws {
        #expect(CurlTransport.parseHead(Array("HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n".utf8)) == nil)
        let text = "HTTP/2 409 \r\ncontent-type: application/problem+json\r\nX-A:  b \r\n\r\n"
        let head = try #require(CurlTransport.parseHead(Array((text + "{\"detail\"").utf8)))
        #expect(head.status == 409 && head.headers == ["content-type": "application/problem+json", "x-a": "b"])
        #expect(head.length == text.utf8.count)
        #expect(CurlTransport.parseHead(Array("HTTP/1.1 100 Continue\n\nHTTP/1.1 200 OK\n\n".utf8))?.status == 100)
    }
}
