import Foundation
import Synchronization
import Testing
@testable import TraceAPI
import TraceCore

@Suite("Event stream bodies (SSE and NDJSON wire format, keep-alives, Accept)")
struct EventStreamTests {
    static let never = KeepAliveTimer(interval: .seconds(3600))

    static func json(_ seq: UInt64) -> String { #"{"event":"call","seq":\#(seq),"pid":42}"# }

    static func body(_ feed: EventFeed, _ format: EventStreamBody.Format, after: UInt64? = nil,
                     keepAlive: KeepAliveTimer = never) -> EventStreamBody {
        EventStreamBody(subscription: feed.subscribe(after: after), format: format, keepAlive: keepAlive)
    }

    /// Reads until the body is pending or finished: the text, and how it stopped.
    static func drain(_ body: EventStreamBody, maxBytes: Int = 1 << 16) -> (String, HTTPBodyChunk) {
        var bytes: [UInt8] = []
        while true {
            switch body.read(maxBytes: maxBytes) {
            case .bytes(let chunk):
                #expect(!chunk.isEmpty && chunk.count <= maxBytes)
                bytes += chunk
            case let stop:
                return (String(decoding: bytes, as: UTF8.self), stop)
            }
        }
    }

    /// A feed with events 1 and 2 queued, 3 and 4 lost to a full queue, then finished.
    static func scenario(_ format: EventStreamBody.Format) -> (EventFeed, EventStreamBody) {
        let feed = EventFeed(queueEvents: 2)
        let body = body(feed, format)
        for _ in 0..<4 { feed.publish(kind: "call", json: json) }
        feed.finish(.deleted)
        return (feed, body)
    }

    @Test("SSE: retry first, then id/event/data per event, a gap without id, the end, then finished")
    func sseBytes() {
        let (_, body) = Self.scenario(.sse)
        let (text, stop) = Self.drain(body)
        #expect(text == """
            retry: 2000

            id: 1
            event: call
            data: {"event":"call","seq":1,"pid":42}

            id: 2
            event: call
            data: {"event":"call","seq":2,"pid":42}

            event: gap
            data: {"event":"gap","missed":2}

            event: end
            data: {"event":"end","reason":"deleted"}


            """)
        #expect(stop == .finished)
        #expect(body.read(maxBytes: 100) == .finished)
    }

    @Test("NDJSON: the event's own JSON per line, gap and end objects, then finished")
    func ndjsonBytes() {
        let (_, body) = Self.scenario(.ndjson)
        let (text, stop) = Self.drain(body)
        #expect(text == """
            {"event":"call","seq":1,"pid":42}
            {"event":"call","seq":2,"pid":42}
            {"event":"gap","missed":2}
            {"event":"end","reason":"deleted"}

            """)
        #expect(stop == .finished)
    }

    @Test("The SSE event name is the event's kind; an end reason is written with its wire name")
    func sseKindAndReason() {
        let feed = EventFeed()
        let body = Self.body(feed, .sse, after: 0)
        feed.publish(kind: "tracepoint") { #"{"seq":\#($0)}"# }
        let caughtUp = EventStreamBody(subscription: feed.subscribe(after: 0, follow: false), format: .ndjson, keepAlive: Self.never)
        #expect(Self.drain(body).0 == "retry: 2000\n\nid: 1\nevent: tracepoint\ndata: {\"seq\":1}\n\n")
        #expect(Self.drain(caughtUp).0 == "{\"seq\":1}\n{\"event\":\"end\",\"reason\":\"caught-up\"}\n")
    }

    @Test("Nothing to send and no keep-alive due: pending, and again after a partial drain")
    func pendingWhenIdle() {
        let feed = EventFeed()
        let sse = Self.body(feed, .sse), ndjson = Self.body(feed, .ndjson)
        #expect(Self.drain(sse) == ("retry: 2000\n\n", .pending))
        #expect(ndjson.read(maxBytes: 10) == .pending)
        feed.publish(kind: "call", json: Self.json)
        #expect(Self.drain(ndjson) == (Self.json(1) + "\n", .pending))
    }

    @Test("A stream that sent nothing for the interval gets one keep-alive (SSE comment, NDJSON object)")
    func keepAliveBytes() {
        let timer = KeepAliveTimer(interval: .milliseconds(200))
        let feed = EventFeed()
        let sse = Self.body(feed, .sse, keepAlive: timer), ndjson = Self.body(feed, .ndjson, keepAlive: timer)
        _ = Self.drain(sse)
        Thread.sleep(forTimeInterval: 0.25)
        #expect(sse.read(maxBytes: 100) == .bytes(Array(": keep-alive\n\n".utf8)))
        #expect(ndjson.read(maxBytes: 100) == .bytes(Array("{\"event\":\"keep-alive\"}\n".utf8)))
        #expect(sse.read(maxBytes: 100) == .pending)
        #expect(ndjson.read(maxBytes: 100) == .pending)
    }

    @Test("The shared timer wakes every parked stream when its keep-alive is due, then holds nothing")
    func keepAliveTimerWakes() {
        let timer = KeepAliveTimer(interval: .milliseconds(300))
        let feed = EventFeed()
        let bodies = (0..<3).map { _ in Self.body(feed, .ndjson, keepAlive: timer) }
        let woken = DispatchSemaphore(value: 0)
        for body in bodies {
            #expect(body.read(maxBytes: 100) == .pending)
            body.onReadable { woken.signal() }
        }
        #expect(timer.scheduled == 3)
        for _ in bodies { #expect(woken.wait(timeout: .now() + 5) == .success) }
        for body in bodies { #expect(body.read(maxBytes: 100) == .bytes(Array("{\"event\":\"keep-alive\"}\n".utf8))) }
        #expect(timer.scheduled == 0)
    }

    @Test("onReadable wakes once when an event arrives, not again when the keep-alive deadline passes")
    func wakeOnceForEventAndTimer() {
        let timer = KeepAliveTimer(interval: .milliseconds(50))
        let feed = EventFeed()
        let body = Self.body(feed, .ndjson, keepAlive: timer)
        #expect(body.read(maxBytes: 100) == .pending)
        let wakes = Mutex(0)
        body.onReadable { wakes.withLock { $0 += 1 } }
        feed.publish(kind: "call", json: Self.json)
        #expect(wakes.withLock { $0 } == 1)
        Thread.sleep(forTimeInterval: 0.2)
        #expect(wakes.withLock { $0 } == 1)
        #expect(timer.scheduled == 0)
    }

    @Test("onReadable wakes at once when bytes are waiting, the stream ended, or it was closed")
    func wakeAtOnce() {
        let feed = EventFeed()
        let wakes = Mutex(0)
        let wake: @Sendable () -> Void = { wakes.withLock { $0 += 1 } }
        let sse = Self.body(feed, .sse)
        sse.onReadable(wake)                                    // the retry line
        let ended = Self.body(feed, .ndjson)
        feed.finish(.shutdown)
        ended.onReadable(wake)                                  // the end, in the subscription
        let closed = Self.body(feed, .ndjson)
        closed.close()
        closed.onReadable(wake)
        #expect(wakes.withLock { $0 } == 3)
    }

    @Test("Reads of at most maxBytes split records across reads and reassemble the stream exactly", arguments: [1, 2, 7, 13, 64, 100])
    func maxBytesSplitting(maxBytes: Int) {
        let feed = EventFeed(queueEvents: 3)
        let reference = Self.body(feed, .sse), split = Self.body(feed, .sse)
        let ndjsonReference = Self.body(feed, .ndjson), ndjsonSplit = Self.body(feed, .ndjson)
        for _ in 0..<5 {
            feed.publish(kind: "call") { #"{"event":"call","seq":\#($0),"comm":"\#(String(repeating: "x", count: 150))"}"# }
        }
        feed.finish(.expired)
        let (whole, _) = Self.drain(reference)
        #expect(whole.contains("event: gap") && whole.hasSuffix("\"reason\":\"expired\"}\n\n"))
        #expect(Self.drain(split, maxBytes: maxBytes) == (whole, .finished))
        #expect(Self.drain(ndjsonSplit, maxBytes: maxBytes) == (Self.drain(ndjsonReference).0, .finished))
    }

    @Test("One read packs as many records as fit and keeps the remainder")
    func readPacksRecords() {
        let feed = EventFeed()
        let body = Self.body(feed, .ndjson)
        for _ in 0..<3 { feed.publish(kind: "call", json: Self.json) }
        let line = Self.json(1).utf8.count + 1
        guard case .bytes(let first) = body.read(maxBytes: line + 5) else { Issue.record("no bytes"); return }
        #expect(first.count == line + 5)
        #expect(Self.drain(body).0 == String(Self.json(2).dropFirst(5)) + "\n" + Self.json(3) + "\n")
    }

    @Test("close cancels the subscription, is idempotent, and the body reads as finished")
    func closeCancels() {
        let feed = EventFeed()
        let body = Self.body(feed, .sse)
        #expect(feed.counts.subscribers == 1)
        body.close()
        body.close()
        #expect(feed.counts.subscribers == 0)
        #expect(body.read(maxBytes: 100) == .finished)
    }

    @Test("A body dropped without close still unsubscribes")
    func dropCancels() {
        let feed = EventFeed()
        var body: EventStreamBody? = Self.body(feed, .ndjson)
        #expect(feed.counts.subscribers == 1)
        body = nil
        #expect(body == nil && feed.counts.subscribers == 0)
    }

    @Test("Content types of the two formats")
    func contentTypes() {
        #expect(EventStreamBody.Format.sse.contentType == "text/event-stream")
        #expect(EventStreamBody.Format.ndjson.contentType == "application/x-ndjson")
    }

    @Test("Accept negotiation: NDJSON only when the header prefers application/x-ndjson", arguments: [
        (nil, EventStreamBody.Format.sse),
        ("", .sse),
        ("application/x-ndjson", .ndjson),
        ("Application/X-NDJSON; charset=utf-8", .ndjson),
        ("text/event-stream", .sse),
        ("*/*", .sse),
        ("application/*", .ndjson),
        ("application/json", .sse),
        ("application/x-ndjson, */*", .ndjson),
        ("*/*;q=0.8, application/x-ndjson", .ndjson),
        ("text/event-stream, application/x-ndjson", .sse),
        ("application/x-ndjson, text/event-stream", .ndjson),
        ("application/x-ndjson;q=0.5, text/event-stream", .sse),
        ("text/event-stream;q=0.5, application/x-ndjson;q=0.9", .ndjson),
        ("application/x-ndjson;q=0", .sse),
        ("application/x-ndjson;q=0, */*", .sse),
        ("text/event-stream;q=0, */*", .ndjson),
        ("application/x-ndjson;q=1.0;ext=1, text/event-stream;q=0.999", .ndjson),
        ("application/x-ndjson;q=nan, text/event-stream;q=0.1", .sse),
        ("application/x-ndjson;q=2", .sse),
        ("application/x-ndjson ; Q=0.7 , text/event-stream;q=0.6", .ndjson),
        ("garbage, application/x-ndjson", .ndjson),
    ] as [(String?, EventStreamBody.Format)])
    func acceptNegotiation(accept: String?, expected: EventStreamBody.Format) {
        #expect(EventStreamBody.format(accept: accept) == expected)
    }
}
