import Foundation
import Synchronization
import Testing
@testable import TraceCore

@Suite("Event feed (fan-out, replay, bounded queues, gaps)")
struct EventFeedTests {
    static func json(_ seq: UInt64) -> String { #"{"event":"call","seq":\#(seq)}"# }

    static func event(_ seq: UInt64) -> FeedItem { .event(seq: seq, kind: "call", json: json(seq)) }

    @discardableResult
    static func publish(_ feed: EventFeed, _ n: Int) -> [UInt64] {
        (0..<n).map { _ in feed.publish(kind: "call", json: json) }
    }

    /// Everything the subscription has right now.
    static func drain(_ sub: EventSubscription) -> [FeedItem] {
        var items: [FeedItem] = []
        while let item = sub.next() { items.append(item) }
        return items
    }

    @Test("publish numbers events 1, 2, 3, … and builds each JSON with its own number")
    func sequenceNumbering() {
        let feed = EventFeed()
        let seen = Mutex<[UInt64]>([])
        let seqs = (0..<3).map { _ in
            feed.publish(kind: "call") { seq in
                seen.withLock { $0.append(seq) }
                return Self.json(seq)
            }
        }
        #expect(seqs == [1, 2, 3])
        #expect(seen.withLock { $0 } == [1, 2, 3])
        #expect(feed.counts == EventFeed.Counts(published: 3, subscribers: 0, missed: 0))
    }

    @Test("Several live subscribers get identical streams, with the kind given to publish")
    func identicalStreams() {
        let feed = EventFeed()
        let subs = (0..<3).map { _ in feed.subscribe(after: nil) }
        Self.publish(feed, 4)
        feed.publish(kind: "tracepoint") { #"{"seq":\#($0)}"# }
        let expected = (1...4).map(Self.event) + [.event(seq: 5, kind: "tracepoint", json: #"{"seq":5}"#)]
        for sub in subs { #expect(Self.drain(sub) == expected) }
        #expect(feed.counts.subscribers == 3)
    }

    @Test("A live subscriber (after: nil) starts at the next event, not with the replay")
    func liveOnly() {
        let feed = EventFeed()
        Self.publish(feed, 3)
        let sub = feed.subscribe(after: nil)
        #expect(sub.next() == nil)
        Self.publish(feed, 1)
        #expect(Self.drain(sub) == [Self.event(4)])
    }

    @Test("Resuming within the replay buffer replays from the event after Last-Event-ID, then goes live")
    func resumeWithinReplay() {
        let feed = EventFeed(replayCapacity: 10)
        Self.publish(feed, 5)
        let sub = feed.subscribe(after: 2)
        #expect(Self.drain(sub) == [3, 4, 5].map(Self.event))
        Self.publish(feed, 1)
        #expect(Self.drain(sub) == [Self.event(6)])
        #expect(feed.counts.missed == 0)
    }

    @Test("Resuming at the last published event is live only; past it (an id of an earlier stream: a replaced probe, a restarted agent) replays this stream from its start")
    func resumeAtOrPastLast() {
        let feed = EventFeed(replayCapacity: 10)
        Self.publish(feed, 5)
        let atLast = feed.subscribe(after: 5)
        let pastLast = feed.subscribe(after: 99)
        #expect(atLast.next() == nil)
        #expect(Self.drain(pastLast) == (1...5).map(Self.event))
        Self.publish(feed, 1)
        #expect(Self.drain(atLast) == [Self.event(6)])
        #expect(Self.drain(pastLast) == [Self.event(6)])
        // Beyond the replay buffer: the gap says exactly how many of this stream are gone.
        let small = EventFeed(replayCapacity: 4)
        Self.publish(small, 10)
        #expect(Self.drain(small.subscribe(after: 24_000)) == [.gap(missed: 6)] + (7...10).map(Self.event))
    }

    @Test("Resuming before the replay buffer gives a gap of exactly the evicted events, then the whole replay")
    func resumeBeyondReplay() {
        let feed = EventFeed(replayCapacity: 4)
        Self.publish(feed, 10)
        #expect(Self.drain(feed.subscribe(after: 2)) == [.gap(missed: 4)] + (7...10).map(Self.event))
        #expect(Self.drain(feed.subscribe(after: 0)) == [.gap(missed: 6)] + (7...10).map(Self.event))
        #expect(Self.drain(feed.subscribe(after: 6)) == (7...10).map(Self.event))
        #expect(feed.counts.missed == 10)
    }

    @Test("after: 0 replays from the first event when nothing was evicted, and is live on an empty feed")
    func resumeFromZero() {
        let feed = EventFeed(replayCapacity: 4)
        #expect(feed.subscribe(after: 0).next() == nil)
        Self.publish(feed, 3)
        #expect(Self.drain(feed.subscribe(after: 0)) == (1...3).map(Self.event))
    }

    @Test("Without a replay buffer, a resume is one gap for everything since Last-Event-ID")
    func resumeWithoutReplay() {
        let feed = EventFeed(replayCapacity: 0)
        Self.publish(feed, 5)
        #expect(Self.drain(feed.subscribe(after: 1)) == [.gap(missed: 4)])
    }

    @Test("A full queue (events) loses new events: one gap with their exact number before the next event received")
    func queueOverflowByEvents() {
        let feed = EventFeed(queueEvents: 3)
        let sub = feed.subscribe(after: nil)
        Self.publish(feed, 10_000)
        #expect(Self.drain(sub) == [1, 2, 3].map(Self.event) + [.gap(missed: 9_997)])
        Self.publish(feed, 1)
        #expect(Self.drain(sub) == [Self.event(10_001)])
        #expect(feed.counts.missed == 9_997)
    }

    @Test("The gap sits in stream position: events queued before the loss come first, the next received event after it")
    func gapPosition() {
        let feed = EventFeed(queueEvents: 2)
        let sub = feed.subscribe(after: nil)
        Self.publish(feed, 4)          // 1, 2 queued; 3, 4 lost
        #expect(sub.next() == Self.event(1))
        Self.publish(feed, 2)          // 5 queued after the gap; 6 lost
        #expect(Self.drain(sub) == [Self.event(2), .gap(missed: 2), Self.event(5), .gap(missed: 1)])
    }

    @Test("A full queue (bytes) loses new events; an event larger than the bound still reaches an empty queue")
    func queueOverflowByBytes() {
        let size = Self.json(1).utf8.count
        let feed = EventFeed(queueEvents: 1000, queueBytes: 2 * size + 1)
        let sub = feed.subscribe(after: nil)
        Self.publish(feed, 5)
        #expect(Self.drain(sub) == [Self.event(1), Self.event(2), .gap(missed: 3)])

        let big = String(repeating: "x", count: 10 * size)
        feed.publish(kind: "call") { _ in big }
        #expect(Self.drain(sub) == [.event(seq: 6, kind: "call", json: big)])
    }

    @Test("A replay larger than the queue is delivered whole, and counts toward the queue's bounds")
    func replayCountsTowardQueue() {
        let feed = EventFeed(replayCapacity: 10, queueEvents: 3)
        Self.publish(feed, 10)
        let sub = feed.subscribe(after: 0)
        Self.publish(feed, 1)
        #expect(Self.drain(sub) == (1...10).map(Self.event) + [.gap(missed: 1)])
    }

    @Test("A slow subscriber does not cost the others anything")
    func slowSubscriberIsolated() {
        let feed = EventFeed(queueEvents: 2)
        let slow = feed.subscribe(after: nil), fast = feed.subscribe(after: nil)
        for seq in 1...100 {
            Self.publish(feed, 1)
            #expect(fast.next() == Self.event(UInt64(seq)))
        }
        #expect(Self.drain(slow) == [Self.event(1), Self.event(2), .gap(missed: 98)])
    }

    @Test("finish ends each stream after what it has queued, and after the gap of its lost events")
    func finishOrdering() {
        let feed = EventFeed(queueEvents: 2)
        let sub = feed.subscribe(after: nil), drained = feed.subscribe(after: nil)
        Self.publish(feed, 3)
        #expect(Self.drain(drained).count == 3)
        feed.finish(.deleted)
        feed.finish(.shutdown)
        #expect(Self.drain(sub) == [Self.event(1), Self.event(2), .gap(missed: 1), .end(.deleted)])
        #expect(Self.drain(drained) == [.end(.deleted)])
        #expect(sub.next() == nil)
        #expect(feed.counts.subscribers == 0)
    }

    @Test("Events published after finish reach no one; a later subscriber gets only the end")
    func afterFinish() {
        let feed = EventFeed()
        let sub = feed.subscribe(after: nil)
        Self.publish(feed, 1)
        feed.finish(.expired)
        Self.publish(feed, 1)
        #expect(Self.drain(sub) == [Self.event(1), .end(.expired)])
        #expect(Self.drain(feed.subscribe(after: 0)) == [.end(.expired)])
        #expect(Self.drain(feed.subscribe(after: nil, follow: false)) == [.end(.expired)])
    }

    @Test("follow: false delivers the replay then ends with caught-up, and gets no live events; without an id, all that is kept and no gap")
    func caughtUp() {
        let feed = EventFeed(replayCapacity: 3)
        Self.publish(feed, 5)
        let sub = feed.subscribe(after: 0, follow: false)
        Self.publish(feed, 1)
        #expect(Self.drain(sub) == [.gap(missed: 2)] + (3...5).map(Self.event) + [.end(.caughtUp)])
        #expect(Self.drain(feed.subscribe(after: nil, follow: false)) == (4...6).map(Self.event) + [.end(.caughtUp)])
        #expect(Self.drain(EventFeed().subscribe(after: nil, follow: false)) == [.end(.caughtUp)])
        #expect(FeedEndReason.caughtUp.rawValue == "caught-up")
        #expect(feed.counts.subscribers == 0)
    }

    @Test("cancel unsubscribes (idempotent), dropping the subscription does too, and a cancelled one gets nothing")
    func cancelFrees() {
        let feed = EventFeed()
        let kept = feed.subscribe(after: nil)
        var dropped: EventSubscription? = feed.subscribe(after: nil)
        #expect(feed.counts.subscribers == 2)
        kept.cancel()
        kept.cancel()
        #expect(feed.counts.subscribers == 1)
        dropped = nil
        #expect(dropped == nil && feed.counts.subscribers == 0)

        let woken = Mutex(0)
        kept.onAvailable { woken.withLock { $0 += 1 } }
        Self.publish(feed, 1)
        #expect(kept.next() == nil)
        #expect(woken.withLock { $0 } == 0)
    }

    @Test("onAvailable wakes exactly once for several events, not under the feed's lock")
    func wakeOnceOutsideLock() {
        let feed = EventFeed()
        let sub = feed.subscribe(after: nil)
        let wakes = Mutex(0)
        let lockFree = Mutex<[Bool]>([])
        sub.onAvailable {
            wakes.withLock { $0 += 1 }
            // Another thread takes the feed's lock: it can only do so while this wake-up
            // runs if the lock is not held around it.
            let done = DispatchSemaphore(value: 0)
            Thread { _ = feed.counts; done.signal() }.start()
            lockFree.withLock { $0.append(done.wait(timeout: .now() + 5) == .success) }
        }
        Self.publish(feed, 3)
        #expect(wakes.withLock { $0 } == 1)
        #expect(lockFree.withLock { $0 } == [true])
        #expect(Self.drain(sub).count == 3)
    }

    @Test("onAvailable wakes at once when an item (event, gap or end) is already there")
    func wakeAtOnce() {
        let feed = EventFeed(queueEvents: 1)
        let sub = feed.subscribe(after: nil)
        let wakes = Mutex(0)
        let wake: @Sendable () -> Void = { wakes.withLock { $0 += 1 } }
        Self.publish(feed, 3)
        sub.onAvailable(wake)
        #expect(sub.next() == Self.event(1))
        sub.onAvailable(wake)                       // the gap of a drained queue
        #expect(sub.next() == .gap(missed: 2))
        feed.finish(.shutdown)
        sub.onAvailable(wake)
        #expect(wakes.withLock { $0 } == 3)
    }

    @Test("finish wakes a waiting subscriber; a second onAvailable replaces the first wake-up")
    func wakeOnFinishReplaced() {
        let feed = EventFeed()
        let sub = feed.subscribe(after: nil)
        let first = Mutex(0), second = Mutex(0)
        sub.onAvailable { first.withLock { $0 += 1 } }
        sub.onAvailable { second.withLock { $0 += 1 } }
        feed.finish(.replaced)
        feed.finish(.replaced)
        #expect(first.withLock { $0 } == 0)
        #expect(second.withLock { $0 } == 1)
        #expect(sub.next() == .end(.replaced))
    }

    @Test("Stress: one publisher, several readers (some slow, some joining late); each stream is strictly increasing and its events and gaps account for every published seq exactly once")
    func concurrentStress() {
        let published = 20_000
        let feed = EventFeed(replayCapacity: 256, queueEvents: 64)
        struct Outcome: Sendable { var events = 0; var gaps: UInt64 = 0; var problems: [String] = [] }
        let outcomes = Mutex<[Outcome]>([])
        let done = DispatchGroup()
        let subscribed = DispatchGroup()

        func reader(slow: Bool, joinAfter: Int) {
            done.enter()
            subscribed.enter()
            Thread {
                while feed.counts.published < UInt64(joinAfter) { Thread.sleep(forTimeInterval: 0.0005) }
                let sub = feed.subscribe(after: 0)
                subscribed.leave()
                var outcome = Outcome()
                var expected: UInt64 = 1
                var reads = 0
                loop: while true {
                    guard let item = sub.next() else {
                        let ready = DispatchSemaphore(value: 0)
                        sub.onAvailable { ready.signal() }
                        ready.wait()
                        continue
                    }
                    switch item {
                    case .event(let seq, _, let json):
                        if seq != expected { outcome.problems.append("event \(seq), expected \(expected)") }
                        if json != EventFeedTests.json(seq) { outcome.problems.append("event \(seq) with \(json)") }
                        expected = seq + 1
                        outcome.events += 1
                    case .gap(let missed):
                        if missed == 0 { outcome.problems.append("empty gap before \(expected)") }
                        expected += missed
                        outcome.gaps += missed
                    case .end(let reason):
                        if reason != .shutdown { outcome.problems.append("end \(reason)") }
                        if expected != UInt64(published) + 1 { outcome.problems.append("ended expecting \(expected)") }
                        break loop
                    }
                    reads += 1
                    if slow && reads % 50 == 0 { Thread.sleep(forTimeInterval: 0.001) }
                }
                outcomes.withLock { $0.append(outcome) }
                done.leave()
            }.start()
        }
        reader(slow: false, joinAfter: 0)
        reader(slow: false, joinAfter: 0)
        reader(slow: true, joinAfter: 0)
        reader(slow: true, joinAfter: published / 2)
        reader(slow: false, joinAfter: published / 3)

        done.enter()
        Thread {
            for _ in 0..<published { feed.publish(kind: "call", json: EventFeedTests.json) }
            subscribed.wait()
            feed.finish(.shutdown)
            done.leave()
        }.start()

        #expect(done.wait(timeout: .now() + 60) == .success)
        let results = outcomes.withLock { $0 }
        #expect(results.count == 5)
        #expect(results.contains { $0.gaps > 0 }, "the late readers start before the replay buffer")
        for outcome in results {
            #expect(outcome.problems.isEmpty, "\(outcome.problems.prefix(5))")
            #expect(UInt64(outcome.events) + outcome.gaps == UInt64(published))
        }
        #expect(feed.counts == EventFeed.Counts(published: UInt64(published), subscribers: 0,
                                                missed: results.reduce(0) { $0 + $1.gaps }))
    }
}
