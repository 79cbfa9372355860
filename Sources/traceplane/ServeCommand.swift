import ArgumentParser
import CLibBPF
import Dispatch
import Foundation
import Glibc
import Logging
import TraceAPI
import TraceCore

struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the agent: the HTTP/JSON control plane on 127.0.0.1:9480.")

    @Option(help: "Address to listen on, HOST:PORT ([::1]:PORT for IPv6). Only loopback is allowed until tokens are configured.")
    var listen: String = "127.0.0.1:9480"

    @Option(help: "Most probes the agent holds at once (429 past it).")
    var maxProbes: Int = 256

    @OptionGroup var kernel: KernelOptions

    func run() async throws {
        try kernel.bootstrapLogging()
        let logger = Logger(label: "traceplane")
        let (host, port) = try ListenAddress.parse(listen)
        guard ListenAddress.isLoopback(host) else {
            throw ValidationError("refusing to listen on \(host): a non-loopback address needs an admin token, and token authentication is not available in this build. Listen on 127.0.0.1 or ::1.")
        }
        guard (1...4096).contains(maxProbes) else { throw ValidationError("--max-probes must be from 1 to 4096") }

        // Per-probe BPF run time needs kernel BPF stats: on for the agent's lifetime only
        // (through an fd, never the global sysctl).
        let statsFD = tp_enable_runtime_stats()
        if statsFD < 0 {
            logger.warning("BPF run-time stats unavailable (\(errnoName(-statsFD))): probe overhead will read 0")
        }
        defer { if statsFD >= 0 { close(statsFD) } }

        let backend = LibBPFBackend(logger: Logger(label: "traceplane.libbpf"))
        let store = CapabilityStore(prober: CapabilityProber(backend: backend, disabled: try kernel.disabled()))
        let manager = ProbeManager(planner: Planner(backend: backend), maxProbes: maxProbes, report: { await store.current })
        await manager.startExpiry()
        let api = AgentAPI(capabilities: store, probes: manager)
        let server = HTTPServer(configuration: .init(host: host, port: port), responder: api.router(),
                                logger: Logger(label: "traceplane.http"))
        do {
            try server.start()
        } catch {
            throw ValidationError("cannot listen on \(listen): \(error)")
        }
        logger.notice("listening on \(listen.contains("]") ? "[\(host)]" : host):\(server.port)")
        Task {
            let report = await store.refresh()
            logger.notice("capabilities probed in \(Int(report.durationMilliseconds)) ms: \(report.mechanisms.filter { $0.status == .supported }.map(\.name).joined(separator: ", ")) supported")
        }

        let signal = await SignalWaiter.wait(for: [SIGTERM, SIGINT])
        logger.notice("received signal \(signal): detaching every probe and exiting")
        server.stop()
        await manager.removeAll()
        Reaper.shared.drain()
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
