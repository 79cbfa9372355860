import Foundation

/// The time sources of the probe manager: the wall clock for what users read
/// (`created_at`, `expires_at`) and a monotonic clock for TTL deadlines, which a wall clock
/// step must not move. Tests inject a manual clock (`ManualClock` in TraceCoreTestSupport).
public protocol ProbeClock: Sendable {
    /// Wall-clock time now.
    func now() -> Date
    /// Monotonic time since an arbitrary start; never steps.
    func uptime() -> Duration
    /// Suspends until `uptime() >= deadline`.
    ///
    /// - Throws: `CancellationError` when the task is cancelled first.
    func sleep(until deadline: Duration) async throws
}

/// The system's clocks: `Date()` and the continuous (monotonic) clock.
public struct SystemClock: ProbeClock {
    private let start = ContinuousClock.now
    public init() {}
    public func now() -> Date { Date() }
    public func uptime() -> Duration { ContinuousClock.now - start }
    public func sleep(until deadline: Duration) async throws {
        try await Task.sleep(until: start.advanced(by: deadline), clock: .continuous)
    }
}
