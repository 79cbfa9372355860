import Foundation
import Synchronization
import TraceCore

/// A ``ProbeClock`` that moves only when a test says so: `advance(by:)` moves both the wall
/// and the monotonic clock and wakes every sleeper whose deadline passed; `stepWall(by:)`
/// moves the wall clock alone (an NTP step), which must not change any TTL.
public final class ManualClock: ProbeClock, Sendable {
    private struct Sleeper {
        var deadline: Duration
        var continuation: CheckedContinuation<Void, any Error>
    }
    private struct State {
        var wall: Date
        var uptime: Duration = .zero
        var sleepers: [UUID: Sleeper] = [:]
    }
    private let state: Mutex<State>

    public init(wall: Date = Date(timeIntervalSince1970: 1_800_000_000)) {
        state = Mutex(State(wall: wall))
    }

    public func now() -> Date { state.withLock { $0.wall } }
    public func uptime() -> Duration { state.withLock { $0.uptime } }

    /// Sleepers waiting now (a test can wait for the code under test to go to sleep).
    public var sleeperCount: Int { state.withLock { $0.sleepers.count } }

    public func sleep(until deadline: Duration) async throws {
        let id = UUID()
        try await withTaskCancellationHandler {
            try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
                let resumeNow = state.withLock { s -> Bool in
                    if s.uptime >= deadline || Task.isCancelled { return true }
                    s.sleepers[id] = Sleeper(deadline: deadline, continuation: continuation)
                    return false
                }
                if resumeNow {
                    if Task.isCancelled { continuation.resume(throwing: CancellationError()) } else { continuation.resume() }
                }
            }
        } onCancel: {
            let sleeper = state.withLock { $0.sleepers.removeValue(forKey: id) }
            sleeper?.continuation.resume(throwing: CancellationError())
        }
    }

    /// Moves both clocks forward and wakes the sleepers whose deadline passed.
    public func advance(by duration: Duration) {
        let due = state.withLock { s -> [Sleeper] in
            s.uptime += duration
            s.wall = s.wall.addingTimeInterval(Double(duration.components.seconds) + Double(duration.components.attoseconds) / 1e18)
            let due = s.sleepers.filter { $0.value.deadline <= s.uptime }
            for id in due.keys { s.sleepers[id] = nil }
            return Array(due.values)
        }
        for sleeper in due { sleeper.continuation.resume() }
    }

    /// Steps the wall clock only (as an NTP correction does); monotonic deadlines stay.
    public func stepWall(by seconds: TimeInterval) {
        state.withLock { $0.wall = $0.wall.addingTimeInterval(seconds) }
    }
}
