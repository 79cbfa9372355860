import ArgumentParser
import Foundation
import TraceCore

/// `traceplane trace syscall:read --duration 5s`: a one-shot local run, no server.
struct Trace: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Trace one target locally for a while and print its aggregates (no server needed).",
        discussion: "TARGET is syscall:NAME, function:NAME, tracepoint:CATEGORY:EVENT or uprobe:/PATH:SYMBOL.")

    @Argument(help: "What to trace, e.g. syscall:read.")
    var target: String

    @Option(help: "How long to trace: 500ms, 5s, 1m.")
    var duration: String = "5s"

    @Option(parsing: .upToNextOption, help: "Allowed mechanisms in preference order (default: the target's chain).")
    var mechanism: [String] = []

    @Option(help: "Only count this process id.")
    var pid: Int?

    @Option(help: "Only count processes with this command name.")
    var comm: String?

    @Flag(help: "Print the metrics as JSON.")
    var json = false

    @OptionGroup var kernel: KernelOptions

    func run() async throws {
        try kernel.bootstrapLogging()
        let seconds = try DurationParser.seconds(duration)
        let spec = ProbeSpec(name: "trace", target: try TargetParser.parse(target),
                             mechanisms: mechanism.isEmpty ? nil : mechanism,
                             filter: pid == nil && comm == nil ? nil : ProbeFilter(pid: pid, comm: comm))
        let metrics = try await TracingCore.run(CoreConfiguration(disabledMechanisms: try kernel.disabled())) { core in
            let probe: Probe
            do throws(ProbeError) {
                probe = try await core.probes.create(spec).0
            } catch {
                FileHandle.standardError.write(Data("traceplane: \(error.detail)\n".utf8))
                for a in error.attempts {
                    FileHandle.standardError.write(Data("  \(a.flavour.rawValue): \(a.outcome.rawValue) at \(a.stage?.rawValue ?? "-") \(a.errno?.name ?? "") — \(a.message)\n".utf8))
                }
                throw ExitCode(error.kind == .invalid ? 2 : 1)
            }
            FileHandle.standardError.write(Data("Tracing \(spec.target.label) via \(probe.mechanism?.rawValue ?? "nothing") for \(duration)… Ctrl-C to stop early.\n".utf8))
            try await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            return try await core.probes.metrics("trace")
        }
        if json {
            print(String(decoding: try ReportJSON.encode(metrics), as: UTF8.self))
        } else {
            print(HistogramText.render(metrics))
        }
    }
}

enum DurationParser {
    static func seconds(_ text: String) throws -> Double {
        let units: [(String, Double)] = [("ms", 0.001), ("s", 1), ("m", 60), ("h", 3600)]
        for (suffix, factor) in units where text.hasSuffix(suffix) {
            if let value = Double(text.dropLast(suffix.count)), value > 0, value * factor <= 86_400 { return value * factor }
        }
        if let value = Double(text), value > 0, value <= 86_400 { return value }
        throw ValidationError("invalid duration '\(text)': use e.g. 500ms, 5s, 2m (at most 24h)")
    }
}

enum TargetParser {
    /// Parses `syscall:read`, `function:vfs_read`, `tracepoint:sched:sched_switch`, `uprobe:/lib/x.so:malloc`.
    static func parse(_ text: String) throws -> ProbeTarget {
        guard let colon = text.firstIndex(of: ":"), let type = TargetType(rawValue: String(text[..<colon])) else {
            throw ValidationError("invalid target '\(text)': use syscall:NAME, function:NAME, tracepoint:CATEGORY:EVENT or uprobe:/PATH:SYMBOL")
        }
        let rest = String(text[text.index(after: colon)...])
        if type == .uprobe {
            guard let last = rest.lastIndex(of: ":") else { throw ValidationError("uprobe targets are uprobe:/PATH:SYMBOL") }
            return ProbeTarget(type: .uprobe, path: String(rest[..<last]), symbol: String(rest[rest.index(after: last)...]))
        }
        return ProbeTarget(type: type, name: rest)
    }
}
