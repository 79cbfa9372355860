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
        @Option(help: ArgumentHelp("File with one agent base URL per line (http://10.0.0.5:9480); # starts a comment.", valueName: "file"))
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

/// The agents file: one base URL per line, `#` comments, blank lines ignored.
enum AgentList {
    static func load(_ path: String) throws -> [URL] {
        guard let data = FileManager.default.contents(atPath: path) else {
            throw FleetError("agents file \(path) \(FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist")")
        }
        return try parse(String(decoding: data, as: UTF8.self), file: path)
    }

    static func parse(_ text: String, file: String) throws -> [URL] {
        var urls: [URL] = []
        var seen: [String: Int] = [:]
        for (offset, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = offset + 1
            let entry = (raw.firstIndex(of: "#").map { raw[..<$0] } ?? raw[...]).trimmingCharacters(in: .whitespaces)
            if entry.isEmpty { continue }
            var text = entry
            while text.hasSuffix("/") { text.removeLast() }
            guard let url = URL(string: text), let scheme = url.scheme, scheme == "http" || scheme == "https",
                  let host = url.host, !host.isEmpty, url.query == nil, url.fragment == nil, url.user == nil else {
                throw FleetError("agents file \(file) line \(line): '\(entry)' is not an agent base URL (e.g. http://10.0.0.5:9480 or https://node-1:9480)")
            }
            if let first = seen[url.absoluteString] {
                throw FleetError("agents file \(file) line \(line): \(url.absoluteString) is already listed on line \(first)")
            }
            seen[url.absoluteString] = line
            urls.append(url)
        }
        guard !urls.isEmpty else { throw FleetError("agents file \(file) lists no agents") }
        return urls
    }

    static func isLoopback(_ url: URL) -> Bool {
        guard let host = url.host?.lowercased() else { return false }
        return host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]"
    }
}

/// Runs one job per agent, at most `concurrency` at once, within one deadline, and
/// collects the table rows.
struct FleetRunner: Sendable {
    struct Node: Sendable {
        var label: String
        var client: AgentClient
    }

    struct Row: Sendable {
        var node: String
        var probe: String
        var mechanism: String
        var state: String
        var error: String
        var ok: Bool
    }

    /// A request's end: an HTTP answer, or why there was none (after the retries).
    enum Outcome {
        case reply(AgentClient.Reply)
        case unreachable(String)
    }

    /// One request with retries; see ``FleetRunner/call(_:_:_:body:)``.
    typealias Call = @Sendable (_ method: String, _ path: String, _ body: Data?) async -> Outcome

    let nodes: [Node]
    let retries: Int
    let concurrency: Int
    let deadline: ContinuousClock.Instant
    let deadlineSeconds: Double

    /// First retry after this; doubled for each further one.
    static let backoff: Duration = .milliseconds(200)

    /// Runs `job` for every node; rows come back in node order. A job still running a
    /// second past the deadline is cancelled (its requests fail at once).
    func run(job: @escaping @Sendable (Node, Call) async -> [Row]) async -> [[Row]] {
        var results = [[Row]](repeating: [], count: nodes.count)
        await withTaskGroup(of: (Int, [Row])?.self) { group in
            let deadline = self.deadline
            group.addTask {
                try? await Task.sleep(until: deadline + .seconds(1), clock: .continuous)
                return nil
            }
            var next = 0
            func start(_ i: Int) {
                let node = nodes[i]
                group.addTask { (i, await job(node, { method, path, body in await self.call(node, method, path, body: body) })) }
            }
            while next < min(concurrency, nodes.count) { start(next); next += 1 }
            var pending = nodes.count
            while pending > 0, let result = await group.next() {
                guard let (i, rows) = result else {
                    group.cancelAll()  // the watchdog: stop what still runs
                    continue
                }
                results[i] = rows
                pending -= 1
                if next < nodes.count { start(next); next += 1 }
            }
            group.cancelAll()
        }
        return results
    }

    /// One request, retried on no answer, 5xx and 429 with exponential backoff, each try
    /// bounded by what is left of the deadline.
    func call(_ node: Node, _ method: String, _ path: String, body: Data?) async -> Outcome {
        var attempt = 0
        var last = "no attempt made"
        while true {
            let left = deadline - ContinuousClock.now
            if Task.isCancelled || left <= .zero {
                return .unreachable("deadline of \(Self.seconds(deadlineSeconds)) exceeded" + (attempt > 0 ? " (last: \(last))" : ""))
            }
            let retryable: Bool
            do {
                let reply = try await node.client.exchange(method, path, body: body, timeout: Self.timeInterval(left))
                if reply.status < 500 && reply.status != 429 { return .reply(reply) }
                if attempt >= retries || Task.isCancelled { return .reply(reply) }
                last = "HTTP \(reply.status)"
                retryable = true
            } catch {
                if Task.isCancelled { return .unreachable("deadline of \(Self.seconds(deadlineSeconds)) exceeded (the request was cut off)") }
                last = error.description
                retryable = error.retryable
            }
            guard retryable, attempt < retries else {
                return .unreachable(last + (attempt > 0 ? " (after \(attempt + 1) tries)" : ""))
            }
            let pause = Self.backoff * (1 << attempt)
            if deadline - ContinuousClock.now <= pause + .milliseconds(250) {
                return .unreachable(last + " (after \(attempt + 1) tries; no time left for another before the deadline)")
            }
            try? await Task.sleep(for: pause)
            attempt += 1
        }
    }

    static func timeInterval(_ d: Duration) -> TimeInterval {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    static func seconds(_ s: Double) -> String {
        s == s.rounded() ? "\(Int(s))s" : "\(s)s"
    }

    // MARK: - Jobs

    /// Lists the node's probes (to tell "unchanged" from "replaced"), then PUTs each spec.
    static func apply(node: Node, specs: [ProbeSpec], bodies: [Data], call: Call) async -> [Row] {
        let names = specs.map { $0.name! }
        var before: [String: Int] = [:]
        switch await call("GET", "/v1/probes", nil) {
        case .unreachable(let why):
            return names.map { Row(node: node.label, probe: $0, mechanism: "-", state: "unreachable", error: why, ok: false) }
        case .reply(let reply):
            guard reply.status == 200, let list = try? reply.decode(ProbeList.self) else {
                let why = explain(reply, request: "GET /v1/probes")
                return names.map { Row(node: node.label, probe: $0, mechanism: "-", state: "failed", error: why, ok: false) }
            }
            for probe in list.probes { before[probe.name] = probe.generation }
        }
        var rows: [Row] = []
        for (name, body) in zip(names, bodies) {
            switch await call("PUT", "/v1/probes/\(name)", body) {
            case .unreachable(let why):
                rows.append(Row(node: node.label, probe: name, mechanism: "-", state: "unreachable", error: why, ok: false))
            case .reply(let reply):
                guard reply.status == 200 || reply.status == 201, let probe = try? reply.decode(Probe.self) else {
                    rows.append(Row(node: node.label, probe: name, mechanism: "-", state: "failed",
                                    error: explain(reply, request: "PUT"), ok: false))
                    continue
                }
                let change = reply.status == 201 ? "created" : (before[name] == probe.generation ? "unchanged" : "replaced")
                let active = probe.state == "active"
                rows.append(Row(node: node.label, probe: name, mechanism: probe.mechanism ?? "-",
                                state: active ? change : probe.state, error: active ? "" : firstFailure(probe.attempts) ?? "", ok: active))
            }
        }
        return rows
    }

    /// One list per node; with `desired`, a row per desired probe (missing ones fail).
    static func status(node: Node, desired: [String]?, call: Call) async -> [Row] {
        let expected = desired ?? ["-"]
        let list: ProbeList
        switch await call("GET", "/v1/probes", nil) {
        case .unreachable(let why):
            return expected.map { Row(node: node.label, probe: $0, mechanism: "-", state: "unreachable", error: why, ok: false) }
        case .reply(let reply):
            guard reply.status == 200, let decoded = try? reply.decode(ProbeList.self) else {
                let why = explain(reply, request: "GET /v1/probes")
                return expected.map { Row(node: node.label, probe: $0, mechanism: "-", state: "failed", error: why, ok: false) }
            }
            list = decoded
        }
        let byName = Dictionary(list.probes.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        func row(_ probe: Probe) -> Row {
            let active = probe.state == "active"
            return Row(node: node.label, probe: probe.name, mechanism: probe.mechanism ?? "-", state: probe.state,
                       error: active ? "" : firstFailure(probe.attempts) ?? "not attached", ok: active)
        }
        guard let desired else {
            if list.probes.isEmpty { return [Row(node: node.label, probe: "-", mechanism: "-", state: "no probes", error: "", ok: true)] }
            return list.probes.sorted { $0.name < $1.name }.map(row)
        }
        return desired.map { name in
            byName[name].map(row) ?? Row(node: node.label, probe: name, mechanism: "-", state: "absent", error: "not on this agent", ok: false)
        }
    }

    /// DELETE per probe; 404 means already gone, which is what was asked.
    static func delete(node: Node, names: [String], call: Call) async -> [Row] {
        var rows: [Row] = []
        for name in names {
            switch await call("DELETE", "/v1/probes/\(name)", nil) {
            case .unreachable(let why):
                rows.append(Row(node: node.label, probe: name, mechanism: "-", state: "unreachable", error: why, ok: false))
            case .reply(let reply) where reply.status == 204 || reply.status == 200:
                rows.append(Row(node: node.label, probe: name, mechanism: "-", state: "deleted", error: "", ok: true))
            case .reply(let reply) where reply.status == 404:
                rows.append(Row(node: node.label, probe: name, mechanism: "-", state: "absent", error: "", ok: true))
            case .reply(let reply):
                rows.append(Row(node: node.label, probe: name, mechanism: "-", state: "failed", error: explain(reply, request: "DELETE"), ok: false))
            }
        }
        return rows
    }

    // MARK: - Output

    /// `HTTP 422: detail; first failure: fentry denied EPERM at load: message`.
    static func explain(_ reply: AgentClient.Reply, request: String) -> String {
        var text = "HTTP \(reply.status)"
        guard let problem = reply.problem else {
            let body = reply.text.trimmingCharacters(in: .whitespacesAndNewlines)
            return body.isEmpty ? "\(request): \(text)" : "\(request): \(text): \(body.prefix(200))"
        }
        if let detail = problem["detail"] as? String { text += ": \(detail)" }
        if let attempts = problem["attempts"] as? [[String: Any]],
           let failed = attempts.first(where: { ($0["outcome"] as? String) != "attached" }) {
            text += "; first failure: " + describeAttempt(mechanism: failed["mechanism"] as? String, outcome: failed["outcome"] as? String,
                                                          errno: failed["errno"] as? String, stage: failed["stage"] as? String,
                                                          message: failed["message"] as? String)
        }
        return text
    }

    static func firstFailure(_ attempts: [AttachAttempt]) -> String? {
        attempts.first { $0.outcome != .attached }.map {
            "first failure: " + describeAttempt(mechanism: $0.mechanism, outcome: $0.outcome.rawValue, errno: $0.errno, stage: $0.stage, message: $0.message)
        }
    }

    static func describeAttempt(mechanism: String?, outcome: String?, errno: String?, stage: String?, message: String?) -> String {
        var text = "\(mechanism ?? "?") \(outcome ?? "?")"
        if let errno { text += " \(errno)" }
        if let stage { text += " at \(stage)" }
        if let message, !message.isEmpty { text += ": \(message)" }
        return text.replacingOccurrences(of: "\n", with: " ")
    }

    /// Prints the table (stdout) and a summary (stderr); exits 1 when any row failed.
    static func finish(_ verb: String, rows: [[Row]]) throws {
        let all = rows.flatMap { $0 }
        print(TextTable.render(header: ["NODE", "PROBE", "MECHANISM", "STATE", "ERROR"],
                               rows: all.map { [$0.node, $0.probe, $0.mechanism, $0.state, $0.error.isEmpty ? "-" : $0.error] }))
        let failedNodes = rows.filter { $0.contains { !$0.ok } }.count
        let summary = "fleet \(verb): \(rows.count - failedNodes) of \(rows.count) agent\(rows.count == 1 ? "" : "s") ok"
            + (failedNodes > 0 ? ", \(failedNodes) failed" : "")
        FileHandle.standardError.write(Data((summary + "\n").utf8))
        if failedNodes > 0 { throw ExitCode.failure }
    }
}
