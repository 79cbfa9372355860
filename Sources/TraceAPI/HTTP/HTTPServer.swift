import CMicroHTTPD
import Logging
import Synchronization
import TraceCore

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// The agent's HTTP/1.1 server: libmicrohttpd with one owner.
///
/// libmicrohttpd's polling thread(s) only parse requests and dispatch them: once
/// a request (head and body) is complete, its connection is suspended and the
/// ``HTTPResponder`` runs in a Swift `Task`; the connection is resumed with the
/// response when the task ends. A streamed body (``HTTPResponse/stream(status:headers:_:)``)
/// is pulled on the polling threads, and its connection is suspended whenever the
/// stream has nothing to send, so idle streams hold no thread. Request bodies are limited
/// (``Configuration/maxBodySize``, 413 problem), and so are connections,
/// per-connection memory and idle time, so that slow or hostile clients cannot
/// pin the server.
///
/// Lifecycle: ``start()`` once, then ``stop()`` (idempotent; `deinit` stops too).
/// A stopped server cannot be started again.
public final class HTTPServer: Sendable {
    /// Listening address and limits. Every default is chosen on purpose; see each property.
    public struct Configuration: Sendable {
        /// Numeric IPv4 or IPv6 address to bind. Default `127.0.0.1`: only local
        /// clients. `::` binds every IPv6 and IPv4 address (dual stack).
        public var host: String
        /// TCP port. Default 9480. 0 picks an ephemeral port; read ``HTTPServer/port`` after start.
        public var port: Int
        /// Largest accepted request body in bytes. Default 64 KiB; larger bodies get a
        /// 413 problem (at once when `Content-Length` says so; a chunked body is read
        /// and dropped up to 1 MiB past the limit, then the connection is closed).
        public var maxBodySize: Int
        /// Most simultaneous connections; libmicrohttpd stops accepting at the limit, so
        /// further ones wait in the kernel's listen queue until one closes. Default 512.
        public var connectionLimit: Int
        /// libmicrohttpd's memory pool per connection, which holds the request head
        /// and I/O buffers; it also bounds the size of request headers. Default 32 KiB.
        public var connectionMemoryLimit: Int
        /// A connection with no traffic for this long is closed (rounded up to whole
        /// seconds). Default 10 s. Time spent in a handler does not count.
        public var connectionTimeout: Duration
        /// A streamed response (``HTTPResponse/stream(status:headers:_:)``) whose client
        /// accepts no data for this long is dropped (rounded up to whole seconds); it
        /// replaces ``connectionTimeout`` for that connection. Default 60 s. A stream
        /// waiting for data does not count: it is parked, not idle.
        public var streamTimeout: Duration
        /// libmicrohttpd polling threads. Default 1: they only parse and dispatch.
        public var threadPoolSize: Int
        /// How long ``HTTPServer/stop()`` waits for the 503 answers to requests whose
        /// handler is still running to reach their clients. Default 1 s; usually
        /// it takes well under a millisecond.
        public var shutdownGracePeriod: Duration
        /// Serve HTTPS with this certificate and key. Default nil: plain HTTP.
        public var tls: TLS?

        /// PEM certificate (chain) and private key.
        public struct TLS: Sendable {
            public var certificatePEM: String
            public var privateKeyPEM: String

            public init(certificatePEM: String, privateKeyPEM: String) {
                self.certificatePEM = certificatePEM
                self.privateKeyPEM = privateKeyPEM
            }
        }

        public init(
            host: String = "127.0.0.1",
            port: Int = 9480,
            maxBodySize: Int = 64 * 1024,
            connectionLimit: Int = 512,
            connectionMemoryLimit: Int = 32 * 1024,
            connectionTimeout: Duration = .seconds(10),
            streamTimeout: Duration = .seconds(60),
            threadPoolSize: Int = 1,
            shutdownGracePeriod: Duration = .seconds(1),
            tls: TLS? = nil
        ) {
            self.host = host
            self.port = port
            self.maxBodySize = maxBodySize
            self.connectionLimit = connectionLimit
            self.connectionMemoryLimit = connectionMemoryLimit
            self.connectionTimeout = connectionTimeout
            self.streamTimeout = streamTimeout
            self.threadPoolSize = threadPoolSize
            self.shutdownGracePeriod = shutdownGracePeriod
            self.tls = tls
        }
    }

    public let configuration: Configuration
    /// The counters this server records into.
    public let requestCounter: HTTPRequestCounter

    private enum Lifecycle {
        case idle
        case running(daemon: DaemonHandle, port: Int)
        case stopped
    }

    private let core: ServerCore
    private let lifecycle = Mutex(Lifecycle.idle)

    /// Creates a server; nothing listens before ``start()``.
    ///
    /// - Parameters:
    ///   - responder: answers every complete request (usually a ``Router``).
    ///   - requestCounter: where responses are counted by method and status.
    public init(
        configuration: Configuration = Configuration(),
        responder: some HTTPResponder,
        requestCounter: HTTPRequestCounter = HTTPRequestCounter(),
        logger: Logger = Logger(label: "traceplane.http")
    ) {
        self.configuration = configuration
        self.requestCounter = requestCounter
        self.core = ServerCore(
            configuration: configuration, responder: responder, counter: requestCounter, logger: logger)
    }

    deinit {
        stop()
    }

    /// The bound port once started (the real one when configured with 0);
    /// before start and after stop, the configured port.
    public var port: Int {
        lifecycle.withLock { state in
            if case .running(_, let port) = state { port } else { configuration.port }
        }
    }

    /// A snapshot of the request counters.
    public var requestCounts: HTTPRequestCounts { requestCounter.snapshot() }

    /// Binds and starts serving on libmicrohttpd's thread(s); returns once listening.
    ///
    /// - Throws: ``HTTPServerError`` with errno when the configuration is invalid or
    ///   the address cannot be bound (`EADDRINUSE`, `EACCES`, `EADDRNOTAVAIL`, …).
    ///   After a failure the server may be started again.
    /// - Precondition: the server is neither running nor stopped.
    public func start() throws(HTTPServerError) {
        try lifecycle.withLock { (state: inout Lifecycle) throws(HTTPServerError) in
            switch state {
            case .idle: break
            case .running: preconditionFailure("HTTPServer.start() was called on a running server.")
            case .stopped: preconditionFailure("HTTPServer.start() was called after stop(); create a new server.")
            }
            try validate()
            let daemon = try core.startDaemon()
            let port = Int(tp_mhd_bound_port(daemon.pointer))
            state = .running(daemon: daemon, port: port)
            core.logger.info(
                "HTTP server listening",
                metadata: ["address": "\(configuration.host)", "port": "\(port)", "tls": "\(configuration.tls != nil)"])
        }
    }

    /// Answers requests whose handler is still running with a 503 problem (and
    /// any new request too), ends every streamed body (its client sees the end of
    /// the body), waits for those answers and ends to go out (at most
    /// ``Configuration/shutdownGracePeriod``), then closes the listening socket and
    /// every connection and joins libmicrohttpd's threads. Every stream has been
    /// closed when it returns.
    ///
    /// Idempotent and safe from any thread except a libmicrohttpd callback; when it
    /// returns, no callback runs any more. Handler tasks still running finish on
    /// their own; their responses are dropped.
    public func stop() {
        lifecycle.withLock { state in
            guard case .running(let daemon, _) = state else {
                if case .idle = state { state = .stopped }
                return
            }
            state = .stopped
            core.stopDaemon(daemon)
            core.logger.info("HTTP server stopped")
        }
    }

    private func validate() throws(HTTPServerError) {
        func invalid(_ reason: String) -> HTTPServerError {
            HTTPServerError(
                code: .invalidConfiguration, errorNumber: EINVAL, host: configuration.host,
                port: configuration.port, reason: reason)
        }
        let c = configuration
        guard (0...65535).contains(c.port) else { throw invalid("port \(c.port) is not in 0...65535") }
        guard c.maxBodySize >= 0 else { throw invalid("maxBodySize must not be negative") }
        guard c.connectionLimit >= 1 else { throw invalid("connectionLimit must be at least 1") }
        guard c.connectionMemoryLimit >= 4096 else { throw invalid("connectionMemoryLimit must be at least 4096 bytes") }
        guard c.connectionTimeout > .zero else { throw invalid("connectionTimeout must be positive") }
        guard c.streamTimeout > .zero else { throw invalid("streamTimeout must be positive") }
        guard c.shutdownGracePeriod >= .zero else { throw invalid("shutdownGracePeriod must not be negative") }
        guard (1...64).contains(c.threadPoolSize) else { throw invalid("threadPoolSize must be in 1...64") }
        if let tls = c.tls, tls.certificatePEM.isEmpty || tls.privateKeyPEM.isEmpty {
            throw invalid("TLS needs both a certificate and a private key")
        }
    }
}

/// Why ``HTTPServer/start()`` failed. Carries errno and what libmicrohttpd reported.
public struct HTTPServerError: Error, Sendable, CustomStringConvertible {
    public struct Code: Hashable, Sendable, CustomStringConvertible {
        private enum Base: Hashable, Sendable {
            case invalidConfiguration, invalidAddress, tlsUnavailable, startFailed
        }

        private let base: Base

        /// A configuration value is out of range.
        public static let invalidConfiguration = Code(base: .invalidConfiguration)
        /// The host is not a numeric IPv4 or IPv6 address.
        public static let invalidAddress = Code(base: .invalidAddress)
        /// TLS was configured but libmicrohttpd was built without it.
        public static let tlsUnavailable = Code(base: .tlsUnavailable)
        /// libmicrohttpd could not start, usually because bind() or listen() failed.
        public static let startFailed = Code(base: .startFailed)

        public var description: String {
            switch base {
            case .invalidConfiguration: "invalid configuration"
            case .invalidAddress: "invalid address"
            case .tlsUnavailable: "TLS unavailable"
            case .startFailed: "start failed"
            }
        }
    }

    public let code: Code
    /// errno from the failing operation (0 if libmicrohttpd left none).
    public let errorNumber: Int32
    public let host: String
    public let port: Int
    /// The configuration check's or libmicrohttpd's own explanation.
    public let reason: String
    public let file: String
    public let line: Int

    init(
        code: Code, errorNumber: Int32, host: String, port: Int, reason: String,
        file: String = #fileID, line: Int = #line
    ) {
        self.code = code
        self.errorNumber = errorNumber
        self.host = host
        self.port = port
        self.reason = reason
        self.file = file
        self.line = line
    }

    /// The symbolic errno name, such as `EADDRINUSE`, when known.
    public var errorName: String? { Errno(rawValue: errorNumber).knownName }

    public var description: String {
        var text = "cannot serve HTTP on \(host.contains(":") ? "[\(host)]" : host):\(port): \(code)"
        if errorNumber != 0 {
            text += ": \(String(cString: strerror(errorNumber)))"
            if let errorName { text += " (\(errorName))" }
        }
        if !reason.isEmpty { text += "; \(reason)" }
        return text
    }
}

