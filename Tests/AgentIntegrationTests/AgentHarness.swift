import Foundation
import Logging
import TraceAPI
import TraceCore
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The real agent wiring (libbpf backend, capability store, probe manager, API router,
/// libmicrohttpd server) on 127.0.0.1 with an ephemeral port.
final class AgentHarness: Sendable {
    let store: CapabilityStore
    let manager: ProbeManager
    let server: HTTPServer
    let base: String

    /// With `tokens`, requests need a bearer token (``BearerAuth``); with `tls`, it serves
    /// HTTPS; `disabled` switches mechanisms off as `--disable-mechanism` does.
    init(maxProbes: Int = 256, metrics: (@Sendable () async -> HTTPResponse)? = nil,
         tokens: AccessTokens? = nil, tls: HTTPServer.Configuration.TLS? = nil, disabled: Set<Mechanism> = []) async throws {
        let backend = LibBPFBackend()
        let store = CapabilityStore(prober: CapabilityProber(backend: backend, disabled: disabled))
        _ = await store.refresh()
        let manager = ProbeManager(planner: Planner(backend: backend), maxProbes: maxProbes, report: { await store.current })
        await manager.startExpiry()
        let api = AgentAPI(capabilities: store, probes: manager, metrics: metrics)
        let responder: any HTTPResponder = if let tokens { BearerAuth(tokens: tokens, next: api.router()) } else { api.router() }
        let server = HTTPServer(configuration: .init(host: "127.0.0.1", port: 0, tls: tls), responder: responder)
        try server.start()
        self.store = store
        self.manager = manager
        self.server = server
        base = "\(tls == nil ? "http" : "https")://127.0.0.1:\(server.port)"
    }

    func stop() async {
        server.stop()
        await manager.removeAll()
        Reaper.shared.drain()
    }

    struct Reply: Sendable {
        var status: Int
        var headers: [String: String]
        var body: Data
        var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: body)) as? [String: Any] }
        var contentType: String { headers["content-type"] ?? "" }
    }

    /// One request with URLSession (a real HTTP client over the loopback socket).
    func request(_ method: String, _ path: String, json: String? = nil, contentType: String = "application/json") async throws -> Reply {
        var request = URLRequest(url: URL(string: base + path)!)
        request.httpMethod = method
        request.timeoutInterval = 30
        if let json {
            request.httpBody = Data(json.utf8)
            request.setValue(contentType, forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as! HTTPURLResponse
        var headers: [String: String] = [:]
        for (key, value) in http.allHeaderFields {
            if let k = key as? String, let v = value as? String { headers[k.lowercased()] = v }
        }
        return Reply(status: http.statusCode, headers: headers, body: data)
    }
}
