import Dispatch

/// Detaches links and frees objects off the caller's path. Kernel detach waits for RCU
/// grace periods (milliseconds each), so callers hand their resources here and return.
/// Everything handed over is closed for sure, in order: links before their objects.
public final class Reaper: Sendable {
    private let queue = DispatchQueue(label: "traceplane.reaper")

    public init() {}

    /// Shared instance used by the agent.
    public static let shared = Reaper()

    /// Closes `links`, then `objects`, in the background.
    public func dispose(links: [any AttachedLink], objects: [any LoadedObject]) {
        queue.async {
            for link in links { link.close() }
            for object in objects { object.close() }
        }
    }

    /// Waits until everything handed over so far is closed.
    public func drain() {
        queue.sync {}
    }
}
