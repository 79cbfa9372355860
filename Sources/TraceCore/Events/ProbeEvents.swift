import CBPFLayouts
import CLibBPF
import Foundation
import Synchronization

/// A ring the ``EventPump`` drains: a probe's events (``ProbeEvents``), or only its new-key
/// notices (``KeyNotices``).
protocol PumpedRing: AnyObject, Sendable {
    /// Its tag in the pump (unique among every ring pumped; see ``EventPump/nextID()``).
    var id: UInt64 { get }
    /// The ring's poll fd, -1 once closed.
    var pollFD: Int32 { get }
    /// Reads everything the ring holds now. Returns the number of records read.
    @discardableResult func drain() -> Int
    /// Whether a wake-up for it is followed by the pump's coalescing pause: events are (their
    /// subscribers are woken per batch); notices are not (nothing is batched for them, and a
    /// process's mappings are to be read as soon as can be).
    var coalesces: Bool { get }
}

/// A probe's events on their way from its BPF ring buffer to its subscribers: the ring,
/// the ``EventFeed`` that fans them out, and what was read. The ``EventPump`` drains the
/// ring whether or not anyone subscribes (with no subscriber, events are counted and kept
/// only in the feed's small replay buffer), so the kernel's `lost` counts only what the
/// agent could not keep up with. With a `ustack` key part, the process of each event goes
/// to the user symbolizer, which reads its mappings while it runs (the programs of a probe
/// with events write no new-key notices; see ``KeyNotices``). A record that is a notice
/// (`TP_EV_NEW_KEY`) is never published as an event nor counted in ``consumed``.
public final class ProbeEvents: PumpedRing {
    public let feed: EventFeed
    public let spec: EventsSpec
    private struct Reader {
        var ring: (any EventRing)?
        var json: EventJSON
    }
    private let reader: Mutex<Reader>
    private let consumedCount = Atomic<UInt64>(0)
    private let malformedCount = Atomic<UInt64>(0)
    private let symbolizer: UserSymbolizer
    /// Whether the processes of events go to the symbolizer (a `ustack` key part).
    private let remembersProcesses: Bool
    let id: UInt64
    var coalesces: Bool { true }
    /// Records consumed per ring read.
    static let batch = 256

    /// - Parameter kind: `call` for call targets, `tracepoint` for tracepoint targets.
    /// - Parameter symbolizer: where the processes of new-key notices go.
    init(ring: any EventRing, spec: EventsSpec, plan: AggregatePlan, layout: KeyTableReader.Layout, kind: String,
         feed: EventFeed = EventFeed(), symbolizer: UserSymbolizer = .shared) {
        self.feed = feed
        self.spec = spec
        self.symbolizer = symbolizer
        remembersProcesses = plan.notifiesNewKeys
        reader = Mutex(Reader(ring: ring, json: EventJSON(kind: kind, plan: plan, layout: layout)))
        id = EventPump.nextID()
    }

    /// Events read from the ring so far (not the new-key notices).
    public var consumed: UInt64 { consumedCount.load(ordering: .relaxed) }

    /// Reads everything the ring holds now: events into the feed, the processes of new-key
    /// notices to the user symbolizer. Returns the number of records read (notices too).
    @discardableResult
    func drain() -> Int {
        let (total, noticed) = reader.withLock { r -> (Int, Set<UInt32>) in
            guard let ring = r.ring else { return (0, []) }
            var total = 0
            var noticed = Set<UInt32>()
            var notices = 0
            while true {
                let n: Int
                do throws(KernelError) {
                    n = try ring.consume(max: Self.batch, recordSize: EventJSON.recordSize) { raw in
                        if let tgid = KeyNotices.process(raw) {
                            noticed.insert(tgid)
                            notices += 1
                            return
                        }
                        feed.publish(kind: r.json.kind) { seq in r.json.format(raw, seq: seq) }
                        if remembersProcesses, raw.count >= MemoryLayout<tp_event>.size {
                            noticed.insert(raw.loadUnaligned(fromByteOffset: MemoryLayout<tp_event>.offset(of: \.pid)!, as: UInt32.self))
                        }
                    }
                } catch {
                    malformedCount.add(1, ordering: .relaxed)
                    break
                }
                total += n
                if n < Self.batch { break }
            }
            if total > notices { consumedCount.add(UInt64(total - notices), ordering: .relaxed) }
            return (total, noticed)
        }
        // Outside the lock: a /proc read per new process.
        for tgid in noticed { symbolizer.remember(tgid: tgid) }
        return total
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

/// The new-key notices of a probe keyed by `ustack` that has no `events`: its programs
/// write one to the `events` ring (which carries nothing else then) whenever a call makes
/// a new key, and the ``EventPump`` hands the notice's process to the user symbolizer at
/// once, which reads its mappings while it runs. The stack table resolves new stacks only
/// every second: a process that made its calls and exited within that second would
/// otherwise have no mappings to name its frames with. A notice the ring has no room for
/// is lost; the stack table's second remains the fallback. One owner; ``close()`` is
/// idempotent.
final class KeyNotices: PumpedRing {
    /// The ring's size when it carries only notices (a notice is one `struct tp_event`).
    static let ringBytes: UInt32 = 64 << 10

    private let ring: Mutex<(any EventRing)?>
    private let symbolizer: UserSymbolizer
    let id: UInt64
    var coalesces: Bool { false }

    init(ring: any EventRing, symbolizer: UserSymbolizer = .shared) {
        self.ring = Mutex(ring)
        self.symbolizer = symbolizer
        id = EventPump.nextID()
    }

    /// The notices of a probe over `object` with `plan` and no events: nil when the plan
    /// has no `ustack` part, or the backend has no ring buffers (the fake kernel: the stack
    /// table's second alone then reads the mappings).
    ///
    /// - Throws: ``KernelError`` when the ring cannot be opened.
    static func open(_ object: any LoadedObject, plan: AggregatePlan) throws(KernelError) -> KeyNotices? {
        guard plan.notifiesNewKeys, object is any EventRingOpener else { return nil }
        return KeyNotices(ring: try object.openRing(LatencyBPF.Maps.events, index: nil))
    }

    /// The process (tgid) of a ring record that is a new-key notice; nil for an event.
    static func process(_ raw: UnsafeRawBufferPointer) -> UInt32? {
        guard raw.count >= MemoryLayout<tp_event>.size else { return nil }
        let flags = raw.loadUnaligned(fromByteOffset: MemoryLayout<tp_event>.offset(of: \.flags)!, as: UInt32.self)
        guard flags & UInt32(TP_EV_NEW_KEY) != 0 else { return nil }
        return raw.loadUnaligned(fromByteOffset: MemoryLayout<tp_event>.offset(of: \.pid)!, as: UInt32.self)
    }

    @discardableResult
    func drain() -> Int {
        let (total, noticed) = ring.withLock { ring -> (Int, Set<UInt32>) in
            guard let ring else { return (0, []) }
            var total = 0
            var noticed = Set<UInt32>()
            while true {
                // A record that is no notice (or of another size) is skipped.
                guard let n = try? ring.consume(max: ProbeEvents.batch, recordSize: EventJSON.recordSize, { raw in
                    if let tgid = Self.process(raw) { noticed.insert(tgid) }
                }) else { break }
                total += n
                if n < ProbeEvents.batch { break }
            }
            return (total, noticed)
        }
        for tgid in noticed { symbolizer.remember(tgid: tgid) }
        return total
    }

    /// Stops reading and closes the ring (idempotent).
    func close() {
        EventPump.shared.unregister(self)
        ring.withLock { r in
            r?.close()
            r = nil
        }
    }

    var pollFD: Int32 { ring.withLock { $0?.pollFD ?? -1 } }
}

/// One thread that drains every probe's ring buffer (its events, or a `ustack` probe's
/// new-key notices alone): woken by epoll when a ring has records, and every 100 ms while
/// there are rings (the kernel skips a wake-up when the consumer is behind, and a missed
/// one must not strand records; a notice forces its wake-up).
final class EventPump: Sendable {
    static let shared = EventPump()

    private struct State {
        var members: [UInt64: any PumpedRing] = [:]
        var epoll: Int32 = -1
        var started = false
    }
    private let state = Mutex(State())
    static let coalescing: Duration = .milliseconds(2)
    private static let ids = Atomic<UInt64>(1)

    /// A tag for a new ring.
    static func nextID() -> UInt64 { ids.wrappingAdd(1, ordering: .relaxed).oldValue }

    func register(_ ring: any PumpedRing) {
        let start = state.withLock { s -> Bool in
            if s.epoll < 0 { s.epoll = tp_epoll_create() }
            s.members[ring.id] = ring
            let fd = ring.pollFD
            if s.epoll >= 0 && fd >= 0 { _ = tp_epoll_add(s.epoll, fd, ring.id) }
            defer { s.started = true }
            return !s.started
        }
        if start {
            let thread = Thread { [self] in run() }
            thread.name = "traceplane-events"
            thread.start()
        }
    }

    func unregister(_ ring: any PumpedRing) {
        state.withLock { s in
            guard s.members.removeValue(forKey: ring.id) != nil else { return }
            let fd = ring.pollFD
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
            var ready: [any PumpedRing] = []
            if n > 0 {
                state.withLock { s in for tag in tags.prefix(Int(n)) { if let m = s.members[tag] { ready.append(m) } } }
            }
            var drained = 0
            for ring in ready { drained += ring.drain() }
            if ContinuousClock.now - lastSweep >= .milliseconds(100) {
                lastSweep = ContinuousClock.now
                for ring in state.withLock({ Array($0.members.values) }) { ring.drain() }
            }
            // Coalesce: a ring written to meanwhile stays readable, so the next wait returns
            // at once with everything since. At most one wake-up per `coalescing` (a probe
            // streaming 50,000 events a second would otherwise wake this thread, and every
            // subscriber's connection, for nearly each event); each event waits 2 ms at most.
            // A wake-up for new-key notices alone does not wait (the next notice is read as
            // soon as it is written), unless it found nothing to read (no spinning on a
            // ring that polls readable with nothing to consume yet).
            if n > 0 && (drained == 0 || ready.contains(where: \.coalesces)) { usleep(UInt32(Self.coalescing.components.attoseconds / 1_000_000_000_000)) }
        }
    }
}
