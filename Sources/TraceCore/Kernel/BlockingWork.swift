import Dispatch
import Synchronization

/// Runs work that blocks in the kernel (BPF loads and attaches, detaches that wait for
/// RCU grace periods) off the threads that run Swift tasks.
///
/// On Linux, `DispatchQueue.global()` and custom concurrent queues share one thread pool,
/// as wide as the CPU count, with the Swift concurrency runtime: a few detaches blocked
/// there held every HTTP request up (30–70 ms on 2 cores, BENCHMARKS.md). Serial queues run
/// on libdispatch's overcommit pool, which adds a thread when the others are busy; work is
/// spread over `width` of them, so that much of it still overlaps.
public final class BlockingWork: Sendable {
    private let queues: [DispatchQueue]
    private let next = Atomic<Int>(0)

    public init(label: String, width: Int) {
        precondition(width >= 1, "BlockingWork needs at least one queue.")
        queues = (0..<width).map { DispatchQueue(label: "\(label).\($0)") }
    }

    /// Runs `work` on one of the queues (round robin), in `group` if given.
    public func async(group: DispatchGroup? = nil, _ work: @escaping @Sendable () -> Void) {
        let index = next.add(1, ordering: .relaxed).oldValue % queues.count
        if let group {
            queues[index].async(group: group, execute: work)
        } else {
            queues[index].async(execute: work)
        }
    }

    /// Runs `work` there and returns its result to the calling task.
    public func run<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await withCheckedContinuation { continuation in
            async { continuation.resume(returning: work()) }
        }
    }

    /// Queues for attaching probes and probing capabilities.
    public static let attach = BlockingWork(label: "traceplane.attach", width: 4)

    /// Queues for reading a probe's maps and symbolizing its stacks (API reads).
    public static let reads = BlockingWork(label: "traceplane.reads", width: 2)
}
