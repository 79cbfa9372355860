import ArgumentParser
import Foundation
import TraceCore

/// `traceplane trace syscall:read --duration 5s`: a one-shot local run, no server.
struct Trace: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Trace one target locally for a while and print its aggregates (no server needed).",
        discussion: "TARGET is syscall:NAME, function:NAME, tracepoint:CATEGORY:EVENT, uprobe:/PATH:SYMBOL, or profile[:HZ] (CPU sampling, 99 Hz by default).")

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

    @Option(name: .customLong("by"), help: ArgumentHelp("Keys to count by, comma-separated (at most 3), as probe add takes them: pid, comm, cgroup, arg:NAME, kstack, ustack, …", valueName: "keys"))
    var by: String?

    @Flag(help: "Print the metrics as JSON.")
    var json = false

    @Option(help: "Write a flame graph of the stacks (kstack/ustack keys; a profile has them by default) to this SVG file.")
    var svg: String?

    @Flag(help: "Print the stacks as folded lines (flamegraph.pl's input) instead of the metrics.")
    var folded = false

    @OptionGroup var kernel: KernelOptions

    func run() async throws {
        try kernel.bootstrapLogging()
        let seconds = try DurationParser.seconds(duration)
        var spec = ProbeSpec(name: "trace", target: try TargetParser.parse(target),
                             mechanisms: mechanism.isEmpty ? nil : mechanism,
                             filter: pid == nil && comm == nil ? nil : ProbeFilter(pid: pid, comm: comm))
        if let by { spec.aggregate = AggregateSpec(by: try ProbeCommand.AggregateOptions.keys(by)) }
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
        if svg != nil || folded {
            guard let aggregate = metrics.aggregate, aggregate.hasStacks else {
                throw ValidationError("--svg and --folded need stack keys: --by kstack or --by ustack (a profile has both)")
            }
            let samples = StackSamples.samples(aggregate)
            if let svg {
                let title = "\(spec.target.label) for \(duration)"
                try Data(FlameGraph.svg(samples, title: title).utf8).write(to: URL(fileURLWithPath: svg))
                FileHandle.standardError.write(Data("wrote \(samples.count) stacks to \(svg)\n".utf8))
            }
            if folded { print(FlameGraph.folded(samples), terminator: "") }
            if !folded && !json { print(HistogramText.render(metrics)) }
            if json { print(String(decoding: try ReportJSON.encode(metrics), as: UTF8.self)) }
            return
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

    /// `200ns`, `500us` (or `500µs`), `1ms`, `1.5s` as whole nanoseconds; `0` needs no unit.
    static func nanoseconds(_ text: String, option: String) throws -> Int {
        func invalid(_ why: String) -> ValidationError {
            ValidationError("invalid \(option) '\(text)': \(why); use e.g. 200ns, 500us, 1ms, 1.5s")
        }
        if text == "0" { return 0 }
        let units: [(String, Int)] = [("ns", 1), ("us", 1_000), ("µs", 1_000), ("μs", 1_000), ("ms", 1_000_000), ("s", 1_000_000_000)]
        guard let (suffix, factor) = units.first(where: { text.hasSuffix($0.0) }) else { throw invalid("no unit") }
        let number = text.dropLast(suffix.count)
        let parts = number.split(separator: ".", maxSplits: 1, omittingEmptySubsequences: false)
        let digits = { (s: Substring) in !s.isEmpty && s.allSatisfy { $0.isASCII && $0.isNumber } }
        guard digits(parts[0]), parts.count == 1 || digits(parts[1]) else { throw invalid("not a number of \(suffix)") }
        // Integer arithmetic: 1.1ms is exactly 1100000 ns.
        let fraction = parts.count == 2 ? String(parts[1]) : ""
        let places = String(factor).count - 1
        guard fraction.count <= places || fraction.dropFirst(places).allSatisfy({ $0 == "0" }) else {
            throw invalid("finer than a nanosecond")
        }
        let padded = (fraction + String(repeating: "0", count: places)).prefix(places)
        guard let whole = Int(parts[0]), let part = Int(padded.isEmpty ? "0" : String(padded)) else { throw invalid("too large") }
        let (scaled, overflow) = whole.multipliedReportingOverflow(by: factor)
        let (total, overflow2) = scaled.addingReportingOverflow(part)
        guard !overflow, !overflow2 else { throw invalid("too large") }
        return total
    }
}

enum TargetParser {
    /// Parses `syscall:read`, `function:vfs_read`, `tracepoint:sched:sched_switch`, `uprobe:/lib/x.so:malloc`,
    /// `profile` or `profile:HZ`.
    static func parse(_ text: String) throws -> ProbeTarget {
        if text == "profile" { return ProbeTarget(type: .profile) }
        if text.hasPrefix("profile:") {
            guard let hz = Int(text.dropFirst(8)) else { throw ValidationError("invalid target '\(text)': use profile or profile:HZ, e.g. profile:99") }
            return ProbeTarget(type: .profile, frequencyHz: hz)
        }
        guard let colon = text.firstIndex(of: ":"), let type = TargetType(rawValue: String(text[..<colon])) else {
            throw ValidationError("invalid target '\(text)': use syscall:NAME, function:NAME, tracepoint:CATEGORY:EVENT, uprobe:/PATH:SYMBOL or profile[:HZ]")
        }
        let rest = String(text[text.index(after: colon)...])
        if type == .uprobe {
            guard let last = rest.lastIndex(of: ":") else { throw ValidationError("uprobe targets are uprobe:/PATH:SYMBOL") }
            return ProbeTarget(type: .uprobe, path: String(rest[..<last]), symbol: String(rest[rest.index(after: last)...]))
        }
        return ProbeTarget(type: type, name: rest)
    }
}
