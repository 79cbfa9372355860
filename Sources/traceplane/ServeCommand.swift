import ArgumentParser
import CLibBPF
import Dispatch
import Foundation
import Glibc
import Logging
import TraceAPI
import TraceCore
import Synchronization

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the agent: the HTTP/JSON control plane on 127.0.0.1:9480.")

    @Option(help: "Address to listen on, HOST:PORT ([::1]:PORT for IPv6). Anything but loopback needs --token-file or --read-token-file.")
    var listen: String = "127.0.0.1:9480"

    @Option(help: "Most probes the agent holds at once (429 past it).")
    var maxProbes: Int = 256

    @Option(help: "File holding the admin bearer token (all endpoints). Tokens are never taken from arguments or the environment.")
    var tokenFile: String?

    @Option(help: "File holding the read-only bearer token (GET endpoints and /metrics).")
    var readTokenFile: String?

    @Option(help: "PEM certificate (chain) for HTTPS; needs --tls-key.")
    var tlsCert: String?

    @Option(help: "PEM private key for HTTPS; needs --tls-cert.")
    var tlsKey: String?

    @Option(help: "Directory where desired probes are saved atomically and restored from at start-up.")
    var stateDir: String?

    @Option(help: "YAML file of probe specs to apply at start-up (after restoring saved probes).")
    var probes: String?

    @Flag(inversion: .prefixedNo,
          help: "Turn kernel BPF run-time stats on while the agent runs, for each probe's `overhead` (else it reads 0). They are host-wide: every run of every BPF program on the host then pays two clock reads (+70 ns per run on the development machines).")
    var bpfStats = false

    @OptionGroup var kernel: KernelOptions

    func run() async throws {
        Self.boundMallocRetention()
        try kernel.bootstrapLogging()
        let logger = Logger(label: "traceplane")
        let (host, port) = try ListenAddress.parse(listen)
        guard (1...4096).contains(maxProbes) else { throw ValidationError("--max-probes must be from 1 to 4096") }
        let tokens = try loadTokens(logger: logger)
        guard ListenAddress.isLoopback(host) || tokens.enabled else {
            throw StartupError("refusing to listen on \(host): anyone who can reach it could load BPF programs. Give an admin token with --token-file (and optionally --read-token-file), or listen on 127.0.0.1 or ::1.")
        }
        let tls = try loadTLS()
        let state: StateStore?
        do { state = try stateDir.map { try StateStore(directory: $0) } } catch { throw StartupError("\(error)") }
        let probeFile: [ProbeSpec]
        do { probeFile = try probes.map { try ProbeFile.load($0) } ?? [] } catch { throw StartupError("\(error)") }

        // Per-probe BPF run time needs kernel BPF stats: with --bpf-stats, on for the agent's
        // lifetime only (through an fd, never the global sysctl). Off by default: they are
        // host-wide and cost every BPF program run two clock reads (BENCHMARKS.md).
        let statsFD = bpfStats ? tp_enable_runtime_stats() : -1
        if bpfStats, statsFD < 0 {
            logger.warning("BPF run-time stats unavailable (\(errnoName(-statsFD))): probe overhead will read 0")
        }
        defer { if statsFD >= 0 { close(statsFD) } }

        let backend = LibBPFBackend(logger: Logger(label: "traceplane.libbpf"))
        // The prober has a reaper of its own: a refresh then waits for its own programs to be
        // detached (see CapabilityStore.refresh), not for probes deleted meanwhile.
        let store = CapabilityStore(prober: CapabilityProber(backend: backend, disabled: try kernel.disabled(), reaper: Reaper()))
        let manager = ProbeManager(planner: Planner(backend: backend, hubSlots: maxProbes), maxProbes: maxProbes, state: state,
                                   report: { await store.current })
        await manager.startExpiry()
        let requestCounter = HTTPRequestCounter()
        let exporter = PrometheusExporter(probes: manager, capabilities: store, requests: requestCounter,
                                          build: BuildInfo(libbpfVersion: "\(libbpf_major_version()).\(libbpf_minor_version())"))
        // Ready once capabilities are probed and saved probes and the probe file are applied.
        let startupDone = Atomic<Bool>(false)
        let api = AgentAPI(capabilities: store, probes: manager, metrics: { await exporter.scrape() },
                           startupDone: { startupDone.load(ordering: .acquiring) })
        let responder: any HTTPResponder = tokens.enabled ? BearerAuth(tokens: tokens, next: api.router()) : api.router()
        let server = HTTPServer(configuration: .init(host: host, port: port, tls: tls), responder: responder,
                                requestCounter: requestCounter, logger: Logger(label: "traceplane.http"))
        do {
            try server.start()
        } catch {
            throw StartupError("cannot listen on \(listen): \(error)")
        }
        logger.notice("listening on \(listen.contains("]") ? "[\(host)]" : host):\(server.port)\(tls == nil ? "" : " (HTTPS)")\(tokens.enabled ? " with bearer tokens" : "")")
        Task {
            let report = await store.refresh()
            logger.notice("capabilities probed in \(Int(report.durationMilliseconds)) ms: \(report.mechanisms.filter { $0.status == .supported }.map(\.name).joined(separator: ", ")) supported")
            if let state { await Self.restore(from: state, into: manager, logger: logger) }
            for spec in probeFile { await Self.apply(spec, to: manager, logger: logger) }
            startupDone.store(true, ordering: .releasing)
        }

        let signal = await SignalWaiter.wait(for: [SIGTERM, SIGINT])
        logger.notice("received signal \(signal): detaching every probe and exiting")
        server.stop()
        await manager.removeAll()
        state?.flush()
        Reaper.shared.drain()
    }

    /// libbpf reads the kernel's BTF (about 5 MB here) in one block for every load that
    /// needs it. glibc then raises its mmap threshold to that size, so later blocks that big
    /// come from the heap and stay there after free: an idle agent kept ~25 MB it no longer
    /// used after probing capabilities. A fixed threshold keeps big blocks in their own
    /// mappings (returned on free); two arenas bound what the threads that load objects
    /// and serve requests can each keep.
    static func boundMallocRetention() {
        _ = tp_malloc_bound_retention(256 * 1024, 2)
    }

    func loadTokens(logger: Logger) throws -> AccessTokens {
        func read(_ path: String?, _ flag: String) throws -> [UInt8]? {
            guard let path else { return nil }
            do {
                let token = try AccessTokens.read(file: path)
                if AccessTokens.isExposed(file: path) {
                    logger.warning("\(flag) \(path) is readable by group or others; chmod 600 it")
                }
                return token
            } catch {
                throw StartupError("\(flag): \(error)")
            }
        }
        let tokens = AccessTokens(admin: try read(tokenFile, "--token-file"), readOnly: try read(readTokenFile, "--read-token-file"))
        if let admin = tokens.admin, let reader = tokens.readOnly, admin == reader {
            throw StartupError("--token-file and --read-token-file hold the same token; the read-only token must differ")
        }
        return tokens
    }

    func loadTLS() throws -> HTTPServer.Configuration.TLS? {
        switch (tlsCert, tlsKey) {
        case (nil, nil): return nil
        case (let cert?, let key?):
            guard let certificate = try? String(contentsOfFile: cert, encoding: .utf8), certificate.contains("-----BEGIN") else {
                throw StartupError("--tls-cert \(cert) cannot be read as a PEM certificate")
            }
            guard let privateKey = try? String(contentsOfFile: key, encoding: .utf8), privateKey.contains("PRIVATE KEY-----") else {
                throw StartupError("--tls-key \(key) cannot be read as a PEM private key")
            }
            return .init(certificatePEM: certificate, privateKeyPEM: privateKey)
        default:
            throw ValidationError("--tls-cert and --tls-key go together")
        }
    }

    /// Re-plans saved probes and reports each one.
    static func restore(from state: StateStore, into manager: ProbeManager, logger: Logger) async {
        switch state.load() {
        case .none:
            logger.info("no saved probes in \(state.directory)")
        case .corrupt(let reason, let keptAt):
            logger.error("the state file \(state.path) is corrupt or unreadable (\(reason)); \(keptAt.map { "kept aside as \($0)" } ?? "left in place"); starting with no saved probes")
        case .loaded(let saved):
            for outcome in await manager.restore(saved) {
                if let probe = outcome.probe, probe.state == "active" {
                    logger.notice("restored probe \(outcome.name) via \(probe.mechanism ?? "?")")
                } else {
                    let attempts = outcome.probe?.attempts.map { "\($0.mechanism) \($0.outcome.rawValue)\($0.errno.map { " \($0)" } ?? "")" } ?? []
                    logger.error("could not restore probe \(outcome.name): \(outcome.problem ?? "unknown reason")\(attempts.isEmpty ? "" : " [\(attempts.joined(separator: ", "))]")")
                }
            }
        }
    }

    /// Applies one spec of the --probes file, like a PUT.
    static func apply(_ spec: ProbeSpec, to manager: ProbeManager, logger: Logger) async {
        guard let name = spec.name else { return }
        do {
            let (probe, outcome) = try await manager.put(name: name, spec: spec)
            logger.notice("probe file: \(name) \(outcome == .created ? "created" : outcome == .unchanged ? "unchanged" : "replaced") via \(probe.mechanism ?? "?")")
        } catch {
            logger.error("probe file: \(name) not applied: \(error.detail)")
        }
    }
}

enum ListenAddress {
    static func parse(_ text: String) throws -> (String, Int) {
        let host: String, portText: Substring
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            let rest = text[text.index(after: close)...]
            guard rest.hasPrefix(":") else { throw ValidationError("invalid --listen '\(text)': use HOST:PORT") }
            portText = rest.dropFirst()
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            portText = text[text.index(after: colon)...]
        } else {
            throw ValidationError("invalid --listen '\(text)': use HOST:PORT")
        }
        guard let port = Int(portText), (0...65535).contains(port), !host.isEmpty else {
            throw ValidationError("invalid --listen '\(text)': use HOST:PORT with a port from 0 to 65535")
        }
        return (host == "localhost" ? "127.0.0.1" : host, port)
    }

    static func isLoopback(_ host: String) -> Bool {
        host == "::1" || host.hasPrefix("127.")
    }
}

/// Waits for the first of some signals, delivered through Dispatch (not an async-unsafe handler).
enum SignalWaiter {
    static func wait(for signals: [Int32]) async -> Int32 {
        let stream = AsyncStream<Int32> { continuation in
            var sources: [any DispatchSourceSignal] = []
            for sig in signals {
                Glibc.signal(sig, SIG_IGN)
                let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
                source.setEventHandler { continuation.yield(sig) }
                source.resume()
                sources.append(source)
            }
            // The sources live as long as the stream: released when it terminates.
            let keep = SourceBox(sources)
            continuation.onTermination = { _ in keep.cancel() }
        }
        for await sig in stream { return sig }
        return SIGTERM
    }
}

/// Owns Dispatch signal sources until cancelled.
final class SourceBox: @unchecked Sendable {
    // Only touched at init and in cancel(), which the stream calls once.
    private let sources: [any DispatchSourceSignal]
    init(_ sources: [any DispatchSourceSignal]) { self.sources = sources }
    func cancel() { for s in sources { s.cancel() } }
}

/// A start-up failure that is not about the command line's shape (no usage text).
struct StartupError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}
