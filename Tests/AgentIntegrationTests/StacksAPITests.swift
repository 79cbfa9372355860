import Foundation
import Glibc
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// `GET /v1/probes/{name}/stacks` on the real agent wiring and the real kernel (root): probes
/// made with PUT over real HTTP, stacks fetched with curl, the flame graph drawn in headless
/// Chromium, `/metrics` checked by promtool, and the `traceplane probe stacks` executable.
/// The workload is tests/stacks/callchains.c, whose call chains are known.
@Suite(.serialized, .enabled(if: RootRequirement.check("StacksAPITests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct StacksAPITests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    /// curl's time limit for a machine-wide profile's stacks (curl takes the last --max-time).
    static let slowSymbolizing = ["--max-time", "120"]

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("A profile PUT over HTTP: folded lines name the busy process and spin_hot, the JSON tree adds up to them, the SVG draws in Chromium")
    func profileOverHTTP() async throws {
        let agent = try await AgentHarness()
        do {
            // One profile of the whole machine, one of the spinner alone: after the spinner
            // exits the second one counts nothing more, so its formats can be compared exactly.
            let all = try CurlClient.run("PUT", agent.base + "/v1/probes/api-profile", json: #"{"target":{"type":"profile","frequency_hz":99}}"#)
            #expect(all.status == 201, "\(all.body)")
            #expect(all.json?["mechanism"] as? String == "perf_event", "\(all.body)")
            let spinner = try CallChains(["spin", "3"])
            let pid = try CurlClient.run("PUT", agent.base + "/v1/probes/api-profile-pid",
                                         json: #"{"target":{"type":"profile"},"filter":{"pid":\#(spinner.pid)}}"#)
            #expect(pid.status == 201, "\(pid.body)")
            spinner.process.waitUntilExit()
            #expect(spinner.process.terminationStatus == 0)

            // The first request symbolizes every binary the machine ran: a debug agent took 14 s
            // for a busy swift-frontend (290,000 symbols); later ones hit the build-id cache.
            let folded = try CurlClient.run("GET", agent.base + "/v1/probes/api-profile/stacks?format=folded", extra: Self.slowSymbolizing)
            #expect(folded.status == 200)
            #expect(folded.header("content-type") == "text/plain; charset=utf-8", "\(folded.headers)")
            let lines = try #require(Folded.parse(folded.body), "not `stack count` lines:\n\(folded.body.prefix(2000))")
            let mine = lines.filter { $0.frames.first == CallChains.comm }
            let samples = mine.reduce(0) { $0 + $1.count }
            let hot = mine.filter { $0.frames.contains("spin_hot") }.reduce(0) { $0 + $1.count }
            #expect(samples >= 50, "about 99 samples a second of a process that ran for 3 s: \(samples)\n\(mine.prefix(5))")
            #expect(hot * 10 >= samples * 8, "most of its samples are in spin_hot: \(hot) of \(samples)\n\(mine.prefix(5))")
            #expect(mine.contains { $0.frames.joined(separator: ";").contains("main;spin_hot") }, "\(mine.prefix(5))")

            // The spinner's own profile: only its samples, and the JSON tree counts exactly what the folded lines do.
            let own = try #require(Folded.parse(try CurlClient.run("GET", agent.base + "/v1/probes/api-profile-pid/stacks").body))
            #expect(!own.isEmpty && own.allSatisfy { $0.frames.first == CallChains.comm }, "\(own.prefix(5))")
            let tree = try CurlClient.run("GET", agent.base + "/v1/probes/api-profile-pid/stacks?format=json")
            #expect(tree.status == 200)
            #expect(tree.header("content-type")?.hasPrefix("application/json") == true, "\(tree.headers)")
            let json = try #require(tree.json, "\(tree.body.prefix(500))")
            #expect(json["by"] as? [String] == ["comm", "ustack", "kstack"])
            #expect(json["stack_full"] as? Int == 0)
            let root = try #require(json["root"] as? [String: Any])
            #expect(root["name"] as? String == "all")
            #expect(root["total"] as? Int == own.reduce(0) { $0 + $1.count }, "tree total vs folded sum")
            let children = try #require(root["children"] as? [[String: Any]])
            #expect(children.map { $0["name"] as? String } == [CallChains.comm])

            let svg = try CurlClient.run("GET", agent.base + "/v1/probes/api-profile/stacks?format=svg", extra: Self.slowSymbolizing)
            #expect(svg.status == 200)
            #expect(svg.header("content-type") == "image/svg+xml", "\(svg.headers)")
            #expect(svg.body.contains("<svg") && svg.body.contains("spin_hot"), "\(svg.body.prefix(300))")
            // Drawn, both: the machine's (the README's picture: the browser window takes the
            // SVG's own height, so a deep graph is drawn whole) and the spinner's own.
            try Self.screenshot(svg.body, readme: true)
            let ownSVG = try CurlClient.run("GET", agent.base + "/v1/probes/api-profile-pid/stacks?format=svg")
            #expect(ownSVG.status == 200 && ownSVG.header("content-type") == "image/svg+xml", "\(ownSVG.headers)")
            try Self.screenshot(ownSVG.body, readme: false)
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    /// Draws `svg` with tests/stacks/screenshot.py (headless Chromium) and expects a picture;
    /// with TRACEPLANE_WRITE_SCREENSHOT=1 the PNG of the `readme` one is docs/flamegraph.png.
    static func screenshot(_ svg: String, readme: Bool) throws {
        let dir = NSTemporaryDirectory() + "tp-stacks-svg-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try Data(svg.utf8).write(to: URL(fileURLWithPath: "\(dir)/profile.svg"))
        let write = readme && ProcessInfo.processInfo.environment["TRACEPLANE_WRITE_SCREENSHOT"] == "1"
        let png = write ? repository.appendingPathComponent("docs/flamegraph.png").path : "\(dir)/profile.png"
        let shot = try Command.run("/usr/bin/python3", [repository.appendingPathComponent("tests/stacks/screenshot.py").path, "\(dir)/profile.svg", png])
        #expect(shot.status == 0, "screenshot.py (headless Chromium): exit \(shot.status)\n\(shot.output)")
        print("flame graph screenshot: \(shot.output.trimmingCharacters(in: .whitespacesAndNewlines))\(write ? " -> \(png)" : "")")
    }

    @Test("A getppid probe by ustack over HTTP: exactly 700 calls under main→a→b→c and 300 under main→x→y in the folded lines")
    func userStacksOfKnownChains() async throws {
        let agent = try await AgentHarness()
        let chains = try CallChains(["700", "300"])
        do {
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/api-ustack",
                                         json: #"{"target":{"type":"syscall","name":"getppid"},"filter":{"pid":\#(chains.pid)},"aggregate":{"by":["ustack"],"value":"none"}}"#)
            #expect(put.status == 201, "\(put.body)")
            try chains.go()
            let folded = try CurlClient.run("GET", agent.base + "/v1/probes/api-ustack/stacks?format=folded")
            #expect(folded.status == 200)
            let lines = try #require(Folded.parse(folded.body), "\(folded.body.prefix(2000))")
            let abc = lines.filter { $0.frames.joined(separator: ";").hasSuffix("main;chain_a;chain_b;chain_c;direct_getppid") }
            let xy = lines.filter { $0.frames.joined(separator: ";").hasSuffix("main;chain_x;chain_y;direct_getppid") }
            #expect(abc.map(\.count) == [700], "\(lines)")
            #expect(xy.map(\.count) == [300], "\(lines)")
            #expect(lines.count == 2, "only the two chains call getppid: \(lines)")
            // The metrics show the same stacks as frame arrays, innermost first.
            let metrics = try #require(try CurlClient.run("GET", agent.base + "/v1/probes/api-ustack/metrics").json)
            let aggregate = try #require(metrics["aggregate"] as? [String: Any])
            #expect(aggregate["stack_full"] as? Int == 0)
            let keys = try #require(aggregate["keys"] as? [[String: Any]])
            let frames = keys.compactMap { ($0["key"] as? [String: Any])?["ustack"] as? [String] }
            #expect(frames.count == 2 && frames.allSatisfy { $0.first == "direct_getppid" }, "\(frames)")
        } catch {
            chains.finish()
            await agent.stop()
            throw error
        }
        chains.finish()
        await agent.stop()
    }

    @Test("Problems: 400 for a bad format, 404 for an unknown probe, 409 for a probe without stack keys; all problem+json")
    func problems() async throws {
        let agent = try await AgentHarness()
        do {
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/api-nostacks",
                                         json: #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"aggregate":{"by":["cpu"]}}"#)
            #expect(put.status == 201, "\(put.body)")
            let cases: [(path: String, status: Int, type: String)] = [
                ("/v1/probes/api-nostacks/stacks?format=bogus", 400, "bad-request"),
                ("/v1/probes/api-unknown/stacks", 404, "probe-not-found"),
                ("/v1/probes/api-unknown/stacks?format=svg", 404, "probe-not-found"),
                ("/v1/probes/api-nostacks/stacks", 409, "probe-has-no-stacks"),
                ("/v1/probes/api-nostacks/stacks?format=json", 409, "probe-has-no-stacks"),
            ]
            for c in cases {
                let reply = try CurlClient.run("GET", agent.base + c.path)
                #expect(reply.status == c.status, "\(c.path): \(reply.body)")
                #expect(reply.header("content-type") == "application/problem+json", "\(c.path): \(reply.headers)")
                let problem = try #require(reply.json, "\(c.path): \(reply.body)")
                #expect(problem["type"] as? String == "https://traceplane.dev/problems/\(c.type)", "\(c.path): \(reply.body)")
                #expect(problem["status"] as? Int == c.status)
                #expect((problem["detail"] as? String)?.isEmpty == false)
                if c.status == 400 {
                    let errors = try #require(problem["errors"] as? [[String: Any]])
                    #expect(errors.map { $0["field"] as? String } == ["format"], "\(reply.body)")
                    #expect((problem["detail"] as? String)?.contains("bogus") == true)
                }
                if c.status == 409 {
                    #expect((problem["detail"] as? String)?.contains("kstack or ustack") == true, "\(reply.body)")
                }
            }
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("/metrics with stack probes passes promtool, has no stack labels, and counts lost stacks per probe")
    func prometheusWithStacks() async throws {
        guard let promtool = Tooling.find("promtool") else {
            Issue.record("promtool is not installed: install the Debian package `prometheus` (scripts/install-deps.sh lists it)")
            return
        }
        let agent = try await AgentHarness()
        do {
            let specs = [
                ("api-prom-switch", #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"aggregate":{"by":["comm","kstack"]}}"#),
                ("api-prom-profile", #"{"target":{"type":"profile","frequency_hz":49}}"#),
            ]
            for (name, json) in specs {
                let put = try CurlClient.run("PUT", agent.base + "/v1/probes/\(name)", json: json)
                #expect(put.status == 201, "\(name): \(put.body)")
            }
            for _ in 0..<20 { usleep(1000) }
            try await Task.sleep(for: .milliseconds(300))
            let scrape = try CurlClient.run("GET", agent.base + "/metrics")
            #expect(scrape.status == 200)
            let check = try Tooling.run(promtool, ["check", "metrics"], stdin: Data(scrape.body.utf8))
            #expect(check.status == 0 && check.output.isEmpty, "promtool check metrics: exit \(check.status)\n\(check.output)")
            let lines = scrape.body.split(separator: "\n")
            #expect(!lines.contains { $0.contains("kstack=") || $0.contains("ustack=") }, "a stack is never a label")
            #expect(scrape.body.contains("# TYPE traceplane_probe_stacks_lost_total counter\n"))
            for (name, _) in specs {
                #expect(lines.contains { $0.hasPrefix(#"traceplane_probe_stacks_lost_total{probe="\#(name)","#) && $0.hasSuffix(" 0") },
                        "no stacks_lost series of 0 for \(name)")
            }
            // The switches are still counted by comm, their stacks summed away.
            #expect(lines.contains { $0.hasPrefix(#"traceplane_probe_key_calls_total{probe="api-prom-switch","#) && $0.contains(#"comm=""#) })
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("traceplane probe stacks NAME --svg FILE writes the agent's flame graph; without flags it prints the folded lines")
    func cliWritesTheFlameGraph() async throws {
        let agent = try await AgentHarness()
        let dir = NSTemporaryDirectory() + "tp-stacks-cli-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        do {
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/api-cli",
                                         json: #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"aggregate":{"by":["kstack"]}}"#)
            #expect(put.status == 201, "\(put.body)")
            for _ in 0..<20 { usleep(1000) }
            let cli = AgentProcess.executable
            let svg = try Command.run(cli, ["probe", "stacks", "api-cli", "--svg", "\(dir)/out.svg", "--agent", agent.base])
            #expect(svg.status == 0, "\(svg.output)")
            #expect(svg.output.contains("wrote the flame graph of api-cli to \(dir)/out.svg"), "\(svg.output)")
            let text = try String(contentsOfFile: "\(dir)/out.svg", encoding: .utf8)
            #expect(text.contains("<svg") && text.contains("</svg>") && text.contains("__schedule"), "\(text.prefix(300))")

            let folded = try Command.run(cli, ["probe", "stacks", "api-cli", "--agent", agent.base])
            #expect(folded.status == 0, "\(folded.output)")
            let lines = try #require(Folded.parse(folded.output), "\(folded.output.prefix(1000))")
            #expect(lines.contains { $0.frames.contains("__schedule") }, "\(lines.prefix(3))")

            let missing = try Command.run(cli, ["probe", "stacks", "api-unknown", "--svg", "\(dir)/none.svg", "--agent", agent.base])
            #expect(missing.status != 0 && missing.output.contains("HTTP 404"), "\(missing.output)")
            #expect(!FileManager.default.fileExists(atPath: "\(dir)/none.svg"), "no file for a failed request")
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }
}

/// Folded lines, `frame;frame;… count`.
enum Folded {
    struct Line: CustomStringConvertible {
        var frames: [String]
        var count: Int
        var description: String { "\(frames.joined(separator: ";")) \(count)" }
    }

    /// The lines, or nil when one is not `stack count` with a positive count.
    static func parse(_ text: String) -> [Line]? {
        var lines: [Line] = []
        for line in text.split(separator: "\n", omittingEmptySubsequences: false).dropLast(text.hasSuffix("\n") ? 1 : 0) {
            guard let space = line.lastIndex(of: " "), let count = Int(line[line.index(after: space)...]), count > 0,
                  space > line.startIndex else { return nil }
            lines.append(Line(frames: line[..<space].split(separator: ";", omittingEmptySubsequences: false).map(String.init), count: count))
        }
        return lines
    }
}

/// Runs a program to completion; its stdout and stderr together.
enum Command {
    struct Failure: Error, CustomStringConvertible { var message: String; var description: String { message } }

    static func run(_ binary: String, _ arguments: [String]) throws -> (status: Int32, output: String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: binary)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = output
        process.standardInput = FileHandle.nullDevice
        try process.run()
        let text = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: text, as: UTF8.self))
    }
}

extension CurlClient.Reply {
    /// The last value of header `name` (case-insensitive), without the line end.
    func header(_ name: String) -> String? {
        headers.split(whereSeparator: \.isNewline).reversed().lazy.compactMap { line -> String? in
            guard let colon = line.firstIndex(of: ":"), line[..<colon].lowercased() == name.lowercased() else { return nil }
            return line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }.first
    }
}
