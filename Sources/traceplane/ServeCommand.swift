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

    @Option(help: ArgumentHelp(
        "Pin every probe's maps, programs and links in this directory on bpffs (e.g. /sys/fs/bpf/traceplane), so that they outlive the agent; needs --state-dir.",
        discussion: "SIGTERM and SIGINT then leave pinned probes attached and counting, and the next start adopts them (counters continue). bpffs is mounted at /sys/fs/bpf when missing; a directory on another file system is refused. `traceplane cleanup` removes what is pinned."))
    var pinDir: String?

    @Option(help: "YAML file of probe specs to apply at start-up (after restoring saved probes).")
    var probes: String?

    @Flag(inversion: .prefixedNo,
          help: "Turn kernel BPF run-time stats on while the agent runs, for each probe's `overhead` (else it reads 0). They are host-wide: every run of every BPF program on the host then pays two clock reads (+70 ns per run on the development machines).")
    var bpfStats = false

    @Option(help: ArgumentHelp(
        "Most Prometheus series one probe's key table exports.",
        discussion: "A key costs 2 series (calls, errors; 1 for tracepoints) plus, with a value histogram, its le buckets + 3 (+Inf, _sum, _count). If every key fits, all are exported; otherwise the top keys by calls are kept such that they and one more group fit, and the rest are summed into that group, labelled other=\"true\". A probe whose one group exceeds the budget still exports one."))
    var maxSeriesPerProbe: Int = MetricsSnapshot.defaultMaxSeriesPerProbe

    @Option(help: ArgumentHelp(
        "Percent of one CPU that all probes and the agent together may cost (default: no agent-wide limit).",
        discussion: "Every probe is then built to sample and suspend; the agent's own CPU time comes off the limit first, and each probe gets a share of the rest in proportion to what it costs recording every call (see README \"Budgets\")."))
    var maxCpuPercent: Double?

    @Option(help: "Seconds a suspended probe waits before it may resume (doubled, up to 300, when it is suspended again within 10 minutes).")
    var budgetHoldOff: Int = 10

    @Option(help: "Seconds between the short (100 ms) BPF stats windows that measure each budgeted probe's cost per call.")
    var budgetStatsInterval: Int = 5

    @Option(help: ArgumentHelp("Where budgets get each probe's cost per call: auto (BPF stats windows; each flavour's calibration where BPF_ENABLE_STATS is refused) or calibration (always the calibration, no stats windows).",
                               discussion: "A calibration measures, once per flavour, the time a budgeted probe of that flavour adds to calls the agent makes itself (getppid, raw_syscalls:sys_enter, or a function of its own binary for uprobes)."))
    var budgetCost: String = "auto"

    @OptionGroup var kernel: KernelOptions

    func run() async throws {
        // A daemon outlives its terminal and its readers. SIGHUP (the terminal closed, or a
        // `kill -HUP` meant as "reload") would otherwise terminate the agent and detach every
        // probe: it is ignored from the start, and logged once the service runs. SIGPIPE
        // would end it when whatever reads its log goes away: ignored, so such a write
        // fails with EPIPE instead (HTTP writes never raise it: libmicrohttpd sends with
        // MSG_NOSIGNAL).
        signal(SIGHUP, SIG_IGN)
        signal(SIGPIPE, SIG_IGN)
        Self.boundMallocRetention()
        try kernel.bootstrapLogging()
        let logger = Logger(label: "traceplane")
        let (host, port) = try ListenAddress.parse(listen)
        guard (1...4096).contains(maxProbes) else { throw ValidationError("--max-probes must be from 1 to 4096") }
        guard maxSeriesPerProbe >= 1 else { throw ValidationError("--max-series-per-probe must be at least 1") }
        let tokens = try loadTokens(logger: logger)
        guard ListenAddress.isLoopback(host) || tokens.enabled else {
            throw StartupError("refusing to listen on \(host): anyone who can reach it could load BPF programs. Give an admin token with --token-file (and optionally --read-token-file), or listen on 127.0.0.1 or ::1.")
        }
        let tls = try loadTLS()
        let probeFile: [ProbeSpec]
        do { probeFile = try probes.map { try ProbeFile.load($0) } ?? [] } catch { throw StartupError("\(error)") }
        if let p = maxCpuPercent, !(p >= BudgetSpec.minCPUPercent && p <= 100 * Double(max(1, sysconf(Int32(_SC_NPROCESSORS_ONLN))))) {
            throw ValidationError("--max-cpu-percent must be from \(BudgetSpec.minCPUPercent) to 100 × the online CPUs")
        }
        guard (1...300).contains(budgetHoldOff) else { throw ValidationError("--budget-hold-off must be from 1 to 300 seconds") }
        guard (1...3600).contains(budgetStatsInterval) else { throw ValidationError("--budget-stats-interval must be from 1 to 3600 seconds") }
        var budgets = BudgetController.Configuration(maxCPUPercent: maxCpuPercent)
        budgets.policy.holdOff = .seconds(budgetHoldOff)
        budgets.statsInterval = .seconds(budgetStatsInterval)
        budgets.statsAlwaysOn = bpfStats
        guard let costSource = BudgetController.Configuration.CostSource(rawValue: budgetCost) else {
            throw ValidationError("--budget-cost must be auto or calibration")
        }
        budgets.costSource = costSource
        let configuration = AgentService.Configuration(
            core: CoreConfiguration(maxProbes: maxProbes, disabledMechanisms: try kernel.disabled(), stateDirectory: stateDir,
                                    pinDirectory: pinDir, probeFile: probeFile, budgets: budgets),
            host: host, port: port, tls: tls, tokens: tokens, bpfStats: bpfStats, maxSeriesPerProbe: maxSeriesPerProbe)
        let service: AgentService
        do { service = try AgentService(configuration, logger: logger) } catch { throw StartupError("\(error)") }

        // The service runs until cancelled; SIGTERM or SIGINT cancels it.
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                await SignalWaiter.each(SIGHUP) {
                    logger.notice("received SIGHUP: ignored, the agent keeps running with its probes (SIGTERM or SIGINT stops it)")
                }
            }
            group.addTask {
                do { try await service.run() } catch { throw StartupError("cannot listen on \(listen): \(error)") }
            }
            group.addTask {
                let signal = await SignalWaiter.wait(for: [SIGTERM, SIGINT])
                if !Task.isCancelled {
                    logger.notice("received signal \(signal): \(pinDir == nil ? "detaching every probe" : "leaving pinned probes attached in \(pinDir!)") and exiting")
                }
            }
            defer { group.cancelAll() }
            // The first child to end (the signal, or a service that could not listen) ends both.
            try await group.next()
            group.cancelAll()
            try await group.waitForAll()
        }
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

    /// Calls `body` for every delivery of `signal` until the task is cancelled.
    static func each(_ signal: Int32, _ body: @escaping @Sendable () -> Void) async {
        let stream = AsyncStream<Int32> { continuation in
            Glibc.signal(signal, SIG_IGN)
            let source = DispatchSource.makeSignalSource(signal: signal, queue: .global())
            source.setEventHandler { continuation.yield(signal) }
            source.resume()
            let keep = SourceBox([source])
            continuation.onTermination = { _ in keep.cancel() }
        }
        for await _ in stream { body() }
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
