import ArgumentParser
import Foundation
import TraceAPI
import TraceCore

/// `traceplane fleet apply|status|delete`: one probe set, many agents.
struct Fleet: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Apply one probe set to many agents, check it, or delete it.",
        discussion: """
            Every agent gets the same requests concurrently (PUT, GET or DELETE per probe), \
            each retried on connection errors, 5xx and 429 within one overall deadline. \
            The table shows, per agent and probe, the mechanism that agent chose. \
            The exit status is 1 when any agent failed.
            """,
        subcommands: [Apply.self, Status.self, Delete.self])

    struct Options: ParsableArguments {
        @Option(help: ArgumentHelp("File with one agent base URL per line (http://10.0.0.5:9480); # starts a comment. - reads standard input; a pipe or <(command) works too.", valueName: "file"))
        var agents: String

        @Option(name: .customLong("token-file"),
                help: ArgumentHelp("File holding the admin token, sent to every agent as Authorization: Bearer.", valueName: "file"))
        var tokenFile: String?

        @Option(help: ArgumentHelp("PEM file of the CA that signed the agents' certificates (https agents; uses curl).", valueName: "file"))
        var cacert: String?

        @Option(help: "Seconds for the whole run; what is not done by then fails.")
        var deadline: Double = 30

        @Option(help: "Retries per request after a connection error, a 5xx or a 429, with exponential backoff.")
        var retries: Int = 2

        @Option(help: "Most agents talked to at once (each gets one request at a time).")
        var concurrency: Int = 32

        func validate() throws {
            guard deadline > 0, deadline <= 86_400 else { throw ValidationError("--deadline must be from 0 to 86400 seconds") }
            guard (0...10).contains(retries) else { throw ValidationError("--retries must be from 0 to 10") }
            guard (1...1024).contains(concurrency) else { throw ValidationError("--concurrency must be from 1 to 1024") }
        }

        /// Reads the agent list, the token and the CA file; makes no request.
        func runner() throws -> FleetRunner {
            let urls = try AgentList.load(agents)
            var token: String?
            if let tokenFile {
                token = String(decoding: try AccessTokens.read(file: tokenFile), as: UTF8.self)
                if AccessTokens.isExposed(file: tokenFile) {
                    warn("token file \(tokenFile) can be read by other users; chmod 600 it")
                }
                let cleartext = urls.filter { $0.scheme == "http" && !AgentList.isLoopback($0) }
                if !cleartext.isEmpty {
                    warn("the token goes in clear text to \(cleartext.count) agent\(cleartext.count == 1 ? "" : "s") over http (e.g. \(cleartext[0].absoluteString)); serve them with --tls-cert and use https")
                }
            }
            if let cacert {
                guard FileManager.default.isReadableFile(atPath: cacert) else { throw FleetError("--cacert \(cacert) cannot be read") }
            }
            let nodes = urls.map { FleetRunner.Node(label: $0.absoluteString, client: AgentClient(base: $0, token: token, caFile: cacert)) }
            return FleetRunner(nodes: nodes, retries: retries, concurrency: concurrency,
                               deadline: ContinuousClock.now + .milliseconds(Int(deadline * 1000)), deadlineSeconds: deadline)
        }
    }

    struct Apply: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "PUT every probe of a YAML probe file to every agent.",
            discussion: "Idempotent: a probe an agent already has with the same spec stays as it is (STATE unchanged); another spec replaces it.")

        @Option(name: [.customShort("f"), .customLong("file")], help: ArgumentHelp("YAML probe file (a list of probe specs).", valueName: "probes.yaml"))
        var file: String

        @OptionGroup var options: Options

        func run() async throws {
            let specs = try ProbeFile.load(file)
            guard !specs.isEmpty else { throw FleetError("probe file \(file) holds no probes") }
            let bodies = try specs.map { try JSONEncoder().encode($0) }
            let runner = try options.runner()
            let rows = await runner.run { node, call in
                await FleetRunner.apply(node: node, specs: specs, bodies: bodies, call: call)
            }
            try FleetRunner.finish("apply", rows: rows)
        }
    }

    struct Status: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show each agent's probes; with -f, check that every probe of the file is there and active.")

        @Option(name: [.customShort("f"), .customLong("file")], help: ArgumentHelp("YAML probe file: report these probes only, and fail when one is missing.", valueName: "probes.yaml"))
        var file: String?

        @OptionGroup var options: Options

        func run() async throws {
            let names = try file.map { try ProbeFile.load($0).map { $0.name! } }
            let runner = try options.runner()
            let rows = await runner.run { node, call in
                await FleetRunner.status(node: node, desired: names, call: call)
            }
            try FleetRunner.finish("status", rows: rows)
        }
    }

    struct Delete: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "DELETE every probe of a YAML probe file from every agent (already gone counts as done).")

        @Option(name: [.customShort("f"), .customLong("file")], help: ArgumentHelp("YAML probe file (a list of probe specs).", valueName: "probes.yaml"))
        var file: String

        @OptionGroup var options: Options

        func run() async throws {
            let names = try ProbeFile.load(file).map { $0.name! }
            guard !names.isEmpty else { throw FleetError("probe file \(file) holds no probes") }
            let runner = try options.runner()
            let rows = await runner.run { node, call in
                await FleetRunner.delete(node: node, names: names, call: call)
            }
            try FleetRunner.finish("delete", rows: rows)
        }
    }
}

/// A fleet input that cannot be used (exit status 1, no usage text: the flags were fine).
struct FleetError: Error, CustomStringConvertible {
    var description: String
    init(_ description: String) { self.description = description }
}

func warn(_ message: String) {
    FileHandle.standardError.write(Data("warning: \(message)\n".utf8))
}
