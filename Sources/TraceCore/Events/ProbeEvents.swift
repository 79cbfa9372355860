import CBPFLayouts
import CLibBPF
import Foundation
import Synchronization

/// A probe's events on their way from its BPF ring buffer to its subscribers: the ring,
/// the ``EventFeed`` that fans them out, and what was read. The ``EventPump`` drains the
/// ring whether or not anyone subscribes (with no subscriber, events are counted and kept
/// only in the feed's small replay buffer), so the kernel's `lost` counts only what the
/// agent could not keep up with.
public final class ProbeEvents: Sendable {
    public let feed: EventFeed
    public let spec: EventsSpec
    private struct Reader {
        var ring: (any EventRing)?
        var json: EventJSON
    }
    private let reader: Mutex<Reader>
    private let consumedCount = Atomic<UInt64>(0)
    private let malformedCount = Atomic<UInt64>(0)
    let id: UInt64
    private static let ids = Atomic<UInt64>(1)
    /// Records consumed per ring read.
    static let batch = 256

    /// - Parameter kind: `call` for call targets, `tracepoint` for tracepoint targets.
    init(ring: any EventRing, spec: EventsSpec, plan: AggregatePlan, layout: KeyTableReader.Layout, kind: String,
         feed: EventFeed = EventFeed()) {
        self.feed = feed
        self.spec = spec
        reader = Mutex(Reader(ring: ring, json: EventJSON(kind: kind, plan: plan, layout: layout)))
        id = Self.ids.wrappingAdd(1, ordering: .relaxed).oldValue
    }

    /// Events read from the ring so far.
    public var consumed: UInt64 { consumedCount.load(ordering: .relaxed) }

    /// Reads everything the ring holds now into the feed. Returns the number of records read.
    @discardableResult
    func drain() -> Int {
        reader.withLock { r -> Int in
            guard let ring = r.ring else { return 0 }
            var total = 0
            while true {
                let n: Int
                do throws(KernelError) {
                    n = try ring.consume(max: Self.batch, recordSize: EventJSON.recordSize) { raw in
                        feed.publish(kind: r.json.kind) { seq in r.json.format(raw, seq: seq) }
                    }
                } catch {
                    malformedCount.add(1, ordering: .relaxed)
                    break
                }
                total += n
                if n < Self.batch { break }
            }
            if total > 0 { consumedCount.add(UInt64(total), ordering: .relaxed) }
            return total
        }
    }

    /// Drains what is left, stops reading, and ends every stream with `end` and `reason`.
    /// Idempotent.
    public func finish(_ reason: FeedEndReason) {
        EventPump.shared.unregister(self)
        drain()
        reader.withLock { r in
            r.ring?.close()
            r.ring = nil
        }
        feed.finish(reason)
    }

    /// The ring's poll fd (for the pump), -1 once finished.
    var pollFD: Int32 { reader.withLock { $0.ring?.pollFD ?? -1 } }
}

/// One thread that drains every probe's ring buffer: woken by epoll when a ring has
/// records, and every 100 ms while there are rings (the kernel skips a wake-up when the
/// consumer is behind, and a missed one must not strand records).
final class EventPump: Sendable {
    static let shared = EventPump()

    private struct State {
        var members: [UInt64: ProbeEvents] = [:]
        var epoll: Int32 = -1
        var started = false
    }
    private let state = Mutex(State())
    static let coalescing: Duration = .milliseconds(2)

    func register(_ events: ProbeEvents) {
        let start = state.withLock { s -> Bool in
            if s.epoll < 0 { s.epoll = tp_epoll_create() }
            s.members[events.id] = events
            let fd = events.pollFD
            if s.epoll >= 0 && fd >= 0 { _ = tp_epoll_add(s.epoll, fd, events.id) }
            defer { s.started = true }
            return !s.started
        }
        if start {
            let thread = Thread { [self] in run() }
            thread.name = "traceplane-events"
            thread.start()
        }
    }

    func unregister(_ events: ProbeEvents) {
        state.withLock { s in
            guard s.members.removeValue(forKey: events.id) != nil else { return }
            let fd = events.pollFD
            if s.epoll >= 0 && fd >= 0 { _ = tp_epoll_remove(s.epoll, fd) }
        }
    }

    private func run() {
        _ = tp_set_thread_name("tp-events")
        var tags = [UInt64](repeating: 0, count: 64)
        var lastSweep = ContinuousClock.now
        while true {
            // With no probe to sweep, sleep until a ring is added and written to (a ring
            // notifies its first record: its consumer is caught up then).
            let (epoll, idle) = state.withLock { ($0.epoll, $0.members.isEmpty) }
            let n = epoll >= 0 ? tags.withUnsafeMutableBufferPointer { tp_epoll_wait(epoll, $0.baseAddress, 64, idle ? -1 : 100) } : 0
            if epoll < 0 { usleep(100_000) }
            var ready: [ProbeEvents] = []
            if n > 0 {
                state.withLock { s in for tag in tags.prefix(Int(n)) { if let m = s.members[tag] { ready.append(m) } } }
            }
            for events in ready { events.drain() }
            if ContinuousClock.now - lastSweep >= .milliseconds(100) {
                lastSweep = ContinuousClock.now
                for events in state.withLock({ Array($0.members.values) }) { events.drain() }
            }
            // Coalesce: a ring written to meanwhile stays readable, so the next wait returns
            // at once with everything since. At most one wake-up per `coalescing` (a probe
            // streaming 50,000 events a second would otherwise wake this thread, and every
            // subscriber's connection, for nearly each event); each event waits 2 ms at most.
            if n > 0 { usleep(UInt32(Self.coalescing.components.attoseconds / 1_000_000_000_000)) }
        }
    }
}
