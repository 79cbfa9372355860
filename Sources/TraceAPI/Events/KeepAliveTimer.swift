import Dispatch
import Synchronization

/// One timer for the keep-alives of every event stream: a stream that has sent nothing for
/// ``interval`` asks it for a wake-up at that moment, so that the transport pulls a
/// keep-alive record from it (proxies and clients then see the connection alive, and a
/// vanished client is noticed when the write fails).
///
/// A single `DispatchSourceTimer`, armed for the earliest deadline only, serves all the
/// streams that use the timer: an idle agent with a thousand open streams has one timer and
/// wakes once per deadline, not a thread or timer per stream. Wake-ups are called on the
/// timer's queue, after its lock is released.
public final class KeepAliveTimer: Sendable {
    /// The agent's timer: a keep-alive after 15 seconds without anything sent.
    public static let shared = KeepAliveTimer(interval: .seconds(15))

    /// How long a stream may send nothing before it sends a keep-alive.
    public let interval: Duration

    private struct Entry {
        var deadline: DispatchTime
        var wake: @Sendable () -> Void
    }

    private struct State {
        var entries: [UInt64: Entry] = [:]
        var lastID: UInt64 = 0
        var source: (any DispatchSourceTimer)?
        /// The deadline the source is armed for (`.distantFuture`: disarmed).
        var armed = DispatchTime.distantFuture
    }

    private let state = Mutex(State())
    private let queue = DispatchQueue(label: "traceplane.keep-alive")

    /// - Parameter interval: at least a millisecond (tests use short ones).
    public init(interval: Duration) {
        precondition(interval >= .milliseconds(1), "A keep-alive interval must be at least a millisecond (got \(interval)).")
        self.interval = interval
    }

    deinit {
        state.withLock { $0.source?.cancel() }
    }

    /// The moment a stream that last sent something at `sent` owes a keep-alive.
    func deadline(after sent: DispatchTime) -> DispatchTime {
        let (seconds, attoseconds) = interval.components
        return sent + .nanoseconds(Int(seconds) * 1_000_000_000 + Int(attoseconds / 1_000_000_000))
    }

    /// A new stream's identity for ``schedule(_:at:_:)`` and ``cancel(_:)``.
    func makeID() -> UInt64 {
        state.withLock { s in
            s.lastID += 1
            return s.lastID
        }
    }

    /// Calls `wake` once at `deadline` (at once if it has passed), replacing what `id` had
    /// scheduled.
    func schedule(_ id: UInt64, at deadline: DispatchTime, _ wake: @escaping @Sendable () -> Void) {
        // The replaced entry is returned so that its wake-up is released after the lock.
        _ = state.withLock { s -> Entry? in
            let replaced = s.entries.updateValue(Entry(deadline: deadline, wake: wake), forKey: id)
            if deadline < s.armed { arm(&s, at: deadline) }
            return replaced
        }
    }

    /// Drops what `id` had scheduled (a closed stream). The timer may still fire at the
    /// dropped deadline, and then finds nothing to do.
    func cancel(_ id: UInt64) {
        _ = state.withLock { $0.entries.removeValue(forKey: id) }
    }

    private func arm(_ s: inout State, at deadline: DispatchTime) {
        let source: any DispatchSourceTimer
        if let existing = s.source {
            source = existing
        } else {
            source = DispatchSource.makeTimerSource(queue: queue)
            source.setEventHandler { [weak self] in self?.fire() }
            s.source = source
            source.resume()
        }
        source.schedule(deadline: deadline, leeway: .milliseconds(max(1, Int(interval / .milliseconds(20)))))
        s.armed = deadline
    }

    private func fire() {
        let due = state.withLock { s -> [@Sendable () -> Void] in
            let now = DispatchTime.now()
            var due: [@Sendable () -> Void] = []
            var earliest = DispatchTime.distantFuture
            for entry in s.entries.values {
                if entry.deadline <= now {
                    due.append(entry.wake)
                } else if entry.deadline < earliest {
                    earliest = entry.deadline
                }
            }
            if !due.isEmpty { s.entries = s.entries.filter { $0.value.deadline > now } }
            s.armed = .distantFuture
            if earliest != .distantFuture { arm(&s, at: earliest) }
            return due
        }
        for wake in due { wake() }
    }

    /// Streams waiting for a keep-alive deadline (for tests).
    var scheduled: Int { state.withLock { $0.entries.count } }
}
