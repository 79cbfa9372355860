import CMicroHTTPD
import Logging
import Synchronization

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A `tp_mhd_daemon *` kept as an integer so that it can live in `Sendable` state.
/// Owned by ``HTTPServer``: created in start, passed to `tp_mhd_stop` exactly once.
struct DaemonHandle: Sendable {
    private let address: UInt
    init(_ pointer: OpaquePointer) { address = UInt(bitPattern: Int(bitPattern: pointer)) }
    var pointer: OpaquePointer { OpaquePointer(bitPattern: Int(bitPattern: address))! }
}

/// An `MHD_Connection *` kept as an integer so that it can live in `Sendable` state.
/// Only handed back to libmicrohttpd once, to resume the connection it was taken from
/// while that connection is suspended (and therefore still alive).
struct ConnectionHandle: Sendable {
    private let address: UInt
    init(_ pointer: OpaquePointer) { address = UInt(bitPattern: Int(bitPattern: pointer)) }
    var pointer: OpaquePointer { OpaquePointer(bitPattern: Int(bitPattern: address))! }
}

/// One request, from its request line to libmicrohttpd's completion notice.
///
/// Two references keep it alive: libmicrohttpd's request context pointer
/// (retained in `requestStarted`, released in `requestCompleted`) and, while the
/// handler runs, the handler task's own strong reference. Whichever ends last
/// frees it, so a client that disconnects mid-request cannot leave the task with a
/// dangling context. Mutable state is behind a `Mutex`: the polling thread fills it
/// in, the handler task stores the response.
final class RequestContext: Sendable {
    enum Phase {
        /// Waiting for the first access-handler call (headers complete).
        case head
        /// Receiving the body; the next call without upload data dispatches.
        case body
        /// Connection suspended, handler task running.
        case suspended
        /// The response is stored and the connection resumed; queue it on the next call.
        case responseReady
        /// A response was queued.
        case done
    }

    struct State {
        var phase = Phase.head
        var method = HTTPMethod.get
        var headers = HTTPHeaders()
        var remoteAddress: String?
        var body: [UInt8] = []
        var bodyTooLarge = false
        var discardedBytes = 0
        var connection: ConnectionHandle?
        var response: HTTPResponse?
        /// Answered with 503 by stopDaemon, which waits for its completion.
        var answeredAtShutdown = false
    }

    /// The raw request target (path and query, percent-encoded).
    let target: String
    let startedAt = ContinuousClock.now
    let state = Mutex(State())

    /// How many contexts exist in this process; tests use it to detect leaks.
    static let live = Atomic<Int>(0)

    init(target: String) {
        self.target = target
        Self.live.add(1, ordering: .relaxed)
    }

    deinit {
        Self.live.subtract(1, ordering: .relaxed)
    }

    /// Stores the response of a suspended request and returns its connection to resume.
    func setResponse(_ response: HTTPResponse, atShutdown: Bool = false) -> ConnectionHandle {
        state.withLock { state in
            precondition(state.phase == .suspended, "Only a suspended request can receive its response.")
            state.response = response
            state.phase = .responseReady
            state.answeredAtShutdown = atShutdown
            return state.connection!
        }
    }
}

/// Everything libmicrohttpd's callbacks reach through the daemon context pointer.
final class ServerCore: Sendable {
    /// How far past `maxBodySize` a body without `Content-Length` is read (and
    /// dropped) to answer 413 before the connection is simply closed.
    static let drainAllowance = 1 << 20

    let configuration: HTTPServer.Configuration
    let responder: any HTTPResponder
    let counter: HTTPRequestCounter
    let logger: Logger

    private struct State {
        /// Set by `stopDaemon`; from then on no connection is suspended.
        var stopping = false
        /// Requests whose connection is suspended while their handler runs.
        var suspended: [ObjectIdentifier: RequestContext] = [:]
        /// Requests answered with 503 by stopDaemon and not completed yet.
        var draining = 0
        /// Streamed responses libmicrohttpd has not freed yet.
        var streams: [ObjectIdentifier: StreamedResponse] = [:]
        /// The last libmicrohttpd log line, to explain a failed start.
        var lastDaemonMessage: String?
    }

    private let state = Mutex(State())

    init(configuration: HTTPServer.Configuration, responder: any HTTPResponder, counter: HTTPRequestCounter, logger: Logger) {
        self.configuration = configuration
        self.responder = responder
        self.counter = counter
        self.logger = logger
    }

    // MARK: Daemon lifecycle

    func startDaemon() throws(HTTPServerError) -> DaemonHandle {
        let c = configuration
        // Retained: libmicrohttpd's callbacks use this pointer until tp_mhd_stop
        // returns. Released in stopDaemon, or below when the start fails.
        let context = Unmanaged.passRetained(self).toOpaque()
        var status = TP_MHD_START_OK
        var errorNumber: Int32 = 0
        state.withLock { $0.lastDaemonMessage = nil }

        let daemon = c.host.withCString { host in
            withOptionalCString(c.tls?.certificatePEM) { certificate in
                withOptionalCString(c.tls?.privateKeyPEM) { key in
                    let timeout = c.connectionTimeout.components
                    var options = tp_mhd_options(
                        bind_address: host,
                        port: UInt16(c.port),
                        connection_limit: UInt32(clamping: c.connectionLimit),
                        connection_memory_limit: c.connectionMemoryLimit,
                        connection_timeout_seconds: UInt32(
                            clamping: timeout.seconds + (timeout.attoseconds > 0 ? 1 : 0)),
                        thread_pool_size: UInt32(clamping: c.threadPoolSize),
                        tls_certificate_pem: certificate,
                        tls_private_key_pem: key,
                        context: context,
                        request_started: { context, uri, connection in
                            let target = String(cString: uri)
                            // Retained: libmicrohttpd keeps this as the request's context
                            // pointer; released in `completed` below, which libmicrohttpd
                            // calls for every request that reached this callback.
                            return Unmanaged.passRetained(RequestContext(target: target)).toOpaque()
                        },
                        access: { context, connection, _, method, _, uploadData, uploadDataSize, requestContext in
                            let core = Unmanaged<ServerCore>.fromOpaque(context!).takeUnretainedValue()
                            guard let pointer = requestContext.pointee else {
                                preconditionFailure("libmicrohttpd called the access handler without a request context.")
                            }
                            let request = Unmanaged<RequestContext>.fromOpaque(pointer).takeUnretainedValue()
                            return core.access(
                                request, connection: connection, method: method,
                                uploadData: uploadData, uploadDataSize: uploadDataSize)
                        },
                        completed: { context, _, requestContext, termination in
                            guard let pointer = requestContext.pointee else { return }
                            requestContext.pointee = nil
                            // Released: balances passRetained in `request_started`. A handler
                            // task that is still running keeps its own reference.
                            let request = Unmanaged<RequestContext>.fromOpaque(pointer).takeRetainedValue()
                            Unmanaged<ServerCore>.fromOpaque(context!).takeUnretainedValue()
                                .requestCompleted(request, termination: termination)
                        },
                        log: { context, message in
                            Unmanaged<ServerCore>.fromOpaque(context!).takeUnretainedValue()
                                .daemonLog(String(cString: message))
                        })
                    return tp_mhd_start(&options, &status, &errorNumber)
                }
            }
        }

        guard let daemon else {
            // Released: the daemon never started, so no callback can run any more.
            Unmanaged<ServerCore>.fromOpaque(context).release()
            let code: HTTPServerError.Code =
                switch status {
                case TP_MHD_START_INVALID_ADDRESS: .invalidAddress
                case TP_MHD_START_TLS_UNSUPPORTED: .tlsUnavailable
                default: .startFailed
                }
            let reason =
                switch status {
                case TP_MHD_START_INVALID_ADDRESS: "\"\(c.host)\" is not a numeric IPv4 or IPv6 address"
                case TP_MHD_START_TLS_UNSUPPORTED: "libmicrohttpd was built without TLS support"
                default: state.withLock { $0.lastDaemonMessage }.map { "libmicrohttpd: \($0)" } ?? ""
                }
            throw HTTPServerError(code: code, errorNumber: errorNumber, host: c.host, port: c.port, reason: reason)
        }
        return DaemonHandle(daemon)
    }

    /// Answers every suspended request with 503, ends every streamed body (resuming
    /// the parked ones), waits up to `shutdownGracePeriod` for those answers and ends
    /// to go out, then stops the daemon (libmicrohttpd aborts if a connection is still
    /// suspended when it stops), which frees what is left.
    func stopDaemon(_ daemon: DaemonHandle) {
        state.withLock { state in
            state.stopping = true
            for request in state.suspended.values {
                let connection = request.setResponse(
                    .problem(.serviceUnavailable(detail: "The server is shutting down.")), atShutdown: true)
                tp_mhd_resume(connection.pointer)
            }
            state.draining = state.suspended.count
            state.suspended.removeAll()
            for stream in state.streams.values { stream.endForShutdown() }
        }
        let deadline = ContinuousClock.now + configuration.shutdownGracePeriod
        while state.withLock({ $0.draining > 0 || !$0.streams.isEmpty }), ContinuousClock.now < deadline {
            usleep(2_000)
        }
        tp_mhd_stop(daemon.pointer)
        // Released: balances passRetained in startDaemon; no callback runs after tp_mhd_stop.
        Unmanaged.passUnretained(self).release()
    }

    // MARK: Callbacks (libmicrohttpd polling thread)

    /// The access handler: parse, accumulate the body, dispatch, queue the response.
    /// Returns false to make libmicrohttpd close the connection.
    func access(
        _ request: RequestContext, connection: OpaquePointer, method: UnsafePointer<CChar>,
        uploadData: UnsafePointer<CChar>?, uploadDataSize: UnsafeMutablePointer<Int>
    ) -> Bool {
        switch request.state.withLock({ $0.phase }) {
        case .head:
            return receiveHead(request, connection: connection, method: HTTPMethod(rawValue: String(cString: method)))

        case .body:
            if let uploadData, uploadDataSize.pointee > 0 {
                let chunk = UnsafeRawBufferPointer(start: uploadData, count: uploadDataSize.pointee)
                uploadDataSize.pointee = 0
                return receiveBody(request, chunk: chunk)
            }
            if uploadData != nil { return true }
            return dispatch(request, connection: connection)

        case .suspended:
            // libmicrohttpd does not call the handler of a suspended connection.
            assertionFailure("access handler called for a suspended connection")
            return true

        case .responseReady:
            let response = request.state.withLock { $0.response.take() }
            guard let response else { return false }
            return queue(response, for: request, on: connection)

        case .done:
            return true
        }
    }

    private func receiveHead(_ request: RequestContext, connection: OpaquePointer, method: HTTPMethod) -> Bool {
        var headers = HTTPHeaders()
        withUnsafeMutablePointer(to: &headers) { pointer in
            _ = tp_mhd_connection_headers(
                connection,
                { context, name, nameLength, value, valueLength in
                    let headers = context!.assumingMemoryBound(to: HTTPHeaders.self)
                    let name = String(decoding: UnsafeRawBufferPointer(start: name, count: nameLength), as: UTF8.self)
                    let value = value.map {
                        String(decoding: UnsafeRawBufferPointer(start: $0, count: valueLength), as: UTF8.self)
                    }
                    headers.pointee.add(name, value ?? "")
                }, pointer)
        }
        let remoteAddress = withUnsafeTemporaryAllocation(of: CChar.self, capacity: 64) { buffer in
            tp_mhd_connection_client_address(connection, buffer.baseAddress!, buffer.count, nil)
                ? String(cString: buffer.baseAddress!) : nil
        }

        request.state.withLock { state in
            state.method = method
            state.headers = headers
            state.remoteAddress = remoteAddress
            state.phase = .body
        }

        // Conflicting lengths make the body's end ambiguous (request smuggling through a
        // proxy); RFC 9112 §6.3 says to refuse. libmicrohttpd would use the first one.
        let lengths = Set(headers.values(for: "Content-Length").map { String(Substring($0).trimmingSpaces()) })
        if lengths.count > 1 {
            let detail = "The request has conflicting Content-Length headers (\(lengths.sorted().joined(separator: ", ")))."
            return queue(
                .problem(.badRequest(detail: detail, errors: [.object(["field": "Content-Length", "message": .string(detail)])])),
                for: request, on: connection)
        }
        // Refuse a declared oversize body before reading it; libmicrohttpd then
        // skips the body and closes the connection after the response.
        if let declared = headers["Content-Length"].flatMap({ Int(Substring($0).trimmingSpaces()) }),
            declared > configuration.maxBodySize
        {
            return queue(.problem(.contentTooLarge(limit: configuration.maxBodySize)), for: request, on: connection)
        }
        return true
    }

    private func receiveBody(_ request: RequestContext, chunk: UnsafeRawBufferPointer) -> Bool {
        let limit = configuration.maxBodySize
        let keepReading = request.state.withLock { state in
            if !state.bodyTooLarge, state.body.count + chunk.count <= limit {
                state.body.append(contentsOf: chunk)
                return true
            }
            // Without Content-Length we learn the size only now. libmicrohttpd cannot
            // answer in the middle of a body, so drop the rest and answer 413 at its
            // end, or close the connection if the client keeps sending.
            state.discardedBytes += state.body.count + chunk.count
            state.body = []
            state.bodyTooLarge = true
            return state.discardedBytes <= limit + Self.drainAllowance
        }
        if !keepReading {
            logger.notice("Closing a connection whose request body keeps exceeding the limit", metadata: ["limit": "\(limit)"])
        }
        return keepReading
    }

    private func dispatch(_ request: RequestContext, connection: OpaquePointer) -> Bool {
        let httpRequest = request.state.withLock { state -> HTTPRequest? in
            guard !state.bodyTooLarge else { return nil }
            defer { state.body = [] }
            return HTTPRequest(
                method: state.method, target: request.target, headers: state.headers, body: state.body,
                remoteAddress: state.remoteAddress)
        }
        guard let httpRequest else {
            return queue(.problem(.contentTooLarge(limit: configuration.maxBodySize)), for: request, on: connection)
        }

        let handle = ConnectionHandle(connection)
        let accepted = state.withLock { state in
            guard !state.stopping else { return false }
            // Suspend under the lock: stopDaemon either finds this request in
            // `suspended` and resumes it, or has set `stopping` before we got here.
            tp_mhd_suspend(connection)
            request.state.withLock { request in
                request.phase = .suspended
                request.connection = handle
            }
            state.suspended[ObjectIdentifier(request)] = request
            return true
        }
        guard accepted else {
            return queue(.problem(.serviceUnavailable(detail: "The server is shutting down.")), for: request, on: connection)
        }

        let responder = self.responder
        Task {
            let response = await responder.respond(to: httpRequest)
            self.complete(request, with: response)
        }
        return true
    }

    /// Called by the handler task: store the response and resume the connection,
    /// unless stopDaemon already answered it (then a streamed body is closed unsent).
    private func complete(_ request: RequestContext, with response: HTTPResponse) {
        let stored = state.withLock { state in
            guard state.suspended.removeValue(forKey: ObjectIdentifier(request)) != nil else { return false }
            let connection = request.setResponse(response)
            tp_mhd_resume(connection.pointer)
            return true
        }
        if !stored { response.stream?.close() }
    }

    private func requestCompleted(_ request: RequestContext, termination: Int32) {
        // A suspended connection only completes at shutdown, after stopDaemon resumed
        // it; never let a handler task resume a connection that is gone.
        let answeredAtShutdown = request.state.withLock { $0.answeredAtShutdown }
        let wasSuspended = state.withLock { state in
            if answeredAtShutdown { state.draining -= 1 }
            return state.suspended.removeValue(forKey: ObjectIdentifier(request)) != nil
        }
        assert(!wasSuspended, "libmicrohttpd completed a suspended request")
        // A response stored for a resumed connection that closed before the access
        // handler could queue it: its stream was never handed to libmicrohttpd.
        let unsent = request.state.withLock { $0.response.take() }
        unsent?.stream?.close()
        if termination != Int32(TP_MHD_TERMINATED_COMPLETED_OK) {
            logger.debug(
                "HTTP request ended without a complete response",
                metadata: ["target": "\(request.target)", "reason": "\(Self.terminationReason(termination))"])
        }
    }

    private func daemonLog(_ message: String) {
        state.withLock { $0.lastDaemonMessage = message }
        logger.notice("libmicrohttpd: \(message)")
    }

    /// Hands `response` to libmicrohttpd (which copies a complete body, or reads a
    /// streamed one through ``StreamedResponse``) and counts it.
    private func queue(_ response: HTTPResponse, for request: RequestContext, on connection: OpaquePointer) -> Bool {
        let method = request.state.withLock { state in
            state.phase = .done
            return state.method
        }
        counter.record(method: method, status: response.status)
        logger.debug(
            "HTTP request",
            metadata: [
                "method": "\(method)", "target": "\(request.target)", "status": "\(response.status.code)",
                "duration": "\(ContinuousClock.now - request.startedAt)",
            ])

        var headers = response.headers
        let mhdResponse: OpaquePointer
        if let stream = response.stream {
            let streamed = StreamedResponse(stream: stream, connection: connection) { [self] streamed in
                state.withLock { _ = $0.streams.removeValue(forKey: ObjectIdentifier(streamed)) }
            }
            guard let created = streamed.makeResponse() else {
                stream.close()
                logger.error("libmicrohttpd could not create a streamed response; closing the connection")
                return false
            }
            mhdResponse = created
            // Registered before libmicrohttpd can free it (at the earliest in the
            // destroy below); a server already stopping ends it at its first read.
            state.withLock { state in
                state.streams[ObjectIdentifier(streamed)] = streamed
                if state.stopping { streamed.endForShutdown() }
            }
            // The stream's inactivity timeout must not carry over to a next request.
            if headers["Connection"] == nil { headers["Connection"] = "close" }
        } else {
            let created = response.body.withUnsafeBytes { tp_mhd_response_create($0.baseAddress, $0.count) }
            guard let created else {
                logger.error("libmicrohttpd could not create a response; closing the connection")
                return false
            }
            mhdResponse = created
        }
        // libmicrohttpd holds its own reference once the response is queued; without
        // one, this frees the response (and closes a stream).
        defer { tp_mhd_response_destroy(mhdResponse) }
        for field in headers {
            if HTTPHeaders.equalNames(field.name, "Content-Length") || HTTPHeaders.equalNames(field.name, "Transfer-Encoding") {
                continue  // libmicrohttpd frames the body itself.
            }
            if !tp_mhd_response_add_header(mhdResponse, field.name, field.value) {
                logger.warning("Dropped an invalid response header", metadata: ["name": "\(field.name)"])
            }
        }
        guard tp_mhd_queue_response(connection, UInt32(response.status.code), mhdResponse) else {
            logger.error("libmicrohttpd refused to queue a response; closing the connection")
            return false
        }
        if response.stream != nil, !tp_mhd_connection_set_timeout(connection, streamTimeoutSeconds) {
            logger.warning("libmicrohttpd refused the stream timeout; the connection timeout applies")
        }
        return true
    }

    private var streamTimeoutSeconds: UInt32 {
        let timeout = configuration.streamTimeout.components
        return UInt32(clamping: timeout.seconds + (timeout.attoseconds > 0 ? 1 : 0))
    }

    private static func terminationReason(_ code: Int32) -> String {
        switch Int(code) {
        case Int(TP_MHD_TERMINATED_COMPLETED_OK): "completed"
        case Int(TP_MHD_TERMINATED_WITH_ERROR): "error"
        case Int(TP_MHD_TERMINATED_TIMEOUT_REACHED): "timeout"
        case Int(TP_MHD_TERMINATED_DAEMON_SHUTDOWN): "shutdown"
        case Int(TP_MHD_TERMINATED_READ_ERROR): "read error"
        case Int(TP_MHD_TERMINATED_CLIENT_ABORT): "client abort"
        default: "code \(code)"
        }
    }
}

private func withOptionalCString<R>(_ string: String?, _ body: (UnsafePointer<CChar>?) -> R) -> R {
    if let string { string.withCString { body($0) } } else { body(nil) }
}
