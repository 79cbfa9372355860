import CMicroHTTPD
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The transport's side of one streamed body: libmicrohttpd's content reader pulls
/// from the ``HTTPBodyStream`` on the connection's polling thread, and parks the
/// connection (suspends it) while the stream has nothing, so an idle stream holds no
/// thread.
///
/// Suspend and resume are paired under `state`'s lock: the reader suspends before it
/// hands the stream its wake-up, so a wake-up that comes at once (even from inside
/// `onReadable`) finds the connection suspended; a wake-up resumes only the suspension
/// it was made for (`generation`), so late or repeated calls do nothing; and once the
/// response is freed (`closed`) nothing touches the connection again. A suspended
/// connection cannot die under us: libmicrohttpd neither reads nor times it out, and
/// `endForShutdown` resumes it before the daemon stops.
///
/// libmicrohttpd holds one reference through the reader's context pointer (taken in
/// ``ServerCore``'s queue, given back in the free callback, which libmicrohttpd calls
/// exactly once); that callback closes the stream.
final class StreamedResponse: Sendable {
    private enum Phase {
        /// Not suspended: the polling thread reads or sends.
        case active
        /// Suspended until the wake-up made for `generation` (or shutdown) resumes it.
        case parked(generation: UInt64)
        /// libmicrohttpd freed the response; the connection may be gone.
        case closed
    }

    private struct State {
        var phase = Phase.active
        var generation: UInt64 = 0
        /// The server is stopping: the next read ends the body.
        var ending = false
    }

    let stream: any HTTPBodyStream
    private let connection: ConnectionHandle
    private let freed: @Sendable (StreamedResponse) -> Void
    private let state = Mutex(State())

    /// - Parameter freed: called once, on the thread that frees the response, before
    ///   the stream is closed.
    init(stream: any HTTPBodyStream, connection: OpaquePointer, freed: @escaping @Sendable (StreamedResponse) -> Void) {
        self.stream = stream
        self.connection = ConnectionHandle(connection)
        self.freed = freed
    }

    /// A libmicrohttpd response reading from this object, or nil (the caller then
    /// still owns the stream and must close it).
    func makeResponse() -> OpaquePointer? {
        // Retained: libmicrohttpd keeps this as the reader's context; released in the
        // free callback below, or right here when no response is created.
        let context = Unmanaged.passRetained(self).toOpaque()
        let response = tp_mhd_response_create_streamed(
            { context, _, buffer, max in
                Unmanaged<StreamedResponse>.fromOpaque(context!).takeUnretainedValue().read(into: buffer, max: max)
            },
            { context in
                // Released: balances passRetained in makeResponse; libmicrohttpd calls
                // this once, when it destroys the response.
                Unmanaged<StreamedResponse>.fromOpaque(context!).takeRetainedValue().responseFreed()
            },
            context)
        if response == nil {
            Unmanaged<StreamedResponse>.fromOpaque(context).release()
        }
        return response
    }

    /// Makes the body end at its next read and resumes a parked connection, so that
    /// the daemon can stop (it must not stop with a suspended connection).
    func endForShutdown() {
        state.withLock { state in
            state.ending = true
            if case .parked = state.phase {
                state.phase = .active
                tp_mhd_resume(connection.pointer)
            }
        }
    }

    /// The content reader (polling thread, connection not suspended).
    private func read(into buffer: UnsafeMutablePointer<CChar>, max: Int) -> Int {
        if state.withLock({ $0.ending }) { return Int(TP_MHD_READER_END_OF_STREAM) }
        switch stream.read(maxBytes: max) {
        case .bytes(let bytes):
            precondition(
                !bytes.isEmpty && bytes.count <= max,
                "HTTPBodyStream.read(maxBytes: \(max)) returned \(bytes.count) bytes; it must return 1...maxBytes.")
            bytes.withUnsafeBytes { _ = memcpy(buffer, $0.baseAddress!, $0.count) }
            return bytes.count

        case .finished:
            return Int(TP_MHD_READER_END_OF_STREAM)

        case .pending:
            let generation = state.withLock { state -> UInt64? in
                guard !state.ending else { return nil }
                state.generation += 1
                state.phase = .parked(generation: state.generation)
                tp_mhd_suspend(connection.pointer)
                return state.generation
            }
            guard let generation else { return Int(TP_MHD_READER_END_OF_STREAM) }
            // Weak: the stream may keep the wake-up after the response is over.
            stream.onReadable { [weak self] in self?.wake(generation) }
            // With the connection suspended, 0 means "ask again after the resume".
            return 0
        }
    }

    private func wake(_ generation: UInt64) {
        state.withLock { state in
            guard case .parked(let parked) = state.phase, parked == generation else { return }
            state.phase = .active
            tp_mhd_resume(connection.pointer)
        }
    }

    private func responseFreed() {
        state.withLock { $0.phase = .closed }
        freed(self)
        stream.close()
    }
}
