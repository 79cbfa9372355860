import Synchronization

/// A value that arrives once, awaited by any number of tasks (continuations, no polling).
/// The first ``fulfil(_:)`` wins; later ones are ignored.
public final class Promise<Value: Sendable>: Sendable {
    private enum State {
        case waiting([CheckedContinuation<Value, any Error>])
        case done(Result<Value, any Error>)
    }
    private let state = Mutex(State.waiting([]))

    public init() {}

    /// Settles the promise and resumes every waiter.
    public func fulfil(_ result: Result<Value, any Error>) {
        let waiters = state.withLock { s -> [CheckedContinuation<Value, any Error>] in
            guard case .waiting(let waiters) = s else { return [] }
            s = .done(result)
            return waiters
        }
        for waiter in waiters { waiter.resume(with: result) }
    }

    public func fulfil(_ value: Value) { fulfil(.success(value)) }

    /// Whether it is settled.
    public var isFulfilled: Bool { state.withLock { if case .done = $0 { true } else { false } } }

    /// Waits for the value (or rethrows the failure it was settled with).
    public func value() async throws -> Value {
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Value, any Error>) in
            let now = state.withLock { s -> Result<Value, any Error>? in
                switch s {
                case .waiting(var waiters):
                    waiters.append(continuation)
                    s = .waiting(waiters)
                    return nil
                case .done(let result):
                    return result
                }
            }
            if let now { continuation.resume(with: now) }
        }
    }
}
