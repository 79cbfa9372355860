import CLibBPF
import Foundation
import Glibc
import Synchronization
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

/// `GET /metrics` on the real agent wiring and the real kernel (root), checked by
/// `promtool check metrics` and scraped by a real Prometheus server.
@Suite(.serialized, .enabled(if: RootRequirement.check("PrometheusScrapeTests") || RootRequirement.mustRun,
                             "needs root and a real kernel"))
struct PrometheusScrapeTests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    @Test("A live scrape with probes of every target type that works here passes promtool check metrics")
    func promtoolIsClean() async throws {
        guard let promtool = Tooling.find("promtool") else {
            Issue.record("promtool is not installed: install the Debian package `prometheus` (scripts/install-deps.sh lists it)")
            return
        }
        let agent = try await MetricsAgent()
        do {
            let names = try await agent.createProbesOfEveryTargetType()
            agent.generateEvents()
            let scrape = try await agent.get("/metrics")
            #expect(scrape.status == 200)
            #expect(scrape.contentType == PrometheusExporter.contentType)
            let body = String(decoding: scrape.body, as: UTF8.self)

            let check = try Tooling.run(promtool, ["check", "metrics"], stdin: scrape.body)
            #expect(check.status == 0 && check.output.isEmpty, "promtool check metrics: exit \(check.status)\n\(check.output)")

            // The families the issue asks for, for live probes.
            for family in ["probe_calls_total", "probe_errors_total", "probe_latency_seconds", "probe_bpf_run_seconds_total",
                           "probe_info", "capability_supported", "probes", "attach_attempts_total", "http_requests_total",
                           "process_resident_memory_bytes", "process_open_fds", "build_info", "scrape_duration_seconds",
                           "probe_key_calls_total", "probe_key_errors_total", "probe_key_value", "probe_dropped_keys_total",
                           "probe_budget_state", "probe_budget_transitions_total", "probe_sample_every", "probe_cost_cpu_ratio",
                           "agent_cpu_ratio", "budget_stats_windows_total", "budget_stats_window_seconds_total", "process_cpu_seconds_total"] {
                #expect(body.contains("# TYPE traceplane_\(family) "), "missing family traceplane_\(family)")
            }
            for name in names {
                #expect(body.contains("traceplane_probe_calls_total{probe=\"\(name)\","), "no calls series for \(name)")
            }
            #expect(Scrape.value(body, "traceplane_probe_calls_total", probe: "prom-syscall").map { $0 >= 500 } == true)
            #expect(Scrape.value(body, "traceplane_probe_calls_total", probe: "prom-uprobe") == 300)
            #expect(Scrape.value(body, "traceplane_probe_latency_seconds_count", probe: "prom-uprobe") == 300)
            #expect(Scrape.value(body, "traceplane_probe_latency_seconds_bucket", probe: "prom-uprobe", le: "+Inf") == 300)
            #expect(!body.contains("traceplane_probe_latency_seconds_count{probe=\"prom-tracepoint\""),
                    "tracepoint probes have no latency histogram")
            #expect((Scrape.value(body, "traceplane_probe_bpf_run_seconds_total", probe: "prom-syscall") ?? 0) > 0,
                    "BPF run time needs kernel BPF stats on (the agent holds a BPF_ENABLE_STATS fd)")
            // The keyed probes: this process's getppid calls under its comm, the CPUs' context switches.
            let comm = try String(contentsOfFile: "/proc/self/comm", encoding: .utf8).trimmingCharacters(in: .newlines)
            let lines = body.split(separator: "\n")
            let ours = try #require(lines.first {
                $0.hasPrefix(#"traceplane_probe_key_calls_total{probe="prom-keyed","#) && $0.hasSuffix(#",comm="\#(comm)",errno="ok"} 500"#)
            }, "no key series with 500 calls for comm \(comm)")
            #expect(lines.contains { $0.hasPrefix(#"traceplane_probe_key_value_count{probe="prom-keyed","#) && $0.hasSuffix(#"comm="\#(comm)",errno="ok"} 500"#) }, "\(ours)")
            #expect(Scrape.value(body, "traceplane_probe_dropped_keys_total", probe: "prom-keyed") == 0)
            #expect(lines.contains { $0.hasPrefix(#"traceplane_probe_key_calls_total{probe="prom-keyed-tracepoint","#) && $0.contains(#",cpu=""#) })
            #expect(!body.contains(#"traceplane_probe_key_errors_total{probe="prom-keyed-tracepoint""#))
            // The budgeted probe: active, every state exposed, nothing throttled.
            let budget = #"probe="prom-budget",target="tracepoint:sched:sched_switch",mechanism="#
            #expect(lines.filter { $0.hasPrefix("traceplane_probe_budget_state{\(budget)") && $0.hasSuffix(#"state="active"} 1"#) }.count == 1)
            #expect(lines.filter { $0.hasPrefix("traceplane_probe_budget_state{\(budget)") && $0.hasSuffix(" 0") }.count == 2)
            #expect(lines.contains { $0.hasPrefix("traceplane_probe_sample_every{\(budget)") && $0.hasSuffix("} 1") })
            #expect(!body.contains(#"traceplane_probe_sample_every{probe="prom-syscall""#), "unbudgeted probes have no budget series")
            // The hostile user label arrives escaped, on probe_info only.
            #expect(body.contains(#"label_note="a\\b\"c\nd""#))
            #expect(body.contains("traceplane_capability_supported{capability=\"tp_btf\"} "))
            #expect(body.contains("traceplane_probes{state=\"active\"} \(names.count)\n"))
            #expect(body.contains("traceplane_http_requests_total{method=\"POST\",code=\"201\"} "))
            #expect(body.contains("libbpf_version=\"\(libbpf_major_version()).\(libbpf_minor_version())\""))
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("A real Prometheus server scrapes the agent: up == 1, the probe's calls and a histogram quantile come back")
    func realPrometheusScrapes() async throws {
        guard let prometheusBinary = Tooling.find("prometheus") else {
            Issue.record("prometheus is not installed: install the Debian package `prometheus` (scripts/install-deps.sh lists it)")
            return
        }
        let agent = try await MetricsAgent()
        var prometheus: PrometheusServer?
        do {
            _ = try await agent.createProbesOfEveryTargetType()
            agent.generateEvents()
            let server = try PrometheusServer.start(binary: prometheusBinary, scraping: agent.server.port)
            prometheus = server
            let started = ContinuousClock.now
            let deadline = started + .seconds(30)
            var up: Double?, calls: Double?, quantile: Double?
            while ContinuousClock.now < deadline {
                // Keep calls coming, so that rate() over the last seconds is never all zero.
                agent.generateEvents()
                up = try? await server.query("up{job=\"traceplane\"}")
                calls = try? await server.query("traceplane_probe_calls_total{probe=\"prom-syscall\"}")
                quantile = try? await server.query(
                    "histogram_quantile(0.9, rate(traceplane_probe_latency_seconds_bucket{probe=\"prom-syscall\"}[5s]))")
                if up == 1, calls != nil, let q = quantile, !q.isNaN { break }
                try await Task.sleep(for: .milliseconds(500))
            }
            let elapsed = ContinuousClock.now - started
            func show(_ value: Double?) -> String { value.map { "\($0)" } ?? "none" }
            print("Prometheus: up=\(show(up)), calls=\(show(calls)), p90=\(show(quantile)) after \(elapsed)")
            #expect(up == 1, "Prometheus never scraped the agent successfully within 30 s\n\(server.log())")
            #expect((calls ?? 0) >= 500, "no traceplane_probe_calls_total for prom-syscall within 30 s\n\(server.log())")
            let q = try #require(quantile, "histogram_quantile returned no sample within 30 s\n\(server.log())")
            #expect(!q.isNaN && q > 0 && q < 1, "p90 of getppid latency should be a small number of seconds, got \(q)")
        } catch {
            prometheus?.stop()
            await agent.stop()
            throw error
        }
        prometheus?.stop()
        await agent.stop()
    }
}

extension PrometheusScrapeTests {
    @Test("A real Prometheus with native histograms scrapes the protobuf exposition: the probe's native histogram has the kernel's exact buckets, its median agrees with the classic histogram's, and the shipped recording rules record it per probe and per key")
    func nativeHistograms() async throws {
        guard let prometheusBinary = Tooling.find("prometheus") else {
            Issue.record("prometheus is not installed: install the Debian package `prometheus` (scripts/install-deps.sh lists it)")
            return
        }
        let agent = try await MetricsAgent()
        var prometheus: PrometheusServer?
        do {
            let put = try await agent.request("PUT", "/v1/probes/prom-native", body: Data(#"{"target":{"type":"syscall","name":"nanosleep"},"filter":{"comm":"tp-sleeper"}}"#.utf8))
            #expect(put.status == 201)
            let keyed = try await agent.request("PUT", "/v1/probes/prom-native-keys", body: Data(#"{"target":{"type":"syscall","name":"nanosleep"},"mechanisms":["tracepoint"],"filter":{"comm":"tp-sleeper"},"aggregate":{"by":["comm"]}}"#.utf8))
            #expect(keyed.status == 201)
            // With the shipped rules: their native paths run here on real native histograms
            // (promtool 2.42 cannot write native series into its rule tests).
            let rules = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
                .appendingPathComponent("deploy/prometheus/rules.yml").path
            let server = try PrometheusServer.start(binary: prometheusBinary, scraping: agent.server.port, features: ["native-histograms"],
                                                    ruleFiles: [rules])
            prometheus = server
            // Scraped empty first, then 3 × 100 sleeps of 1.1 ms and 2.2 ms over a few scrapes.
            var up: Double?
            for _ in 0..<60 where up != 1 {
                try await Task.sleep(for: .milliseconds(500))
                up = try? await server.query("up{job=\"traceplane\"}")
            }
            #expect(up == 1, "Prometheus never scraped the agent\n\(server.log())")
            for round in 0..<3 {
                try Sleeper(["burst", "70", "1100000"]).run()
                try Sleeper(["burst", "30", "2200000"]).run()
                if round < 2 { try await Task.sleep(for: .seconds(1)) }
            }
            let reply = try await agent.get("/v1/probes/prom-native/metrics")
            let json = try #require(try JSONSerialization.jsonObject(with: reply.body) as? [String: Any])
            let calls = try #require(json["calls"] as? Int)
            #expect(calls == 300)
            let kernel = (json["latency_ns"] as? [String: Any])?["buckets"] as? [[String: Any]] ?? []
            // The kernel's slot [2^s, 2^(s+1)-1] is native bucket s+1: (2^s, 2^(s+1)].
            var expected: [String: Int] = [:]
            for bucket in kernel {
                let lower = bucket["lower"] as? Int ?? -1
                let key = lower <= 1 ? "zero" : "\(lower)-\(lower * 2)"
                expected[key, default: 0] += bucket["count"] as? Int ?? 0
            }
            var native: [String: Int] = [:]
            var nativeCount: Int?
            for _ in 0..<40 {
                let result = try await server.samples("traceplane_probe_latency_nanoseconds{probe=\"prom-native\"}") ?? []
                if let histogram = (result.first?["histogram"] as? [Any])?.last as? [String: Any] {
                    nativeCount = Int(histogram["count"] as? String ?? "")
                    native = [:]
                    for bucket in histogram["buckets"] as? [[Any]] ?? [] {
                        guard bucket.count == 4, let lower = Double(bucket[1] as? String ?? ""), let upper = Double(bucket[2] as? String ?? ""),
                              let count = Int(bucket[3] as? String ?? "") else { continue }
                        native[lower <= 0 && upper <= 1 ? "zero" : "\(Int(lower))-\(Int(upper))", default: 0] += count
                    }
                    if nativeCount == calls { break }
                }
                try await Task.sleep(for: .milliseconds(500))
            }
            print("kernel buckets \(expected.sorted { $0.key < $1.key }), Prometheus native \(native.sorted { $0.key < $1.key })")
            #expect(nativeCount == calls, "the native histogram's count \(String(describing: nativeCount)), the kernel's \(calls)\n\(server.log())")
            #expect(native == expected, "native buckets \(native), kernel \(expected)")
            // The keyed probe's per-key native histogram: every call under comm tp-sleeper.
            let perKey = try await server.samples("traceplane_probe_key_value_native{probe=\"prom-native-keys\",comm=\"tp-sleeper\"}") ?? []
            let keyHistogram = (perKey.first?["histogram"] as? [Any])?.last as? [String: Any]
            #expect(keyHistogram?["count"] as? String == "300", "per-key native histogram: \(perKey)")
            // Both from the same scrapes (the protobuf exposition keeps the classic family):
            // the same increases, so the medians differ only by the 1 ns between the bucket
            // bounds (classic le is 2^(s+1)-1 ns, native 2^(s+1) ns).
            try await Task.sleep(for: .seconds(2))
            let nativeMedian = try await server.query("histogram_quantile(0.5, rate(traceplane_probe_latency_nanoseconds{probe=\"prom-native\"}[20s])) / 1e9")
            let classicMedian = try await server.query("histogram_quantile(0.5, rate(traceplane_probe_latency_seconds_bucket{probe=\"prom-native\"}[20s]))")
            print("median: native \(String(describing: nativeMedian)) s, classic \(String(describing: classicMedian)) s")
            let n = try #require(nativeMedian, "no native median\n\(server.log())")
            let c = try #require(classicMedian, "no classic median\n\(server.log())")
            #expect(n > 0.001 && n < 0.0042, "the median of 1.1 ms and 2.2 ms sleeps: \(n) s")
            #expect(abs(n - c) <= max(2e-9, c * 1e-3), "native median \(n) s, classic \(c) s")
            // The shipped recording rules, evaluated on the native series: the same median,
            // in seconds per probe and in nanoseconds per key.
            var recorded: Double?, recordedKey: Double?
            for _ in 0..<20 where recorded == nil || recordedKey == nil {
                try await Task.sleep(for: .seconds(1))
                recorded = try await server.query("traceplane:probe_latency_seconds:p50{probe=\"prom-native\"}")
                recordedKey = try await server.query("traceplane:probe_key_value:p50{probe=\"prom-native-keys\",comm=\"tp-sleeper\"}")
            }
            print("recorded p50: per probe \(String(describing: recorded)) s, per key \(String(describing: recordedKey)) ns")
            let r = try #require(recorded, "traceplane:probe_latency_seconds:p50 recorded nothing\n\(server.log())")
            let rk = try #require(recordedKey, "traceplane:probe_key_value:p50 recorded nothing\n\(server.log())")
            #expect(abs(r - n) <= n * 0.02, "recorded p50 \(r) s, the native median \(n) s")
            #expect(abs(rk / 1e9 - n) <= n * 0.02, "recorded key p50 \(rk) ns, the native median \(n) s")
            // Everyone else still gets the text format, unchanged (promtool checks it in promtoolIsClean).
            let text = try await agent.get("/metrics")
            #expect(text.contentType == PrometheusExporter.contentType)
            #expect(!String(decoding: text.body, as: UTF8.self).contains("traceplane_probe_latency_nanoseconds"))
        } catch {
            prometheus?.stop()
            await agent.stop()
            throw error
        }
        prometheus?.stop()
        await agent.stop()
    }
}

/// The agent as `traceplane serve` wires it: kernel BPF stats on through an fd, libbpf
/// backend, capability store, probe manager, API router with the Prometheus exporter, and
/// an HTTP server on 127.0.0.1:0 whose request counter the exporter reads.
private final class MetricsAgent: Sendable {
    let store: CapabilityStore
    let manager: ProbeManager
    let server: HTTPServer
    let base: String
    /// The BPF_ENABLE_STATS fd (run-time stats stay on while it is open), or -errno.
    let statsFD: Int32

    init() async throws {
        statsFD = tp_enable_runtime_stats()
        try #require(statsFD >= 0, "BPF_ENABLE_STATS failed (errno \(-statsFD)): the agent needs it for probe overhead")
        let backend = LibBPFBackend()
        let store = CapabilityStore(prober: CapabilityProber(backend: backend))
        _ = await store.refresh()
        let manager = ProbeManager(planner: Planner(backend: backend), budgets: BudgetController(), report: { await store.current })
        let requests = HTTPRequestCounter()
        let exporter = PrometheusExporter(probes: manager, capabilities: store, requests: requests,
                                          build: BuildInfo(libbpfVersion: "\(libbpf_major_version()).\(libbpf_minor_version())"))
        let api = AgentAPI(capabilities: store, probes: manager, metrics: { await exporter.scrape(accept: $0) })
        let server = HTTPServer(configuration: .init(host: "127.0.0.1", port: 0), responder: api.router(), requestCounter: requests)
        try server.start()
        self.store = store
        self.manager = manager
        self.server = server
        base = "http://127.0.0.1:\(server.port)"
    }

    func stop() async {
        server.stop()
        await manager.removeAll()
        Reaper.shared.drain()
        if statsFD >= 0 { close(statsFD) }
    }

    /// Creates, over HTTP, a probe of each target type this kernel can attach: a syscall,
    /// a tracepoint, a uprobe on this test binary, and a kernel function where fentry or
    /// kprobe works; and a keyed syscall and tracepoint probe. Returns their names.
    func createProbesOfEveryTargetType() async throws -> [String] {
        let pid = getpid()
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        var specs = [
            ("prom-syscall", #"{"name":"prom-syscall","target":{"type":"syscall","name":"getppid"},"filter":{"pid":\#(pid)},"labels":{"owner":"tests","note":"a\\b\"c\nd"}}"#),
            ("prom-tracepoint", #"{"name":"prom-tracepoint","target":{"type":"tracepoint","name":"sched:sched_switch"}}"#),
            ("prom-uprobe", #"{"name":"prom-uprobe","target":{"type":"uprobe","path":"\#(exe)","symbol":"traceplane_uprobe_target"},"filter":{"pid":\#(pid)}}"#),
            ("prom-keyed", #"{"name":"prom-keyed","target":{"type":"syscall","name":"getppid"},"filter":{"pid":\#(pid)},"aggregate":{"by":["comm","errno"]}}"#),
            ("prom-keyed-tracepoint", #"{"name":"prom-keyed-tracepoint","target":{"type":"tracepoint","name":"sched:sched_switch"},"aggregate":{"by":["cpu"]}}"#),
            ("prom-budget", #"{"name":"prom-budget","target":{"type":"tracepoint","name":"sched:sched_switch"},"budget":{"max_cpu_percent":100}}"#),
        ]
        let report = await store.get()
        if (report.supports(.fentry) && report.supports(.fexit)) || (report.supports(.kprobe) && report.supports(.kretprobe)) {
            specs.append(("prom-function", #"{"name":"prom-function","target":{"type":"function","name":"vfs_read"}}"#))
        }
        for (name, json) in specs {
            let reply = try await request("POST", "/v1/probes", body: Data(json.utf8))
            #expect(reply.status == 201, "creating \(name): \(String(decoding: reply.body, as: UTF8.self))")
        }
        return specs.map(\.0)
    }

    /// 500 getppid calls, 300 calls of the uprobe target (only the first time), a few
    /// context switches and reads.
    func generateEvents() {
        for _ in 0..<500 { _ = getppid() }
        if !generatedUprobeCalls.withLock({ $0 }) {
            var sink: Int32 = 0
            for i in 0..<300 { sink &+= traceplane_uprobe_target(Int32(i)) }
            precondition(sink != 0)
            generatedUprobeCalls.withLock { $0 = true }
        }
        for _ in 0..<5 { usleep(200) }
        _ = try? String(contentsOfFile: "/proc/self/stat", encoding: .utf8)
    }

    private let generatedUprobeCalls = Mutex(false)

    func get(_ path: String) async throws -> HTTPReply { try await request("GET", path) }

    func request(_ method: String, _ path: String, body: Data? = nil) async throws -> HTTPReply {
        try await HTTPReply.fetch(method, URL(string: base + path)!, body: body)
    }
}

private struct HTTPReply: Sendable {
    var status: Int
    var contentType: String
    var body: Data

    static func fetch(_ method: String, _ url: URL, body: Data? = nil) async throws -> HTTPReply {
        var request = URLRequest(url: url)
        request.httpMethod = method
        request.timeoutInterval = 10
        if let body {
            request.httpBody = body
            request.setValue("application/json", forHTTPHeaderField: "Content-Type")
        }
        let (data, response) = try await URLSession.shared.data(for: request)
        let http = response as! HTTPURLResponse
        return HTTPReply(status: http.statusCode, contentType: http.value(forHTTPHeaderField: "Content-Type") ?? "", body: data)
    }
}

/// Reads single values out of an exposition (the format itself is promtool's job).
private enum Scrape {
    static func value(_ body: String, _ name: String, probe: String, le: String? = nil) -> Double? {
        for line in body.split(separator: "\n") where line.hasPrefix(name + "{probe=\"\(probe)\",") {
            if let le, !line.contains("le=\"\(le)\"") { continue }
            return line.split(separator: " ").last.flatMap { Double($0) }
        }
        return nil
    }
}

/// Finding and running the Prometheus tools.
enum Tooling {
    static func find(_ tool: String) -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        for dir in path.split(separator: ":") + ["/usr/bin", "/usr/local/bin"] {
            let candidate = "\(dir)/\(tool)"
            if FileManager.default.isExecutableFile(atPath: candidate) { return candidate }
        }
        return nil
    }

    /// Runs `binary` to completion with `stdin`; returns its exit status and its stdout and stderr together.
    static func run(_ binary: String, _ arguments: [String], stdin: Data) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        input.fileHandleForWriting.write(stdin)
        try input.fileHandleForWriting.close()
        let text = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: text, as: UTF8.self))
    }
}

/// A Prometheus server on loopback with a temporary config and TSDB, scraping the agent
/// every second. ``stop()`` kills it and removes its directory.
private final class PrometheusServer {
    let process: Process
    let directory: URL
    let port: Int

    private init(process: Process, directory: URL, port: Int) {
        self.process = process
        self.directory = directory
        self.port = port
    }

    static func start(binary: String, scraping agentPort: Int, features: [String] = [], ruleFiles: [String] = []) throws -> PrometheusServer {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("traceplane-prom-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let rules = ruleFiles.isEmpty ? "" : "rule_files:\n" + ruleFiles.map { "  - '\($0)'\n" }.joined()
        let config = """
            global:
              scrape_interval: 1s
              scrape_timeout: 1s
              evaluation_interval: 1s
            \(rules)scrape_configs:
              - job_name: traceplane
                static_configs:
                  - targets: ['127.0.0.1:\(agentPort)']

            """
        try Data(config.utf8).write(to: directory.appendingPathComponent("prometheus.yml"))
        let port = try freePort()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = [
            "--config.file=\(directory.path)/prometheus.yml",
            "--storage.tsdb.path=\(directory.path)/data",
            "--web.listen-address=127.0.0.1:\(port)",
        ] + features.map { "--enable-feature=\($0)" }
        _ = FileManager.default.createFile(atPath: directory.appendingPathComponent("prometheus.log").path, contents: nil)
        let log = try FileHandle(forWritingTo: directory.appendingPathComponent("prometheus.log"))
        process.standardOutput = log
        process.standardError = log
        process.standardInput = FileHandle.nullDevice
        try process.run()
        try? log.close()
        return PrometheusServer(process: process, directory: directory, port: port)
    }

    /// The value of the first sample of an instant query, nil when the result is empty.
    func query(_ promQL: String) async throws -> Double? {
        var components = URLComponents(string: "http://127.0.0.1:\(port)/api/v1/query")!
        components.queryItems = [URLQueryItem(name: "query", value: promQL)]
        let reply = try await HTTPReply.fetch("GET", components.url!)
        guard reply.status == 200,
              let json = try JSONSerialization.jsonObject(with: reply.body) as? [String: Any],
              json["status"] as? String == "success",
              let data = json["data"] as? [String: Any],
              let result = data["result"] as? [[String: Any]],
              let value = result.first?["value"] as? [Any], value.count == 2,
              let text = value[1] as? String
        else { return nil }
        return Double(text)
    }

    /// Every sample of an instant query's vector result (nil when the query failed).
    func samples(_ promQL: String) async throws -> [[String: Any]]? {
        var components = URLComponents(string: "http://127.0.0.1:\(port)/api/v1/query")!
        components.queryItems = [URLQueryItem(name: "query", value: promQL)]
        let reply = try await HTTPReply.fetch("GET", components.url!)
        guard reply.status == 200,
              let json = try JSONSerialization.jsonObject(with: reply.body) as? [String: Any],
              json["status"] as? String == "success",
              let data = json["data"] as? [String: Any]
        else { return nil }
        return data["result"] as? [[String: Any]]
    }

    /// The server's log, for failure messages.
    func log() -> String {
        let text = (try? String(contentsOf: directory.appendingPathComponent("prometheus.log"), encoding: .utf8)) ?? "(no log)"
        return "--- prometheus log (last 40 lines) ---\n" + text.split(separator: "\n").suffix(40).joined(separator: "\n")
    }

    /// Kills the server (SIGTERM, then SIGKILL after 5 s) and removes its directory.
    func stop() {
        if process.isRunning {
            process.terminate()
            let deadline = Date().addingTimeInterval(5)
            while process.isRunning && Date() < deadline { usleep(20_000) }
            if process.isRunning { kill(process.processIdentifier, SIGKILL) }
            process.waitUntilExit()
        }
        try? FileManager.default.removeItem(at: directory)
    }

    /// A TCP port on 127.0.0.1 that was free a moment ago.
    static func freePort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        address.sin_port = 0
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw POSIXError(.init(rawValue: errno) ?? .EIO) }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}
