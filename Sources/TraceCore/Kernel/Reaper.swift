import Dispatch
import Synchronization

/// Detaches links and frees objects off the caller's path. Kernel detach waits for RCU
/// grace periods (milliseconds each), so callers hand their resources here and return.
/// Everything handed over is closed for sure, in order: links before their objects.
///
/// The backlog is bounded from the other side: ``waitForRoom(below:)`` lets creators
/// wait while too much is still being detached (a perf tracepoint takes at most 64
/// programs, counting those not yet detached).
public final class Reaper: Sendable {
    // Several queues: detaches overlap, so their RCU grace periods are shared rather than
    // waited for one after another, and they block no thread that runs Swift tasks (see
    // BlockingWork). Each disposal stays ordered (links, then objects).
    private let queues = BlockingWork(label: "traceplane.reaper", width: 8)
    private let group = DispatchGroup()
    private struct Backlog {
        var pending = 0
        /// Creators waiting for the backlog to shrink below their limit.
        var waiters: [(limit: Int, continuation: CheckedContinuation<Void, Never>)] = []
    }
    private let backlog = Mutex(Backlog())

    public init() {}

    /// Shared instance used by the agent.
    public static let shared = Reaper()

    /// Closes `links`, then `objects`, in the background.
    public func dispose(links: [any AttachedLink], objects: [any LoadedObject]) {
        backlog.withLock { $0.pending += 1 }
        queues.async(group: group) {
            for link in links { link.close() }
            for object in objects { object.close() }
            let ready = self.backlog.withLock { b -> [CheckedContinuation<Void, Never>] in
                b.pending -= 1
                let pending = b.pending
                let ready = b.waiters.filter { pending < $0.limit }.map(\.continuation)
                b.waiters.removeAll { pending < $0.limit }
                return ready
            }
            for continuation in ready { continuation.resume() }
        }
    }

    /// How many disposals are not finished yet.
    public var pending: Int { backlog.withLock { $0.pending } }

    /// Waits until everything handed over so far is closed.
    public func drain() {
        group.wait()
    }

    /// Suspends while `limit` or more disposals are pending (resumed by the disposal that
    /// brings the backlog below it).
    public func waitForRoom(below limit: Int) async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            let now = backlog.withLock { b -> Bool in
                if b.pending < limit { return true }
                b.waiters.append((limit, continuation))
                return false
            }
            if now { continuation.resume() }
        }
    }
}
