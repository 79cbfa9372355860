import Foundation
import TraceCore

/// Serves `GET /metrics`: collects a ``MetricsSnapshot`` from the agent and renders it in
/// the Prometheus text format 0.0.4, straight into one byte buffer.
///
/// A scrape reads each probe's maps once (batched where the kernel allows it), so its cost
/// grows with the number of probes, not with the event rate.
public struct PrometheusExporter: Sendable {
    /// The media type of the text format 0.0.4.
    public static let contentType = "text/plain; version=0.0.4; charset=utf-8"

    public let probes: ProbeManager
    public let capabilities: CapabilityStore
    public let requests: HTTPRequestCounter?
    public let build: BuildInfo
    /// Whether the agent saves its desired probes (then the save-failure counter is exposed).
    public let stateTracked: Bool
    /// Most series one probe's key table exports (see ``MetricsSnapshot/maxSeriesPerProbe``).
    public let maxSeriesPerProbe: Int

    /// - Parameters:
    ///   - requests: the counter the ``HTTPServer`` records into; nil exposes no HTTP series.
    ///   - build: the versions `traceplane_build_info` reports.
    ///   - maxSeriesPerProbe: the series budget of each probe's key table, at least 1.
    public init(probes: ProbeManager, capabilities: CapabilityStore, requests: HTTPRequestCounter?, build: BuildInfo,
                stateTracked: Bool = false, maxSeriesPerProbe: Int = MetricsSnapshot.defaultMaxSeriesPerProbe) {
        precondition(maxSeriesPerProbe > 0, "The series budget per probe must be at least 1, not \(maxSeriesPerProbe).")
        self.probes = probes
        self.stateTracked = stateTracked
        self.maxSeriesPerProbe = maxSeriesPerProbe
        self.capabilities = capabilities
        self.requests = requests
        self.build = build
    }

    /// The exposition formats a scrape can get.
    public enum Format: Sendable, Hashable {
        /// The text format 0.0.4 (classic histograms only).
        case text
        /// Length-delimited protobuf MetricFamily messages, with native histograms.
        case protobuf
    }

    /// One scrape: a 200 response with the exposition, in the format `accept` prefers.
    public func scrape(accept: String? = nil) async -> HTTPResponse {
        let started = ContinuousClock.now
        let snapshot = await collect()
        // About 4 KiB per probe (a latency histogram is ~40 lines) plus the agent's own series,
        // and at least one line of ~128 bytes per exported key.
        let keyLines = snapshot.probes.reduce(0) { $0 + min($1.metrics.aggregate?.entries.count ?? 0, maxSeriesPerProbe) }
        let capacity = 8_192 + snapshot.probes.count * 4_096 + keyLines * 128
        switch Self.format(accept: accept) {
        case .text:
            var writer = ExpositionWriter(capacity: capacity)
            snapshot.render(into: &writer, scrapeStarted: started)
            return HTTPResponse(status: .ok, headers: ["Content-Type": Self.contentType], body: writer.bytes)
        case .protobuf:
            var writer = ProtobufExpositionWriter(capacity: capacity / 4)
            snapshot.render(into: &writer, scrapeStarted: started)
            return HTTPResponse(status: .ok, headers: ["Content-Type": ProtobufExpositionWriter.contentType], body: writer.finish())
        }
    }

    /// The format an `Accept` header asks for: protobuf when it accepts
    /// `application/vnd.google.protobuf` with `proto=io.prometheus.client.MetricFamily` and
    /// `encoding=delimited` at a higher quality than the text format (`text/plain`,
    /// `text/*` or `*/*`), or when it accepts only protobuf; the text format otherwise
    /// (absent header, `*/*`, a tie, or neither acceptable: scrapers that ask for nothing
    /// we have still get text, as before).
    public static func format(accept: String?) -> Format {
        guard let accept else { return .text }
        var protobuf = 0.0, text = 0.0, textSpecificity = 0
        for range in accept.split(separator: ",") {
            var parts = range.split(separator: ";").map { $0.trimmingCharacters(in: .whitespaces) }
            guard !parts.isEmpty else { continue }
            let media = parts.removeFirst().lowercased()
            var q = 1.0, proto: String?, encoding: String?, valid = true
            for parameter in parts {
                let pair = parameter.split(separator: "=", maxSplits: 1).map { $0.trimmingCharacters(in: .whitespaces) }
                guard pair.count == 2 else { continue }
                switch pair[0].lowercased() {
                case "q":
                    if let value = Double(pair[1]), value >= 0, value <= 1 { q = value } else { valid = false }
                case "proto": proto = pair[1]
                case "encoding": encoding = pair[1].lowercased()
                default: break
                }
            }
            guard valid else { continue }
            switch media {
            case "application/vnd.google.protobuf":
                if proto == "io.prometheus.client.MetricFamily", encoding == "delimited" { protobuf = max(protobuf, q) }
            case "text/plain", "text/*", "*/*":
                // The most specific range sets the quality (RFC 9110 §12.5.1).
                let specificity = media == "text/plain" ? 3 : media == "text/*" ? 2 : 1
                if specificity > textSpecificity || (specificity == textSpecificity && q > text) {
                    text = q
                    textSpecificity = specificity
                }
            default: break
            }
        }
        return protobuf > 0 && protobuf > text ? .protobuf : .text
    }

    /// Reads everything a scrape exposes.
    public func collect() async -> MetricsSnapshot {
        // Stack parts are folded out of the key series (no frames needed).
        let measured = await probes.allMetrics(topProcesses: 0, symbolizingStacks: false)
        let listed = await probes.list()
        let attempts = await probes.attemptCounts
        let report = await capabilities.current

        // The states a probe can be in today are always exposed, so their series never vanish.
        var states = Dictionary(uniqueKeysWithValues: ProbeState.allCases.map { ($0.rawValue, 0) })
        for probe in listed { states[probe.state.rawValue, default: 0] += 1 }
        var capabilityValues: [(name: String, supported: Bool)] = []
        if let report {
            for result in report.mechanisms + report.features {
                capabilityValues.append((result.name, result.status == .supported))
            }
        }
        return MetricsSnapshot(
            probes: measured.map { probe, metrics in .init(metrics: metrics, userLabels: probe.spec.labels ?? [:], budget: probe.cost) },
            probesByState: states.sorted { $0.key < $1.key }.map { (state: $0.key, count: $0.value) },
            capabilities: capabilityValues,
            attachAttempts: attempts.sorted { $0.key < $1.key }.map { key, count in
                let parts = key.split(separator: "|", maxSplits: 1, omittingEmptySubsequences: false)
                return (mechanism: String(parts[0]), outcome: parts.count > 1 ? String(parts[1]) : "", count: count)
            },
            httpRequests: requests?.snapshot() ?? HTTPRequestCounts(),
            stateSaveFailures: stateTracked ? probes.stateSaveFailures : nil,
            process: ProcessStats.current(),
            budgets: probes.budgets.flatMap { b in b.everTracked ? (b.agentCPUPercent, b.windows.count, b.windows.time) : nil },
            build: build,
            maxSeriesPerProbe: maxSeriesPerProbe)
    }
}
