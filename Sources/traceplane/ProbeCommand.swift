import ArgumentParser
import Foundation
import TraceAPI
import TraceCore
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `traceplane probe add|list|show|stacks|events|rm` against a running agent.
struct ProbeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe",
        abstract: "Manage probes on a running agent.",
        subcommands: [Add.self, List.self, Show.self, Stacks.self, Events.self, Remove.self])

    struct Connection: ParsableArguments {
        @Option(help: "The agent's base URL.")
        var agent: String = "http://127.0.0.1:9480"

        func client() throws -> AgentClient {
            guard let url = URL(string: agent), url.scheme == "http" || url.scheme == "https", url.host != nil else {
                throw ValidationError("invalid --agent '\(agent)': use e.g. http://127.0.0.1:9480")
            }
            return AgentClient(base: url)
        }
    }

    /// `--by`, `--value`, `--histogram`, `--max-keys`, `--no-by-process`: the spec's
    /// `aggregate`. Only the form is checked here; the agent checks names and bounds
    /// against the target and answers with field errors.
    struct AggregateOptions: ParsableArguments {
        @Option(help: ArgumentHelp("Keys, comma-separated (at most 3): pid, tid, comm, thread, cgroup, cpu, errno, ret, arg:NAME, argN, field:NAME, kstack, ustack.",
                                   valueName: "keys"))
        var by: String?
        @Option(help: "What each key's histogram measures: latency, ret, arg:NAME, argN, field:NAME or none.")
        var value: String?
        @Option(help: ArgumentHelp("How the value is bucketed: log2 (the default) or linear:MIN:MAX:STEP.", valueName: "kind"))
        var histogram: String?
        @Option(help: "Entries of the key table (default 1024, at most 65536).")
        var maxKeys: Int?
        @Flag(help: "Do not keep the top-process table (by_process).")
        var noByProcess = false

        /// Nil when no option was given (a probe without a key table).
        func spec() throws -> AggregateSpec? {
            guard by != nil || value != nil || histogram != nil || maxKeys != nil || noByProcess else { return nil }
            return AggregateSpec(by: try by.map(Self.keys), value: value, histogram: try histogram.map(Self.histogram),
                                 maxKeys: maxKeys, byProcess: noByProcess ? false : nil)
        }

        /// `comm,arg:fd` as its keys; the empty string is no key at all (one entry for every call).
        static func keys(_ text: String) throws -> [String] {
            if text.isEmpty { return [] }
            let keys = text.split(separator: ",", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            guard !keys.contains(where: \.isEmpty) else {
                throw ValidationError("invalid --by '\(text)': an empty key; write keys separated by commas, e.g. comm,arg:fd")
            }
            return keys
        }

        /// `log2` or `linear:MIN:MAX:STEP` (64-bit integers, MIN may be negative).
        static func histogram(_ text: String) throws -> HistogramSpec {
            if text == "log2" { return HistogramSpec(kind: "log2") }
            let parts = text.split(separator: ":", omittingEmptySubsequences: false)
            guard parts.count == 4, parts[0] == "linear", let min = Int64(parts[1]), let max = Int64(parts[2]), let step = Int64(parts[3]) else {
                throw ValidationError("invalid --histogram '\(text)': use log2 or linear:MIN:MAX:STEP with integers, e.g. linear:0:4096:256")
            }
            return HistogramSpec(kind: "linear", min: min, max: max, step: step)
        }
    }

    /// `--events`, `--events-min-latency`, `--events-max-per-second`, `--events-buffer-kib`:
    /// the spec's `events`. The agent checks the bounds and answers with field errors.
    struct EventsOptions: ParsableArguments {
        @Flag(help: "Keep calls one by one for probe events, with the agent's defaults for what is not given.")
        var events = false
        @Option(help: ArgumentHelp("Only calls at least this slow are events: 200ns, 500us, 1ms, 1.5s (default 0: every call).", valueName: "duration"))
        var eventsMinLatency: String?
        @Option(help: ArgumentHelp("Events per second at most, for the whole probe (default \(EventsSpec.defaultMaxPerSecond)).", valueName: "n"))
        var eventsMaxPerSecond: Int?
        @Option(help: ArgumentHelp("Size of the probe's ring buffer in KiB, a power of two (default \(EventsSpec.defaultBufferKiB)).", valueName: "kib"))
        var eventsBufferKib: Int?

        /// Nil when no option was given (a probe without events).
        func spec() throws -> EventsSpec? {
            guard events || eventsMinLatency != nil || eventsMaxPerSecond != nil || eventsBufferKib != nil else { return nil }
            return EventsSpec(minLatencyNs: try eventsMinLatency.map { try DurationParser.nanoseconds($0, option: "--events-min-latency") },
                              maxPerSecond: eventsMaxPerSecond, bufferKiB: eventsBufferKib)
        }
    }

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Create or replace a probe (PUT /v1/probes/NAME).")

        @Argument(help: "Probe name (^[a-z0-9][a-z0-9_.-]{0,62}$).")
        var name: String
        @Argument(help: "syscall:NAME, function:NAME, tracepoint:CATEGORY:EVENT, uprobe:/PATH:SYMBOL or profile[:HZ].")
        var target: String
        @Option(parsing: .upToNextOption, help: "Allowed mechanisms in preference order.")
        var mechanism: [String] = []
        @Option(help: "Only count this process id.") var pid: Int?
        @Option(help: "Only count this command name.") var comm: String?
        @Option(help: ArgumentHelp("Only count calls from this cgroup v2 (path under the cgroup2 mount) and its descendants.", valueName: "path")) var cgroup: String?
        @Option(help: ArgumentHelp("Only count calls from this container (docker, containerd, cri-o, podman id, or a unique prefix of 12+ digits).", valueName: "id")) var containerId: String?
        @Option(help: ArgumentHelp("Only count calls from this Kubernetes pod (its UID), containers started later included.", valueName: "uid")) var podUid: String?
        @Option(help: ArgumentHelp("Only count calls at least this slow: 200ns, 500us, 1ms, 1.5s.", valueName: "duration")) var minLatency: String?
        @Option(help: "Detach after this many seconds unless renewed.") var ttl: Int?
        @Option(parsing: .upToNextOption, help: "Labels as key=value.") var label: [String] = []
        @OptionGroup(title: "Keys and values (counted in the kernel)") var aggregate: AggregateOptions
        @OptionGroup(title: "Events (calls one by one, for probe events)") var events: EventsOptions
        @Option(help: ArgumentHelp("Budget: percent of one CPU the probe may cost (sampled 1 in N, then suspended, past it).", valueName: "percent"))
        var maxCpuPercent: Double?
        @Option(help: ArgumentHelp("Budget: calls (events) per second past which the probe is suspended.", valueName: "n"))
        var maxEventsPerSecond: Int?
        @OptionGroup var connection: Connection

        /// The spec this command line asks for.
        func spec() throws -> ProbeSpec {
            var labels: [String: String] = [:]
            for pair in label {
                guard let eq = pair.firstIndex(of: "=") else { throw ValidationError("labels are key=value, got '\(pair)'") }
                labels[String(pair[..<eq])] = String(pair[pair.index(after: eq)...])
            }
            let minLatencyNs = try minLatency.map { try DurationParser.nanoseconds($0, option: "--min-latency") }
            let filter = pid == nil && comm == nil && minLatencyNs == nil && cgroup == nil && containerId == nil && podUid == nil ? nil
                : ProbeFilter(pid: pid, comm: comm, minLatencyNs: minLatencyNs, cgroup: cgroup, containerID: containerId, podUID: podUid)
            return ProbeSpec(name: name, target: try TargetParser.parse(target), mechanisms: mechanism.isEmpty ? nil : mechanism,
                             filter: filter, ttlSeconds: ttl, labels: labels.isEmpty ? nil : labels, aggregate: try aggregate.spec(),
                             events: try events.spec(),
                             budget: maxCpuPercent == nil && maxEventsPerSecond == nil ? nil
                                 : BudgetSpec(maxCPUPercent: maxCpuPercent, maxEventsPerSecond: maxEventsPerSecond))
        }

        func run() async throws {
            let spec = try spec()
            let reply = try await connection.client().send("PUT", "/v1/probes/\(name)", body: try JSONEncoder().encode(spec))
            let probe = try reply.decode(Probe.self)
            let outcome = reply.headers[AgentAPI.outcomeHeader.lowercased()] ?? (reply.status == 201 ? "created" : "updated")
            print("\(outcome) \(probe.name): \(probe.spec.target.label) via \(probe.mechanism?.rawValue ?? "nothing") (generation \(probe.generation))")
            if let reason = probe.stateReason { print("  \(probe.state.rawValue): \(reason)") }
            for attempt in probe.attempts where attempt.outcome != .attached {
                print("  tried \(attempt.flavour.rawValue): \(attempt.outcome.rawValue)\(attempt.errno.map { " \($0.name)" } ?? "") — \(attempt.message)")
            }
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List probes.")
        @Flag(help: "Print the JSON the API returns.") var json = false
        @OptionGroup var connection: Connection

        func run() async throws {
            let reply = try await connection.client().send("GET", "/v1/probes")
            if json { print(reply.text); return }
            let list = try reply.decode(ProbeList.self)
            let rows = list.probes.map { p in
                [p.name, p.spec.target.label, p.mechanism?.rawValue ?? "-", p.state.rawValue, "\(p.generation)",
                 p.expiresAt.map(ReportJSON.rfc3339) ?? "-"]
            }
            print(TextTable.render(header: ["NAME", "TARGET", "MECHANISM", "STATE", "GEN", "EXPIRES"], rows: rows))
        }
    }

    struct Show: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Show a probe's metrics, with a funclatency-style histogram.",
            discussion: "A probe with keys also gets one histogram of its value per key, for the keys with the most calls (--top).")
        @Argument var name: String
        @Option(help: "Keys to show, those with the most calls (1 to \(AggregateSpec.maxMaxKeys); sent as ?top=N).") var top = 10
        @Flag(help: "Print the JSON the API returns.") var json = false
        @OptionGroup var connection: Connection

        func validate() throws {
            guard (1...AggregateSpec.maxMaxKeys).contains(top) else {
                throw ValidationError("--top must be from 1 to \(AggregateSpec.maxMaxKeys), not \(top)")
            }
        }

        /// The request path, with the query.
        var path: String { "/v1/probes/\(name)/metrics?top=\(top)" }

        func run() async throws {
            let reply = try await connection.client().send("GET", path)
            if json { print(reply.text); return }
            print(HistogramText.render(try reply.decode(ProbeMetrics.self)), terminator: "")
        }
    }

    struct Stacks: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a stack-keyed probe's stacks as folded lines, or write its flame graph.",
            discussion: "The probe needs kstack or ustack in aggregate.by (a profile target has both). Folded lines are flamegraph.pl's input.")
        @Argument var name: String
        @Option(help: "Write the flame graph (a self-contained SVG) to this file instead of printing folded lines.") var svg: String?
        @Flag(help: "Print the JSON tree (self and total counts per frame) instead.") var json = false
        @OptionGroup var connection: Connection

        /// The request path, with the query.
        var path: String { "/v1/probes/\(name)/stacks?format=\(svg != nil ? "svg" : json ? "json" : "folded")" }

        func run() async throws {
            let reply = try await connection.client().send("GET", path)
            if let svg {
                try reply.body.write(to: URL(fileURLWithPath: svg))
                FileHandle.standardError.write(Data("wrote the flame graph of \(name) to \(svg)\n".utf8))
                return
            }
            print(reply.text, terminator: "")
        }
    }

    struct Remove: AsyncParsableCommand {
        static let configuration = CommandConfiguration(commandName: "rm", abstract: "Delete probes.")
        @Argument var names: [String]
        @OptionGroup var connection: Connection

        func run() async throws {
            let client = try connection.client()
            for name in names {
                _ = try await client.send("DELETE", "/v1/probes/\(name)")
                print("deleted \(name)")
            }
        }
    }
}

/// A thin client of the agent's API. Problems become readable errors.
struct AgentClient: Sendable {
    let base: URL
    /// Sent as `Authorization: Bearer <token>` when set.
    var token: String?
    /// PEM file of the CA that signed the agent's certificate (https only). On Linux
    /// URLSession cannot take a CA file, so these requests go through curl
    /// (``CurlTransport``); everything else uses URLSession.
    var caFile: String?

    init(base: URL, token: String? = nil, caFile: String? = nil) {
        self.base = base
        self.token = token
        self.caFile = caFile
    }

    struct Reply {
        var status: Int
        /// Response headers, by lowercased name.
        var headers: [String: String] = [:]
        var body: Data
        var text: String { String(decoding: body, as: UTF8.self) }

        func decode<T: Decodable>(_ type: T.Type) throws -> T {
            return try ReportJSON.decoder().decode(T.self, from: body)
        }

        /// The problem+json body, if it is one (`detail`, `attempts`, `errors`).
        var problem: [String: Any]? { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] }
    }

    struct Failure: Error, CustomStringConvertible {
        var description: String
    }

    /// No HTTP answer at all (refused, timed out, TLS failed, cancelled).
    struct TransportError: Error, CustomStringConvertible {
        var description: String
        /// Worth another try: the connection failed or dropped, or timed out.
        var retryable: Bool
    }

    /// One request; any HTTP status is a reply, only a missing answer throws.
    func exchange(_ method: String, _ path: String, body: Data? = nil, timeout: TimeInterval = 30) async throws(TransportError) -> Reply {
        let url = Self.url(base, path)
        if let caFile, url.scheme == "https" {
            return try await CurlTransport.exchange(method, url, body: body, token: token, caFile: caFile, timeout: timeout)
        }
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.timeoutInterval = timeout
        if let token { request.setValue("Bearer \(token)", forHTTPHeaderField: "Authorization") }
        if let body {
            request.httpBody = body
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        do {
            let (data, response) = try await URLSession.shared.data(for: request)
            var headers: [String: String] = [:]
            for (name, value) in (response as? HTTPURLResponse)?.allHeaderFields ?? [:] {
                if let name = name as? String, let value = value as? String { headers[name.lowercased()] = value }
            }
            return Reply(status: (response as? HTTPURLResponse)?.statusCode ?? 0, headers: headers, body: data)
        } catch {
            throw Self.transportError(error, timeout: timeout)
        }
    }

    /// `path` (with its query, if any) under `base`. The query is kept as written, not
    /// percent-encoded as part of the path.
    static func url(_ base: URL, _ path: String) -> URL {
        let (route, query) = path.firstIndex(of: "?").map { (path[..<$0], String(path[path.index(after: $0)...])) } ?? (path[...], nil)
        let url = base.appendingPathComponent(String(route.dropFirst()))
        guard let query, var components = URLComponents(url: url, resolvingAgainstBaseURL: false) else { return url }
        components.percentEncodedQuery = query
        return components.url ?? url
    }

    func send(_ method: String, _ path: String, body: Data? = nil) async throws -> Reply {
        let reply: Reply
        do {
            reply = try await exchange(method, path, body: body)
        } catch {
            throw Failure(description: "cannot reach the agent at \(base.absoluteString): \(error.description)")
        }
        guard (200..<300).contains(reply.status) else { throw Self.failure(method, path, reply) }
        return reply
    }

    /// The readable error of a non-2xx reply: the status, and the problem's detail,
    /// attempts and field errors when it has them.
    static func failure(_ method: String, _ path: String, _ reply: Reply) -> Failure {
        var message = "\(method) \(path): HTTP \(reply.status)"
        if let problem = reply.problem {
            if let detail = problem["detail"] as? String { message += ": \(detail)" }
            for attempt in problem["attempts"] as? [[String: Any]] ?? [] {
                message += "\n  \(attempt["mechanism"] ?? "?"): \(attempt["outcome"] ?? "?") \(attempt["errno"] as? String ?? "") — \(attempt["message"] ?? "")"
            }
            for error in problem["errors"] as? [[String: Any]] ?? [] {
                message += "\n  \(error["field"] ?? "?"): \(error["message"] ?? "")"
            }
        }
        return Failure(description: message)
    }
}

enum TextTable {
    static func render(header: [String], rows: [[String]]) -> String {
        var widths = header.map(\.count)
        for row in rows { for (i, cell) in row.enumerated() { widths[i] = max(widths[i], cell.count) } }
        func line(_ row: [String]) -> String {
            row.enumerated().map { i, c in i == row.count - 1 ? c : c.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0) }.joined()
        }
        return ([line(header)] + rows.map(line)).joined(separator: "\n")
    }
}
