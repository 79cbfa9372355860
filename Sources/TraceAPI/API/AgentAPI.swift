import Foundation
import TraceCore

/// The agent's HTTP/JSON API (v1) as a router: capabilities, probes, health.
/// Testable in-process; ``HTTPServer`` only wires it to sockets.
public struct AgentAPI: Sendable {
    public let capabilities: CapabilityStore
    public let probes: ProbeManager
    public let metrics: (@Sendable (_ accept: String?) async -> HTTPResponse)?
    /// Extra readiness beyond probed capabilities (e.g. saved probes restored); nil: none.
    public let startupDone: (@Sendable () -> Bool)?

    public init(capabilities: CapabilityStore, probes: ProbeManager, metrics: (@Sendable (_ accept: String?) async -> HTTPResponse)? = nil,
                startupDone: (@Sendable () -> Bool)? = nil) {
        self.capabilities = capabilities
        self.probes = probes
        self.metrics = metrics
        self.startupDone = startupDone
    }

    public func router() -> Router {
        var router = Router()
        let capabilities = self.capabilities, probes = self.probes, startupDone = self.startupDone
        router.get("/healthz") { _, _ in .json(["status": "ok"]) }
        router.get("/readyz") { _, _ in
            guard await capabilities.current != nil else {
                return .problem(Problem.serviceUnavailable(detail: "Capabilities are still being probed."))
            }
            if let startupDone, !startupDone() {
                return .problem(Problem.serviceUnavailable(detail: "Saved probes and the probe file are still being applied."))
            }
            if let stateProblem = probes.stateProblem {
                return .problem(Problem.serviceUnavailable(detail: "Not ready for changes: \(stateProblem)."), headers: ["Retry-After": "1"])
            }
            return .json(["status": "ready"])
        }
        router.get("/v1/capabilities") { _, _ in .json(await capabilities.get()) }
        router.post("/v1/capabilities/refresh", accepting: .any) { _, _ in .json(await capabilities.refresh()) }
        router.get("/v1/probes") { _, _ in .json(ProbeList(probes: await probes.list())) }
        /// Changes wait for start-up: restoring saved probes must not race new ones for the
        /// probe limit, nor be overwritten on disk by them.
        let starting: @Sendable () -> HTTPResponse? = {
            guard let startupDone, !startupDone() else { return nil }
            return .problem(Problem.serviceUnavailable(detail: "The agent is still restoring its saved probes and applying the probe file; retry when /readyz answers 200."),
                            headers: ["Retry-After": "1"])
        }
        router.post("/v1/probes") { request, _ in
            if let busy = starting() { return busy }
            return await Self.write(request) { spec in
                let (probe, created) = try await probes.create(spec)
                return (probe, created ? .created : .ok, [:])
            }
        }
        router.put("/v1/probes/{name}") { request, params in
            if let busy = starting() { return busy }
            return await Self.write(request) { spec in
                let (probe, outcome) = try await probes.put(name: params["name"] ?? "", spec: spec)
                return (probe, outcome == .created ? .created : .ok, [Self.outcomeHeader: outcome.rawValue])
            }
        }
        router.get("/v1/probes/{name}") { _, params in
            do { return .json(try await probes.get(params["name"] ?? "")) } catch { return Self.response(error) }
        }
        router.delete("/v1/probes/{name}") { _, params in
            if let busy = starting() { return busy }
            do {
                try await probes.delete(params["name"] ?? "")
                return .empty()
            } catch {
                return Self.response(error)
            }
        }
        router.get("/v1/probes/{name}/metrics") { request, params in
            var top = 100
            if let text = request.query["top"] {
                guard let n = Int(text), (1...AggregateSpec.maxMaxKeys).contains(n) else {
                    let detail = "top must be an integer from 1 to \(AggregateSpec.maxMaxKeys), not '\(text.prefix(32))'"
                    return .problem(.badRequest(detail: detail, errors: [.object(["field": "top", "message": .string(detail)])]))
                }
                top = n
            }
            do { return .json(try await probes.metrics(params["name"] ?? "").top(top)) } catch { return Self.response(error) }
        }
        router.get("/v1/probes/{name}/stacks") { request, params in
            let format = request.query["format"] ?? "folded"
            guard ["folded", "json", "svg"].contains(format) else {
                let detail = "format must be folded, json or svg, not '\(format.prefix(32))'"
                return .problem(.badRequest(detail: detail, errors: [.object(["field": "format", "message": .string(detail)])]))
            }
            let name = params["name"] ?? ""
            let metrics: ProbeMetrics
            do { metrics = try await probes.metrics(name) } catch { return Self.response(error) }
            guard let aggregate = metrics.aggregate, aggregate.hasStacks else {
                return .problem(Problem(slug: "probe-has-no-stacks", title: "Probe Has No Stacks", status: .conflict,
                                        detail: "probe \(name) is not keyed by a stack: give it aggregate.by with kstack or ustack (a profile target has both by default)"))
            }
            return Self.stacks(aggregate, format: format, title: "\(name): \(metrics.target)")
        }
        router.get("/v1/probes/{name}/events") { request, params in
            await Self.events(request, name: params["name"] ?? "", probes: probes)
        }
        if let metrics {
            router.get("/metrics", { request, _ in await metrics(request.headers["Accept"]) })
        }
        return router
    }

    /// The response header that says how a PUT ended: `created`, `unchanged` or `replaced`.
    public static let outcomeHeader = "Probe-Outcome"

    /// Seconds a client should wait before retrying a 503 or 507 of the probe API.
    static func retryAfter(_ error: ProbeError) -> Int? {
        switch error.kind {
        case .exhausted, .notSaved: 5
        case .unavailable: 1
        default: nil
        }
    }

    /// The problem response for any error of a handler: probe errors with `Retry-After`
    /// where waiting helps.
    static func response(_ error: any Error) -> HTTPResponse {
        guard let error = error as? ProbeError else {
            if let problem = error as? Problem { return .problem(problem) }
            return .problem(Problem.internalError(detail: "\(error)"))
        }
        let headers: HTTPHeaders = retryAfter(error).map { ["Retry-After": String($0)] } ?? [:]
        return .problem(problem(error), headers: headers)
    }

    /// The problem+json for a probe error.
    public static func problem(_ error: ProbeError) -> Problem {
        switch error.kind {
        case .invalid:
            return SpecDecoder.invalid(error.fieldErrors.isEmpty ? [FieldError(field: "(body)", message: error.detail)] : error.fieldErrors)
        case .notFound:
            return Problem(slug: "probe-not-found", title: "Probe Not Found", status: .notFound, detail: error.detail)
        case .conflict:
            return Problem(slug: "probe-conflict", title: "Conflict", status: .conflict, detail: error.detail)
        case .tooMany:
            return Problem(slug: "too-many-probes", title: "Too Many Probes", status: .tooManyRequests, detail: error.detail)
        case .attachFailed:
            return attachFailed(detail: error.detail, attempts: error.attempts)
        case .exhausted:
            return Problem(slug: "agent-resources-exhausted", title: "Agent Out Of Resources", status: .serviceUnavailable,
                           detail: error.detail, extensions: ["attempts": .array(error.attempts.map(attemptJSON))])
        case .notSaved:
            let full = error.errno == .ENOSPC || error.errno == .EDQUOT
            return Problem(slug: "state-not-saved", title: full ? "Insufficient Storage" : "State Not Saved",
                           status: full ? .insufficientStorage : .serviceUnavailable, detail: error.detail,
                           extensions: ["errno": error.errno.map { .string($0.name) } ?? .null])
        case .unavailable:
            return Problem.serviceUnavailable(detail: error.detail)
        }
    }
}

extension AgentAPI {
    /// `GET /v1/probes/{name}/events`: the probe's events as Server-Sent Events, or NDJSON
    /// when the client prefers `application/x-ndjson`. `Last-Event-ID` (or `last_event_id`;
    /// the header wins when both are valid) resumes after that event; `follow=false` ends the
    /// stream once the replay buffer is sent.
    static func events(_ request: HTTPRequest, name: String, probes: ProbeManager) async -> HTTPResponse {
        func bad(_ field: String, _ detail: String) -> HTTPResponse {
            .problem(.badRequest(detail: detail, errors: [.object(["field": .string(field), "message": .string(detail)])]))
        }
        // Each one given is checked: an invalid query beside a valid header is still a 400.
        var ids: [UInt64] = []
        for text in [request.headers["Last-Event-ID"], request.query["last_event_id"]].compactMap({ $0 }) {
            let trimmed = text.trimmingCharacters(in: .whitespaces)
            guard let n = UInt64(trimmed), trimmed.utf8.allSatisfy({ $0 >= 0x30 && $0 <= 0x39 }) else {
                return bad("Last-Event-ID", "Last-Event-ID must be the id of an event (a non-negative integer), not '\(text.prefix(32))'")
            }
            ids.append(n)
        }
        let after = ids.first
        var follow = true
        if let text = request.query["follow"] {
            guard text == "true" || text == "false" else { return bad("follow", "follow must be true or false, not '\(text.prefix(32))'") }
            follow = text == "true"
        }
        let found: (spec: ProbeSpec, events: ProbeEvents?)
        do { found = try await probes.events(name) } catch { return response(error) }
        guard found.spec.events != nil else {
            return .problem(Problem(slug: "probe-has-no-events", title: "Probe Has No Events", status: .conflict,
                                    detail: "probe \(name) has no events: give it an `events` member, e.g. {\"events\": {\"min_latency_ns\": 10000000}}"))
        }
        guard let events = found.events else {
            return .problem(Problem(slug: "probe-conflict", title: "Conflict", status: .conflict,
                                    detail: "probe '\(name)' is not attached: restoring it failed; PUT it again to retry"))
        }
        let format = EventStreamBody.format(accept: request.headers["Accept"])
        let body = EventStreamBody(subscription: events.feed.subscribe(after: after, follow: follow), format: format)
        var headers: HTTPHeaders = [
            "Content-Type": format == .ndjson ? "application/x-ndjson" : "text/event-stream; charset=utf-8",
            "Cache-Control": "no-store",
            // Proxies that buffer (nginx) would hold events back.
            "X-Accel-Buffering": "no",
        ]
        headers["Vary"] = "Accept"
        return .stream(status: .ok, headers: headers, body)
    }

    /// The 422 problem when no mechanism attached: `attempts` lists every one tried.
    static func attachFailed(detail: String, attempts: [AttachAttempt]) -> Problem {
        Problem(slug: "attach-failed", title: "No Mechanism Could Attach", status: .unprocessableContent,
                detail: detail, extensions: ["attempts": .array(attempts.map(attemptJSON))])
    }

    /// An attempt as the problem's `attempts` member shows it (as in a Probe's `attempts`).
    static func attemptJSON(_ a: AttachAttempt) -> JSONValue {
        .object(["mechanism": .string(a.flavour.rawValue), "outcome": .string(a.outcome.rawValue),
                 "stage": a.stage.map { .string($0.rawValue) } ?? .null, "errno": a.errno.map { .string($0.name) } ?? .null,
                 "message": .string(a.message)])
    }

    /// Decodes a probe spec from `request`, applies it, and answers with the probe, a
    /// `Location` header and the extra headers `apply` returns, or the problem.
    static func write(_ request: HTTPRequest, _ apply: (ProbeSpec) async throws -> (Probe, HTTPStatus, HTTPHeaders)) async -> HTTPResponse {
        do {
            let (probe, status, extra) = try await apply(try SpecDecoder.decode(request.body))
            var headers = extra
            headers["Location"] = "/v1/probes/\(probe.name)"
            return .json(status: status, probe, headers: headers)
        } catch {
            return response(error)
        }
    }
}

extension AgentAPI {
    /// A stack-keyed aggregate as folded lines, a JSON tree or an SVG flame graph.
    static func stacks(_ aggregate: KeyedAggregate, format: String, title: String) -> HTTPResponse {
        let samples = StackSamples.samples(aggregate)
        switch format {
        case "json":
            return .json(StackTree(by: aggregate.by, stackFull: aggregate.stackFull, root: FlameGraph.tree(samples)))
        case "svg":
            let total = samples.reduce(UInt64(0)) { $0 &+ $1.count }
            let lost = aggregate.stackFull > 0 ? "; \(aggregate.stackFull) calls lost their stack: the stack map was full" : ""
            return .text(FlameGraph.svg(samples, title: title, subtitle: "\(total) samples, \(samples.count) stacks, by \(aggregate.by.joined(separator: ", "))\(lost)"),
                         contentType: "image/svg+xml")
        default:
            return .text(FlameGraph.folded(samples))
        }
    }
}

/// `GET /v1/probes/{name}/stacks?format=json`.
struct StackTree: Sendable, Encodable {
    var by: [String]
    var stackFull: UInt64
    var root: FlameGraph.Node
    enum CodingKeys: String, CodingKey {
        case by, root
        case stackFull = "stack_full"
    }
}

/// `{"probes": [...]}`.
public struct ProbeList: Sendable, Codable {
    public var probes: [Probe]
}
