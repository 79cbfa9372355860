import ArgumentParser
import Foundation
import TraceAPI
import TraceCore

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

    /// PUTs each spec; the agent's `Probe-Outcome` header says whether it was created,
    /// left unchanged or replaced.
    static func apply(node: Node, specs: [ProbeSpec], bodies: [Data], call: Call) async -> [Row] {
        let names = specs.map { $0.name! }
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
                let change = reply.headers[AgentAPI.outcomeHeader.lowercased()] ?? (reply.status == 201 ? "created" : "updated")
                let active = probe.state == .active
                rows.append(Row(node: node.label, probe: name, mechanism: probe.mechanism?.rawValue ?? "-",
                                state: active ? change : probe.state.rawValue, error: active ? "" : firstFailure(probe.attempts) ?? "", ok: active))
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
            let active = probe.state == .active
            return Row(node: node.label, probe: probe.name, mechanism: probe.mechanism?.rawValue ?? "-", state: probe.state.rawValue,
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
            "first failure: " + describeAttempt(mechanism: $0.flavour.rawValue, outcome: $0.outcome.rawValue, errno: $0.errno?.name,
                                                stage: $0.stage?.rawValue, message: $0.message)
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
