import Foundation
import Logging
import TraceAPI
import TraceCore
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// The real agent (``AgentService``: libbpf backend, capability store, probe manager, API
/// router, libmicrohttpd server) on 127.0.0.1 with an ephemeral port, run exactly as
/// `serve` runs it.
final class AgentHarness: Sendable {
    let service: AgentService
    let running: Task<Void, any Error>
    var store: CapabilityStore { service.core.capabilities }
    var manager: ProbeManager { service.core.probes }
    var server: HTTPServer { service.server }
    let base: String

    /// With `tokens`, requests need a bearer token (``BearerAuth``); with `tls`, it serves
    /// HTTPS; `disabled` switches mechanisms off as `--disable-mechanism` does. Returns once
    /// the agent is ready (capabilities probed, saved probes restored).
    init(maxProbes: Int = 256, tokens: AccessTokens? = nil, tls: HTTPServer.Configuration.TLS? = nil,
         disabled: Set<Mechanism> = [], stateDirectory: String? = nil,
         budgets: BudgetController.Configuration = BudgetController.Configuration()) async throws {
        let configuration = AgentService.Configuration(
            core: CoreConfiguration(maxProbes: maxProbes, disabledMechanisms: disabled, stateDirectory: stateDirectory, budgets: budgets),
            host: "127.0.0.1", port: 0, tls: tls, tokens: tokens ?? AccessTokens(admin: nil, readOnly: nil))
        let service = try AgentService(configuration)
        self.service = service
        running = Task { try await service.run() }
        let port = try await service.listeningPort()
        base = "\(tls == nil ? "http" : "https")://127.0.0.1:\(port)"
        try await service.waitUntilStarted()
    }

    /// Stops it as SIGTERM stops `serve`: everything detached, the kernel's objects released.
    func stop() async {
        running.cancel()
        _ = await running.result
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
