import CLibBPF
import Foundation
import Logging
import Synchronization
import TraceCore

/// A long-running part of the agent, in the shape of swift-service-lifecycle's `Service`.
///
/// Contract: `run()` starts the service and returns only after the calling task is
/// cancelled and everything the service holds is released (threads joined, kernel objects
/// detached, saves flushed). It throws only when it cannot start.
public protocol Service: Sendable {
    func run() async throws
}

/// The agent, wired in one place: the tracing core (``TracingCore``), the v1 API, the
/// Prometheus exporter and the libmicrohttpd server. `serve` runs it until SIGTERM; the
/// integration tests run the same thing on an ephemeral port.
public final class AgentService: Service {
    public struct Configuration: Sendable {
        public var core: CoreConfiguration
        /// Where to listen: a numeric address; port 0 picks an ephemeral one.
        public var host: String
        public var port: Int
        public var tls: HTTPServer.Configuration.TLS?
        /// Bearer tokens; none configured: no authentication (loopback only, checked by `serve`).
        public var tokens: AccessTokens
        /// Kernel BPF run-time stats on while the agent runs (each probe's `overhead`).
        public var bpfStats: Bool
        /// Most Prometheus series one probe's key table exports (see ``MetricsSnapshot/maxSeriesPerProbe``).
        public var maxSeriesPerProbe: Int

        public init(core: CoreConfiguration = CoreConfiguration(), host: String = "127.0.0.1", port: Int = 9480,
                    tls: HTTPServer.Configuration.TLS? = nil, tokens: AccessTokens = AccessTokens(admin: nil, readOnly: nil),
                    bpfStats: Bool = false, maxSeriesPerProbe: Int = MetricsSnapshot.defaultMaxSeriesPerProbe) {
            self.core = core
            self.host = host
            self.port = port
            self.tls = tls
            self.tokens = tokens
            self.bpfStats = bpfStats
            self.maxSeriesPerProbe = maxSeriesPerProbe
        }
    }

    public let configuration: Configuration
    public let core: TracingCore
    public let server: HTTPServer
    private let logger: Logger
    /// The bound port, once listening (or why not).
    private let listening = Promise<Int>()
    /// Settled once capabilities are probed and saved probes and the probe file applied.
    private let started = Promise<Void>()

    /// Wires everything; nothing listens and nothing is loaded before ``run()``.
    ///
    /// - Throws: ``StateError`` when the state directory cannot be used.
    public init(_ configuration: Configuration, backend: (any KernelBackend)? = nil,
                logger: Logger = Logger(label: "traceplane")) throws(StateError) {
        self.configuration = configuration
        self.logger = logger
        let core = try TracingCore(configuration.core, backend: backend, logger: logger)
        self.core = core
        let requests = HTTPRequestCounter()
        let exporter = PrometheusExporter(probes: core.probes, capabilities: core.capabilities, requests: requests,
                                          build: BuildInfo(libbpfVersion: "\(libbpf_major_version()).\(libbpf_minor_version())"),
                                          stateTracked: core.state != nil, maxSeriesPerProbe: configuration.maxSeriesPerProbe)
        let started = self.started
        let api = AgentAPI(capabilities: core.capabilities, probes: core.probes, metrics: { await exporter.scrape(accept: $0) },
                           startupDone: { started.isFulfilled })
        let responder: any HTTPResponder = configuration.tokens.enabled
            ? BearerAuth(tokens: configuration.tokens, next: api.router()) : api.router()
        server = HTTPServer(configuration: .init(host: configuration.host, port: configuration.port, tls: configuration.tls),
                            responder: responder, requestCounter: requests, logger: Logger(label: "traceplane.http"))
    }

    /// Listens, then probes capabilities, restores saved probes and applies the probe file
    /// (`/readyz` answers 200 once all three are done); serves until the calling task is
    /// cancelled; then stops the server, detaches every probe, flushes the saved state and
    /// waits until the kernel released everything.
    ///
    /// - Throws: ``HTTPServerError`` when it cannot listen (nothing else is started then).
    public func run() async throws {
        let statsFD = configuration.bpfStats ? tp_enable_runtime_stats() : -1
        if configuration.bpfStats, statsFD < 0 {
            logger.warning("BPF run-time stats unavailable (\(Errno(rawValue: -statsFD).name)): probe overhead will read 0")
        }
        defer { if statsFD >= 0 { close(statsFD) } }
        do {
            try server.start()
        } catch {
            listening.fulfil(.failure(error))
            started.fulfil(.failure(error))
            throw error
        }
        let host = configuration.host.contains(":") ? "[\(configuration.host)]" : configuration.host
        logger.notice("listening on \(host):\(server.port)\(configuration.tls == nil ? "" : " (HTTPS)")\(configuration.tokens.enabled ? " with bearer tokens" : "")")
        listening.fulfil(server.port)
        let startup = Task { [core, started] in
            await core.start()
            started.fulfil(())
        }
        await Self.untilCancelled()
        logger.notice("stopping: detaching every probe")
        server.stop()
        await core.shutdown()
        // A start-up still running restores nothing once the core shuts down; what it
        // attached meanwhile is detached again here.
        await startup.value
        await core.shutdown()
    }

    /// The port the server listens on, once ``run()`` got that far.
    ///
    /// - Throws: what ``run()`` threw when it could not listen.
    public func listeningPort() async throws -> Int { try await listening.value() }

    /// Waits until capabilities are probed and saved probes and the probe file applied
    /// (what `/readyz` reports).
    ///
    /// - Throws: what ``run()`` threw when it could not listen.
    public func waitUntilStarted() async throws { try await started.value() }

    /// Suspends until the calling task is cancelled.
    static func untilCancelled() async {
        let never = AsyncStream<Never> { _ in }
        for await _ in never {}  // an AsyncStream iteration ends when its task is cancelled
    }
}
