import Dispatch
import Synchronization
import TraceCore

/// The body of `GET /v1/probes/{name}/events`: one subscriber's stream of a probe's
/// ``EventFeed``, written as Server-Sent Events or as NDJSON.
///
/// Wire format, Server-Sent Events (`text/event-stream`):
/// - first, `retry: 2000` and a blank line: a browser's `EventSource` reconnects after two
///   seconds (with `Last-Event-ID`) instead of its own default, and the response starts at
///   once even on a probe that has no event yet;
/// - an event: `id: <seq>`, `event: <kind>`, `data: <json>`, blank line;
/// - a gap: `event: gap`, `data: {"event":"gap","missed":N}`, blank line (no `id`, so a
///   reconnecting client resumes after the last event it did get);
/// - the end: `event: end`, `data: {"event":"end","reason":"deleted"}`, blank line, then the
///   body is finished. An `EventSource` client must close itself on `end`, or it reconnects;
/// - a keep-alive: the comment `: keep-alive` and a blank line.
///
/// NDJSON (`application/x-ndjson`): one JSON object per line: the event's own JSON (which
/// names its kind in `"event"`), `{"event":"gap","missed":N}`,
/// `{"event":"end","reason":"..."}` (then finished), `{"event":"keep-alive"}`.
///
/// A keep-alive is sent when nothing was sent for the ``KeepAliveTimer``'s interval.
///
/// Owns its subscription: ``close()`` (or the last reference going away) cancels it.
public final class EventStreamBody: HTTPBodyStream {
    /// How the stream is written.
    public enum Format: Sendable, Equatable {
        /// Server-Sent Events (`text/event-stream`).
        case sse
        /// Newline-delimited JSON (`application/x-ndjson`).
        case ndjson

        /// The response's `Content-Type`.
        public var contentType: String {
            switch self {
            case .sse: "text/event-stream"
            case .ndjson: "application/x-ndjson"
            }
        }
    }

    /// The format the stream is written in (its response's `Content-Type` is `format.contentType`).
    public let format: Format
    private let subscription: EventSubscription
    private let keepAlive: KeepAliveTimer
    private let timerID: UInt64

    private struct State {
        /// Encoded bytes not yet read, from `offset` on.
        var pending: [UInt8] = []
        var offset = 0
        /// The subscription's end has been encoded: once `pending` is read, the body is finished.
        var ended = false
        var closed = false
        /// When bytes were last handed to the transport (or the stream was opened).
        var lastSent: DispatchTime

        var unread: Int { pending.count - offset }
    }

    private let state: Mutex<State>

    /// - Parameters:
    ///   - subscription: the stream to write; the body owns it from now on.
    ///   - format: see ``format(accept:)``.
    ///   - keepAlive: the timer of the keep-alives (tests pass one with a short interval).
    public init(subscription: EventSubscription, format: Format, keepAlive: KeepAliveTimer = .shared) {
        self.subscription = subscription
        self.format = format
        self.keepAlive = keepAlive
        timerID = keepAlive.makeID()
        var initial = State(lastSent: .now())
        if format == .sse { initial.pending = Array("retry: 2000\n\n".utf8) }
        state = Mutex(initial)
    }

    deinit {
        subscription.cancel()
        keepAlive.cancel(timerID)
    }

    /// The format an `Accept` header asks for: NDJSON if it prefers `application/x-ndjson`
    /// to `text/event-stream`, Server-Sent Events otherwise (absent, `*/*`, neither type
    /// acceptable, or a tie).
    ///
    /// Each type takes the quality of the most specific media range matching it (RFC 9110
    /// §12.5.1: `type/subtype` over `type/*` over `*/*`); a range with an invalid `q` is
    /// ignored; parameters other than `q` do not matter. NDJSON wins with the higher
    /// quality; at equal quality, with the more specific match, then with the range listed
    /// first.
    public static func format(accept: String?) -> Format {
        guard let accept else { return .sse }
        var sse = Match(), ndjson = Match()
        for (position, range) in accept.split(separator: ",").enumerated() {
            guard let parsed = MediaRange(range) else { continue }
            sse.consider(parsed, for: ("text", "event-stream"), at: position)
            ndjson.consider(parsed, for: ("application", "x-ndjson"), at: position)
        }
        guard ndjson.q > 0 else { return .sse }
        if ndjson.q != sse.q { return ndjson.q > sse.q ? .ndjson : .sse }
        if ndjson.specificity != sse.specificity { return ndjson.specificity > sse.specificity ? .ndjson : .sse }
        return ndjson.position < sse.position ? .ndjson : .sse
    }

    /// The next bytes: what is left of a record, then as many records as fit in `maxBytes`
    /// (the last one split if it does not fit, its remainder kept for the next read), or a
    /// keep-alive when nothing was sent for the interval.
    public func read(maxBytes: Int) -> HTTPBodyChunk {
        precondition(maxBytes > 0, "An event stream cannot be read \(maxBytes) bytes at a time.")
        return state.withLock { s -> HTTPBodyChunk in
            if s.closed { return .finished }
            while s.unread < maxBytes && !s.ended, let item = subscription.next() {
                append(item, to: &s)
            }
            let now = DispatchTime.now()
            if s.unread == 0 {
                if s.ended { return .finished }
                guard now >= keepAlive.deadline(after: s.lastSent) else { return .pending }
                s.pending.append(contentsOf: format == .sse ? Self.sseKeepAlive : Self.ndjsonKeepAlive)
            }
            let count = min(maxBytes, s.unread)
            let bytes = Array(s.pending[s.offset..<s.offset + count])
            s.offset += count
            if s.offset == s.pending.count {
                s.pending.removeAll(keepingCapacity: s.pending.count <= 64 << 10)
                s.offset = 0
            }
            s.lastSent = now
            return .bytes(bytes)
        }
    }

    /// Calls `wake` once: when the subscription has an item, when a keep-alive is due, or
    /// at once if `read` would already return something.
    public func onReadable(_ wake: @escaping @Sendable () -> Void) {
        let once = OneShot(wake)
        let (ready, deadline) = state.withLock { s in
            let deadline = keepAlive.deadline(after: s.lastSent)
            return (s.closed || s.ended || s.unread > 0 || DispatchTime.now() >= deadline, deadline)
        }
        if ready {
            once.fire()
            return
        }
        keepAlive.schedule(timerID, at: deadline, once.fire)
        subscription.onAvailable(once.fire)
    }

    /// Cancels the subscription and the keep-alive. Idempotent.
    public func close() {
        let first = state.withLock { s -> Bool in
            defer { s.closed = true; s.pending = []; s.offset = 0 }
            return !s.closed
        }
        guard first else { return }
        subscription.cancel()
        keepAlive.cancel(timerID)
    }

    private func append(_ item: FeedItem, to s: inout State) {
        switch (format, item) {
        case (.sse, .event(let seq, let kind, let json)):
            assert(!json.utf8.contains(UInt8(ascii: "\n")), "event \(seq)'s JSON spans several lines")
            s.pending.append(contentsOf: "id: \(seq)\nevent: \(kind)\ndata: \(json)\n\n".utf8)
        case (.ndjson, .event(let seq, _, let json)):
            assert(!json.utf8.contains(UInt8(ascii: "\n")), "event \(seq)'s JSON spans several lines")
            s.pending.append(contentsOf: json.utf8)
            s.pending.append(UInt8(ascii: "\n"))
        case (.sse, .gap(let missed)):
            s.pending.append(contentsOf: "event: gap\ndata: {\"event\":\"gap\",\"missed\":\(missed)}\n\n".utf8)
        case (.ndjson, .gap(let missed)):
            s.pending.append(contentsOf: "{\"event\":\"gap\",\"missed\":\(missed)}\n".utf8)
        case (.sse, .end(let reason)):
            s.pending.append(contentsOf: "event: end\ndata: {\"event\":\"end\",\"reason\":\"\(reason.rawValue)\"}\n\n".utf8)
            s.ended = true
        case (.ndjson, .end(let reason)):
            s.pending.append(contentsOf: "{\"event\":\"end\",\"reason\":\"\(reason.rawValue)\"}\n".utf8)
            s.ended = true
        }
    }

    private static let sseKeepAlive = Array(": keep-alive\n\n".utf8)
    private static let ndjsonKeepAlive = Array("{\"event\":\"keep-alive\"}\n".utf8)
}

/// A wake-up handed to two sources (the subscription and the keep-alive timer) that must
/// reach the transport once: the first call passes it on and drops it.
private final class OneShot: Sendable {
    private let wake: Mutex<(@Sendable () -> Void)?>

    init(_ wake: @escaping @Sendable () -> Void) { self.wake = Mutex(wake) }

    @Sendable func fire() {
        let wake = self.wake.withLock { w -> (@Sendable () -> Void)? in
            defer { w = nil }
            return w
        }
        wake?()
    }
}

/// One media range of an `Accept` header: its type, subtype and quality.
private struct MediaRange {
    var type: Substring
    var subtype: Substring
    var q: Double

    init?(_ text: Substring) {
        var parts = text.split(separator: ";", omittingEmptySubsequences: false).makeIterator()
        let media = (parts.next() ?? "").trimmingSpaces().lowercased()
        let slash = media.split(separator: "/", omittingEmptySubsequences: false)
        guard slash.count == 2, !slash[0].isEmpty, !slash[1].isEmpty, slash[0] != "*" || slash[1] == "*" else { return nil }
        type = slash[0]
        subtype = slash[1]
        q = 1
        // Parameters after q are accept-extensions, not part of the range.
        while let parameter = parts.next() {
            let pair = parameter.split(separator: "=", maxSplits: 1)
            guard pair.count == 2, pair[0].trimmingSpaces().lowercased() == "q" else { continue }
            let value = pair[1].trimmingSpaces()
            guard !value.isEmpty, value.count <= 5, value.allSatisfy({ $0 == "." || ("0"..."9").contains($0) }),
                  let q = Double(value), q >= 0, q <= 1 else { return nil }
            self.q = q
            break
        }
    }
}

/// The best match of one media type among the ranges of an `Accept` header.
private struct Match {
    var q = 0.0
    /// 0: no range matched; 1: `*/*`; 2: `type/*`; 3: `type/subtype`.
    var specificity = 0
    var position = Int.max

    mutating func consider(_ range: MediaRange, for media: (type: String, subtype: String), at position: Int) {
        let specificity: Int
        if range.type == media.type && range.subtype == media.subtype {
            specificity = 3
        } else if range.type == media.type && range.subtype == "*" {
            specificity = 2
        } else if range.type == "*" {
            specificity = 1
        } else {
            return
        }
        guard specificity > self.specificity else { return }
        self = Match(q: range.q, specificity: specificity, position: position)
    }
}
