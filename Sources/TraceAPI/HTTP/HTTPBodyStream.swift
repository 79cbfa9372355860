import TraceCore

/// What a streamed body has for the connection right now.
public enum HTTPBodyChunk: Sendable, Equatable {
    /// Bytes to send (never empty).
    case bytes([UInt8])
    /// Nothing yet: the transport parks the connection (no thread waits for it) until the
    /// stream calls the wake-up it was given in ``HTTPBodyStream/onReadable(_:)``.
    case pending
    /// The body is complete; the transport ends the response.
    case finished
}

/// A response body produced while it is being sent (Server-Sent Events, NDJSON). The
/// transport pulls from it on its own threads and never blocks on it.
public protocol HTTPBodyStream: AnyObject, Sendable {
    /// The next bytes, at most `maxBytes` of them. Never blocks.
    func read(maxBytes: Int) -> HTTPBodyChunk
    /// Called by the transport after `read` returned `.pending`: `wake` must be called
    /// (once, from any thread) as soon as `read` may return something else. If that is
    /// already the case, the stream calls `wake` right away.
    func onReadable(_ wake: @escaping @Sendable () -> Void)
    /// The response is over: finished, the client went away, it timed out, or the server
    /// is stopping. Called exactly once; the stream releases everything it holds.
    func close()
}
