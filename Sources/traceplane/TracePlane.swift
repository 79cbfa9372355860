import ArgumentParser
import Foundation
import Logging
import TraceCore

@main
struct TracePlane: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "traceplane",
        abstract: "A Linux eBPF tracing agent with an HTTP/JSON control plane.",
        subcommands: [Serve.self, Cleanup.self, Capabilities.self, ProbeCommand.self, Trace.self, SelfTest.self, Fleet.self, BenchHook.self, BenchSymbolize.self])
}

/// Options shared by commands that touch the kernel.
struct KernelOptions: ParsableArguments {
    @Option(name: .customLong("disable-mechanism"),
            help: ArgumentHelp("Switch a mechanism off agent-wide (repeatable): fentry, fexit, kprobe, … (kfunc/kretfunc are aliases).", valueName: "mechanism"))
    var disabledMechanisms: [String] = []

    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error or critical.")
    var logLevel: String = "notice"

    func disabled() throws -> Set<Mechanism> {
        var set = Set<Mechanism>()
        for name in disabledMechanisms {
            guard let m = Mechanism(name: name) else {
                throw ValidationError("unknown mechanism '\(name)'; known: \(Mechanism.allCases.map(\.rawValue).joined(separator: ", ")), kfunc, kretfunc")
            }
            set.insert(m)
        }
        return set
    }

    func bootstrapLogging() throws {
        guard let level = Logger.Level(rawValue: logLevel) else {
            throw ValidationError("unknown log level '\(logLevel)'")
        }
        LoggingSystem.bootstrap { label in
            var handler = StreamLogHandler.standardError(label: label)
            handler.logLevel = level
            return handler
        }
    }
}

struct Capabilities: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Probe what tracing this kernel really supports, by loading real BPF programs.")

    @Flag(help: "Print the same JSON report that GET /v1/capabilities serves.")
    var json = false

    @OptionGroup var kernel: KernelOptions

    func run() throws {
        try kernel.bootstrapLogging()
        let prober = CapabilityProber(backend: LibBPFBackend(), disabled: try kernel.disabled())
        let report = prober.probe()
        Reaper.shared.drain()
        if json {
            print(String(decoding: try ReportJSON.encode(report), as: UTF8.self))
        } else {
            print(CapabilityTable.render(report))
        }
    }
}
