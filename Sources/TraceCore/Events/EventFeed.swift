import Synchronization

/// Why a feed's stream ended, as sent in the last record of an event stream.
public enum FeedEndReason: String, Sendable {
    /// The probe was deleted.
    case deleted
    /// The probe was replaced by a PUT with another spec.
    case replaced
    /// The probe's TTL ran out.
    case expired
    /// The agent is stopping.
    case shutdown
    /// A `follow: false` subscription has delivered everything it asked for.
    case caughtUp = "caught-up"
}

/// One item of a subscriber's stream, in stream order.
public enum FeedItem: Sendable, Equatable {
    /// A published event: its sequence number, its kind (`call` or `tracepoint`) and its
    /// JSON object (one line, no newline).
    case event(seq: UInt64, kind: String, json: String)
    /// This many events, published between the event before and the event after, will
    /// never reach this subscriber.
    case gap(missed: UInt64)
    /// The stream is over; nothing follows.
    case end(FeedEndReason)
}

/// The per-probe fan-out of formatted events to its subscribers (the `events` endpoint's
/// streams).
///
/// Events are numbered 1, 2, 3, … by ``publish(kind:json:)``. The last `replayCapacity`
/// events are kept so that a client reconnecting with `Last-Event-ID` resumes where it left
/// off. Each subscriber has its own queue of at most `queueEvents` events and `queueBytes`
/// bytes of JSON: an event that finds the queue full is not queued, and the subscriber gets
/// one ``FeedItem/gap(missed:)`` counting the lost events just before the next item it does
/// get. A slow subscriber therefore never slows the publisher or the other subscribers, and
/// the memory is bounded by the replay buffer plus the queues (the JSON strings are shared
/// between them, not copied).
///
/// Thread-safe. Publishers are serialized among themselves; the JSON is built outside the
/// lock that subscribers take, and wake-ups are called with no lock of the feed held.
public final class EventFeed: Sendable {
    /// A snapshot of the feed's bookkeeping.
    public struct Counts: Sendable, Equatable {
        /// Events published so far (the last sequence number).
        public var published: UInt64
        /// Subscriptions neither cancelled nor past their end.
        public var subscribers: Int
        /// The sum of the gaps placed in subscribers' streams (for a slow reader, a
        /// resume beyond the replay buffer). Losses of a queue that is still full are
        /// counted when their gap is placed, that is before the reader's next item.
        public var missed: UInt64

        /// Counts as given (tests compare against them).
        public init(published: UInt64, subscribers: Int, missed: UInt64) {
            self.published = published
            self.subscribers = subscribers
            self.missed = missed
        }
    }

    struct Event {
        var seq: UInt64
        var kind: String
        var json: String
        var bytes: Int { json.utf8.count }
        var item: FeedItem { .event(seq: seq, kind: kind, json: json) }
    }

    struct Subscriber {
        var queue = FIFO<FeedItem>()
        /// Events and JSON bytes in `queue` (gaps and the end are not counted).
        var events = 0
        var bytes = 0
        /// Events lost since the last queued item, not yet in the stream as a gap.
        var lost: UInt64 = 0
        /// `.end` is in the queue: nothing more is queued.
        var ended = false
        var wake: (@Sendable () -> Void)?
    }

    struct State {
        var lastSeq: UInt64 = 0
        var replay = FIFO<Event>()
        var subscribers: [UInt64: Subscriber] = [:]
        var nextSubscriber: UInt64 = 0
        var missed: UInt64 = 0
        var finished: FeedEndReason?
    }

    let replayCapacity: Int
    let queueEvents: Int
    let queueBytes: Int
    private let state = Mutex(State())
    /// Serializes publishers, so that sequence numbers enter the streams in order while the
    /// JSON is built outside `state`.
    private let publishing = Mutex(())

    /// - Parameters:
    ///   - replayCapacity: events kept for resuming subscribers (0: none).
    ///   - queueEvents: events a subscriber may have waiting (at least 1).
    ///   - queueBytes: JSON bytes a subscriber may have waiting; an event larger than that
    ///     is still queued when the subscriber's queue is empty.
    public init(replayCapacity: Int = 1024, queueEvents: Int = 16_384, queueBytes: Int = 4 << 20) {
        precondition(replayCapacity >= 0, "An event feed's replay capacity cannot be negative (got \(replayCapacity)).")
        precondition(queueEvents >= 1 && queueBytes >= 1,
                     "An event feed's subscriber queue must hold at least one event and one byte (got \(queueEvents) events, \(queueBytes) bytes).")
        self.replayCapacity = replayCapacity
        self.queueEvents = queueEvents
        self.queueBytes = queueBytes
    }

    /// Assigns the next sequence number (1, 2, 3, ...), builds the JSON with it, keeps it in
    /// the replay buffer and hands it to every subscriber.
    ///
    /// Never blocks on a subscriber: a full queue loses the event (counted as a gap). With
    /// no subscriber, only the replay buffer changes. After ``finish(_:)`` events are still
    /// numbered and kept, but reach no one.
    /// - Parameters:
    ///   - kind: the event's kind, `call` or `tracepoint` (the SSE event name).
    ///   - json: builds the event's JSON object (one line, no newline) from its sequence
    ///     number; called exactly once, on the caller's thread.
    /// - Returns: the event's sequence number.
    @discardableResult
    public func publish(kind: String, json: (UInt64) -> String) -> UInt64 {
        let (seq, wakes) = publishing.withLock { _ -> (UInt64, [@Sendable () -> Void]) in
            let seq = state.withLock { $0.lastSeq } + 1
            let event = Event(seq: seq, kind: kind, json: json(seq))
            let wakes = state.withLock { s -> [@Sendable () -> Void] in
                s.lastSeq = seq
                if replayCapacity > 0 {
                    if s.replay.count == replayCapacity { _ = s.replay.popFirst() }
                    s.replay.append(event)
                }
                var wakes: [@Sendable () -> Void] = []
                var missed = s.missed
                s.forEachSubscriber { sub in
                    if let wake = deliver(event, to: &sub, missed: &missed) { wakes.append(wake) }
                }
                s.missed = missed
                return wakes
            }
            return (seq, wakes)
        }
        for wake in wakes { wake() }
        return seq
    }

    /// Queues `event` for `sub` if its queue has room, and returns its wake-up if one is due.
    private func deliver(_ event: Event, to sub: inout Subscriber, missed: inout UInt64) -> (@Sendable () -> Void)? {
        guard !sub.ended else { return nil }
        let full = sub.events > 0 && (sub.events >= queueEvents || sub.bytes + event.bytes > queueBytes)
        if full {
            sub.lost += 1
            return nil
        }
        placeGap(&sub, missed: &missed)
        sub.queue.append(event.item)
        sub.events += 1
        sub.bytes += event.bytes
        return takeWake(&sub)
    }

    private func placeGap(_ sub: inout Subscriber, missed: inout UInt64) {
        guard sub.lost > 0 else { return }
        sub.queue.append(.gap(missed: sub.lost))
        missed += sub.lost
        sub.lost = 0
    }

    private func takeWake(_ sub: inout Subscriber) -> (@Sendable () -> Void)? {
        defer { sub.wake = nil }
        return sub.wake
    }

    /// A new subscriber's stream.
    ///
    /// - Parameters:
    ///   - lastEventID: the `Last-Event-ID` of a resuming client: the stream starts after
    ///     that event, from the replay buffer, with a ``FeedItem/gap(missed:)`` first for
    ///     events already gone from it; at or past the last published event, or `nil`, the
    ///     stream is live only. `0` asks for the oldest event still kept.
    ///   - follow: `false` ends the stream with ``FeedEndReason/caughtUp`` once the replay
    ///     is delivered, instead of following live events. Without a `lastEventID` it then
    ///     replays every event still kept, with no gap ("what do you hold").
    ///
    /// The replayed events are queued whatever the queue's bounds, and count toward them:
    /// live events that find the queue still full of replay are lost (a gap), as for any
    /// slow reader.
    /// - Returns: the subscription, whose owner must ``EventSubscription/cancel()`` it (or
    ///   drop it). After ``finish(_:)``, its stream is only the feed's end.
    public func subscribe(after lastEventID: UInt64?, follow: Bool = true) -> EventSubscription {
        let id = state.withLock { s -> UInt64 in
            var sub = Subscriber()
            if let reason = s.finished {
                sub.queue.append(.end(reason))
                sub.ended = true
            } else {
                // An id this feed never gave belongs to an earlier stream of the name (the
                // probe was replaced, or the agent restarted, and numbers from 1 again):
                // deliver this stream from its beginning, with a gap for what is gone,
                // rather than only what comes next (which lost its first events silently).
                let known = lastEventID.map { $0 > s.lastSeq ? 0 : $0 }
                let start = known ?? (follow ? nil : (s.replay.first?.seq ?? s.lastSeq + 1) - 1)
                if let after = start, after < s.lastSeq {
                    let firstKept = s.replay.first?.seq ?? s.lastSeq + 1
                    if after + 1 < firstKept {
                        sub.lost = firstKept - after - 1
                        placeGap(&sub, missed: &s.missed)
                    }
                    for event in s.replay where event.seq > after {
                        sub.queue.append(event.item)
                        sub.events += 1
                        sub.bytes += event.bytes
                    }
                }
                if !follow {
                    sub.queue.append(.end(.caughtUp))
                    sub.ended = true
                }
            }
            s.nextSubscriber += 1
            s.subscribers[s.nextSubscriber] = sub
            return s.nextSubscriber
        }
        return EventSubscription(feed: self, id: id)
    }

    /// Ends every stream: each subscriber gets `.end(reason)` after what it has queued (and
    /// after a gap for the events its full queue lost), and later ``subscribe(after:follow:)``
    /// calls get `.end(reason)` at once. Idempotent: only the first reason counts.
    public func finish(_ reason: FeedEndReason) {
        let wakes = state.withLock { s -> [@Sendable () -> Void] in
            guard s.finished == nil else { return [] }
            s.finished = reason
            var wakes: [@Sendable () -> Void] = []
            var missed = s.missed
            s.forEachSubscriber { sub in
                guard !sub.ended else { return }
                placeGap(&sub, missed: &missed)
                sub.queue.append(.end(reason))
                sub.ended = true
                if let wake = takeWake(&sub) { wakes.append(wake) }
            }
            s.missed = missed
            return wakes
        }
        for wake in wakes { wake() }
    }

    /// Published events, live subscriptions and missed events, read together.
    public var counts: Counts {
        state.withLock { Counts(published: $0.lastSeq, subscribers: $0.subscribers.count, missed: $0.missed) }
    }

    // MARK: The subscription's side

    func next(_ id: UInt64) -> FeedItem? {
        state.withLock { s -> FeedItem? in
            guard s.subscribers[id] != nil else { return nil }
            let item = take(from: &s.subscribers[id]!, missed: &s.missed)
            if s.subscribers[id]!.isOver { s.subscribers[id] = nil }
            return item
        }
    }

    private func take(from sub: inout Subscriber, missed: inout UInt64) -> FeedItem? {
        if sub.queue.isEmpty { placeGap(&sub, missed: &missed) }
        guard let item = sub.queue.popFirst() else { return nil }
        if case .event(_, _, let json) = item {
            sub.events -= 1
            sub.bytes -= json.utf8.count
        }
        return item
    }

    func onAvailable(_ id: UInt64, _ wake: @escaping @Sendable () -> Void) {
        // The replaced wake-up is returned so that it is released after the lock.
        let (now, _) = state.withLock { s -> (Bool, (@Sendable () -> Void)?) in
            guard s.subscribers[id] != nil else { return (false, nil) }
            if s.subscribers[id]!.hasItem { return (true, nil) }
            defer { s.subscribers[id]!.wake = wake }
            return (false, s.subscribers[id]!.wake)
        }
        if now { wake() }
    }

    func cancel(_ id: UInt64) {
        // Returned so that the queue and the wake-up are released after the lock.
        _ = state.withLock { $0.subscribers.removeValue(forKey: id) }
    }
}

extension EventFeed.Subscriber {
    /// `next()` would return an item: a queued one, or the gap of a drained queue.
    var hasItem: Bool { !queue.isEmpty || lost > 0 }
    /// Its end has been taken: the subscriber is gone from the feed.
    var isOver: Bool { ended && queue.isEmpty }
}

extension EventFeed.State {
    /// Calls `body` on every subscriber in place (no copy of the table).
    mutating func forEachSubscriber(_ body: (inout EventFeed.Subscriber) -> Void) {
        var i = subscribers.values.startIndex
        while i != subscribers.values.endIndex {
            body(&subscribers.values[i])
            subscribers.values.formIndex(after: &i)
        }
    }
}

/// One subscriber's stream of a ``EventFeed``: pulled with ``next()``, never blocking, with
/// a one-shot wake-up for when something arrives.
///
/// Owned by one reader (the HTTP response's body). ``cancel()`` (or dropping the last
/// reference) unsubscribes and frees the queue.
public final class EventSubscription: Sendable {
    let feed: EventFeed
    let id: UInt64

    init(feed: EventFeed, id: UInt64) {
        self.feed = feed
        self.id = id
    }

    deinit { feed.cancel(id) }

    /// The next item of the stream, or `nil` when there is nothing right now (and forever
    /// after `.end` was returned or the subscription was cancelled). Never blocks.
    public func next() -> FeedItem? { feed.next(id) }

    /// Calls `wake` once, from any thread and never under the feed's lock, as soon as
    /// ``next()`` would return an item; at once if it already would. One-shot: a second
    /// call before the first wake-up replaces the first `wake`, which is then never called.
    /// After `.end` was taken or after ``cancel()``, `wake` is never called.
    public func onAvailable(_ wake: @escaping @Sendable () -> Void) { feed.onAvailable(id, wake) }

    /// Unsubscribes and frees the queue; a pending wake-up is dropped without being called.
    /// Idempotent.
    public func cancel() { feed.cancel(id) }
}

/// A first-in first-out queue: an array read from a moving head, compacted when the
/// consumed part outgrows the rest.
/// A taken element's slot is cleared at once, so that the queue never keeps what it gave
/// away.
struct FIFO<Element>: Sequence {
    private var storage: [Element?] = []
    private var head = 0

    var count: Int { storage.count - head }
    var isEmpty: Bool { head == storage.count }
    var first: Element? { isEmpty ? nil : storage[head] }

    mutating func append(_ element: Element) { storage.append(element) }

    mutating func popFirst() -> Element? {
        guard !isEmpty else { return nil }
        let element = storage[head].take()
        head += 1
        if head == storage.count {
            storage.removeAll(keepingCapacity: storage.count <= 64)
            head = 0
        } else if head >= 32 && head * 2 >= storage.count {
            storage.removeFirst(head)
            head = 0
        }
        return element
    }

    func makeIterator() -> some IteratorProtocol<Element> { storage[head...].lazy.compactMap { $0 }.makeIterator() }
}
