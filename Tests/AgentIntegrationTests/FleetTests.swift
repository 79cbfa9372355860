import Foundation
import Glibc
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// `traceplane fleet` (the real executable) against several real agents on loopback
/// ports, one of them on HTTPS, all behind bearer tokens, plus a URL where nothing listens.
@Suite(.serialized, .enabled(if: RootRequirement.check("FleetTests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct FleetTests {
    let dir: String
    static let token = "fleet-admin-token-0123456789abcdef"
    static var tokens: AccessTokens { AccessTokens(admin: Array(token.utf8), readOnly: nil) }

    init() throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        dir = NSTemporaryDirectory() + "traceplane-fleet-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        try write("token", Self.token + "\n")
        chmod("\(dir)/token", 0o600)
    }

    func write(_ name: String, _ text: String) throws {
        try text.write(toFile: "\(dir)/\(name)", atomically: true, encoding: .utf8)
    }

    func cleanup() { try? FileManager.default.removeItem(atPath: dir) }

    static let probes = """
        # the probe set every node gets
        probes:
          - name: switches
            target: {type: tracepoint, name: "sched:sched_switch"}
            labels: {owner: fleet-test}
          - name: ppid
            target:
              type: syscall
              name: getppid
            ttl_seconds: 600
        """

    @Test("apply puts the set on every live agent with that agent's mechanism, fails the dead node; re-apply is unchanged; status and delete follow")
    func applyStatusDelete() async throws {
        defer { cleanup() }
        try TestCA.make(in: dir)
        let tls = HTTPServer.Configuration.TLS(certificatePEM: try String(contentsOfFile: "\(dir)/server.pem", encoding: .utf8),
                                              privateKeyPEM: try String(contentsOfFile: "\(dir)/server.key", encoding: .utf8))
        // Three "kernels": all mechanisms; tp_btf off; tp_btf and raw_tracepoint off (and HTTPS).
        async let a = AgentHarness(tokens: Self.tokens)
        async let b = AgentHarness(tokens: Self.tokens, disabled: [.tpBTF])
        async let c = AgentHarness(tokens: Self.tokens, tls: tls, disabled: [.tpBTF, .rawTracepoint])
        let agents = try await [a, b, c]
        let dead = "http://127.0.0.1:\(try Self.closedPort())"
        try write("agents.txt", "# three live agents and one dead\n" + agents.map { "\($0.base)/\n" }.joined() + "\n\(dead)   # nothing listens\n")
        try write("live.txt", agents.map(\.base).joined(separator: "\n"))
        try write("probes.yaml", Self.probes)
        let common = ["--token-file", "\(dir)/token", "--cacert", "\(dir)/ca.pem", "--deadline", "20", "--retries", "1"]

        // apply: exit 1 because of the dead node; every live row created.
        let applied = try await Fleet.run(["apply", "-f", "\(dir)/probes.yaml", "--agents", "\(dir)/agents.txt"] + common)
        #expect(applied.status == 1, "\(applied)")
        #expect(applied.stderr.contains("fleet apply: 3 of 4 agents ok, 1 failed"), "\(applied.stderr)")
        let table = try #require(Table(applied.stdout), "\(applied)")
        #expect(table.header == ["NODE", "PROBE", "MECHANISM", "STATE", "ERROR"])
        #expect(table.rows.count == 8)
        for agent in agents {
            for name in ["switches", "ppid"] {
                let row = try #require(table.row(agent.base, name), "no row for \(agent.base) \(name):\n\(applied.stdout)")
                let probe = try await agent.manager.get(name)
                #expect(row["STATE"] == "created")
                #expect(row["MECHANISM"] == probe.mechanism?.rawValue, "the table shows what the node chose")
                #expect(row["ERROR"] == "-")
                #expect(probe.generation == 1)
            }
        }
        // Each node chose by itself: the same probe, three mechanisms.
        let chosen = agents.map { table.row($0.base, "switches")?["MECHANISM"] }
        #expect(chosen[1] != "tp_btf" && chosen[2] == "tracepoint", "\(chosen)")
        #expect(Set(chosen).count == (await agents[0].store.current?.supports(.tpBTF) == true ? 3 : 2), "\(chosen)")
        for name in ["switches", "ppid"] {
            let row = try #require(table.row(dead, name))
            #expect(row["STATE"] == "unreachable")
            #expect(row["MECHANISM"] == "-")
            #expect(row["ERROR"]?.contains("after 2 tries") == true, "retried once: \(row)")
        }
        #expect(await agents[2].manager.list().first { $0.name == "switches" }?.spec.labels == ["owner": "fleet-test"])

        // Re-apply to the live nodes: exit 0, nothing changes, each PUT answered 200.
        let putsBefore = agents.map { $0.server.requestCounter.snapshot()[.put, .ok] }
        let getsBefore = agents.map { $0.server.requestCounter.snapshot()[.get, .ok] }
        let again = try await Fleet.run(["apply", "-f", "\(dir)/probes.yaml", "--agents", "\(dir)/live.txt"] + common)
        #expect(again.status == 0, "\(again)")
        let againTable = try #require(Table(again.stdout))
        #expect(againTable.rows.count == 6)
        #expect(againTable.rows.allSatisfy { $0["STATE"] == "unchanged" && $0["ERROR"] == "-" }, "\(again.stdout)")
        for (agent, before) in zip(agents, putsBefore) {
            #expect(agent.server.requestCounter.snapshot()[.put, .ok] == before + 2)
            #expect(agent.server.requestCounter.snapshot()[.get, .ok] == getsBefore[agents.firstIndex { $0 === agent }!],
                    "apply reads the outcome from the PUT's Probe-Outcome header: no GET first")
            for probe in await agent.manager.list() { #expect(probe.generation == 1) }
        }

        // status -f: every live row active with its mechanism; the dead node fails it.
        let status = try await Fleet.run(["status", "-f", "\(dir)/probes.yaml", "--agents", "\(dir)/agents.txt"] + common)
        #expect(status.status == 1, "\(status)")
        let statusTable = try #require(Table(status.stdout))
        for agent in agents {
            for name in ["switches", "ppid"] {
                let row = try #require(statusTable.row(agent.base, name))
                #expect(row["STATE"] == "active")
                #expect(row["MECHANISM"] == table.row(agent.base, name)?["MECHANISM"])
            }
        }
        #expect(statusTable.row(dead, "ppid")?["STATE"] == "unreachable")
        // status without -f lists what each live node has.
        let listed = try await Fleet.run(["status", "--agents", "\(dir)/live.txt"] + common)
        #expect(listed.status == 0, "\(listed)")
        #expect(Table(listed.stdout)?.rows.map { $0["PROBE"] ?? "" }.sorted() == ["ppid", "ppid", "ppid", "switches", "switches", "switches"])

        // A wrong token: 401 in the ERROR column, exit 1, nothing changed.
        try write("other-token", "not-the-admin-token-0123456789\n")
        chmod("\(dir)/other-token", 0o600)
        try write("one.txt", agents[0].base)
        let denied = try await Fleet.run(["apply", "-f", "\(dir)/probes.yaml", "--agents", "\(dir)/one.txt", "--token-file", "\(dir)/other-token"])
        #expect(denied.status == 1)
        #expect(Table(denied.stdout)?.rows.allSatisfy { $0["STATE"] == "failed" && $0["ERROR"]?.contains("HTTP 401") == true } == true, "\(denied.stdout)")

        // delete: live rows deleted (the dead node fails); again: already gone is success.
        let deleted = try await Fleet.run(["delete", "-f", "\(dir)/probes.yaml", "--agents", "\(dir)/agents.txt"] + common)
        #expect(deleted.status == 1, "\(deleted)")
        let deletedTable = try #require(Table(deleted.stdout))
        for agent in agents {
            #expect(deletedTable.row(agent.base, "switches")?["STATE"] == "deleted")
            #expect(deletedTable.row(agent.base, "ppid")?["STATE"] == "deleted")
            #expect(await agent.manager.list().isEmpty)
        }
        #expect(deletedTable.row(dead, "ppid")?["STATE"] == "unreachable")
        let gone = try await Fleet.run(["delete", "-f", "\(dir)/probes.yaml", "--agents", "\(dir)/live.txt"] + common)
        #expect(gone.status == 0, "\(gone)")
        #expect(Table(gone.stdout)?.rows.allSatisfy { $0["STATE"] == "absent" } == true, "\(gone.stdout)")
        for agent in agents { await agent.stop() }
    }

    @Test("A probe no mechanism can attach: the node's row shows the problem detail and the first failing attempt")
    func attachFailureIsExplained() async throws {
        defer { cleanup() }
        let agent = try await AgentHarness()
        try write("not-elf", "just text\n")
        try write("agents.txt", agent.base + "\n")
        try write("probes.yaml", """
            - name: ok
              target: {type: tracepoint, name: "sched:sched_switch"}
            - name: nope
              target: {type: uprobe, path: "\(dir)/not-elf", symbol: main}
            """)
        let applied = try await Fleet.run(["apply", "-f", "\(dir)/probes.yaml", "--agents", "\(dir)/agents.txt"])
        #expect(applied.status == 1, "\(applied)")
        let table = try #require(Table(applied.stdout))
        #expect(table.row(agent.base, "ok")?["STATE"] == "created")
        let row = try #require(table.row(agent.base, "nope"))
        #expect(row["STATE"] == "failed")
        let error = row["ERROR"] ?? ""
        #expect(error.hasPrefix("HTTP 422: no mechanism could attach"), "\(error)")
        #expect(error.contains("first failure: uprobe unsupported ENOEXEC"), "\(error)")
        #expect(error.contains("is not an ELF file"), "\(error)")
        #expect(await agent.manager.list().map(\.name) == ["ok"])
        await agent.stop()
    }

    @Test("--agents - reads the agent list from standard input, and a process substitution works as a file")
    func agentsFromStdinAndProcessSubstitution() async throws {
        defer { cleanup() }
        let agent = try await AgentHarness()
        try write("probes.yaml", Self.probes)
        let fromStdin = try await Fleet.run(["apply", "-f", "\(dir)/probes.yaml", "--agents", "-"], stdin: "# from a pipe\n\(agent.base)\n")
        #expect(fromStdin.status == 0, "\(fromStdin)")
        #expect(try #require(Table(fromStdin.stdout)).rows.map { $0["STATE"] } == ["created", "created"])
        let substituted = try await Fleet.run(["status", "-f", "\(dir)/probes.yaml", "--agents", "<(printf '%s\\n' \(agent.base))"],
                                              viaShell: true)
        #expect(substituted.status == 0, "\(substituted)")
        #expect(try #require(Table(substituted.stdout)).rows.map { $0["STATE"] } == ["active", "active"])
        let empty = try await Fleet.run(["status", "--agents", "-"], stdin: "")
        #expect(empty.status != 0 && empty.stderr.contains("(standard input) lists no agents"), "\(empty)")
        await agent.stop()
    }

    @Test("An invalid probe or agents file is refused before any request, naming the file, the entry and its line")
    func invalidFilesMakeNoRequests() async throws {
        defer { cleanup() }
        let agent = try await AgentHarness()
        try write("agents.txt", agent.base + "\n")
        let agentsFile = "\(dir)/agents.txt"
        let cases: [(String, String, [String])] = [
            ("fields.yaml", """
                - name: good
                  target: {type: syscall, name: read}
                - target: {type: syscall, name: read}
                - name: typo
                  target: {type: syscall, name: read}
                  mechanism: [kprobe]
                - name: comm
                  target: {type: syscall, name: read}
                  filter: {comm: on}
                - name: bad-syscall
                  target: {type: syscall, name: reed}
                """,
             ["has 4 problems", "entry 2 (line 3): name is required", "entry 3 (line 4, typo): mechanism is not a known field",
              "entry 4 (line 7, comm): filter.comm must be a string, not a boolean (quote the value in YAML",
              "entry 5 (line 10, bad-syscall): target.name unknown syscall 'reed'"]),
            ("dup.yaml", "- {name: a, target: {type: syscall, name: read}}\n- {name: a, target: {type: syscall, name: write}}\n",
             ["entry 2 (line 2, a): name `a` is already used by entry 1"]),
            ("syntax.yaml", "probes:\n  - name: x\n   target: [\n", ["is not valid YAML"]),
            ("top.yaml", "probe:\n  - name: x\n", ["the only one allowed is `probes`"]),
            ("empty.yaml", "", ["is empty"]),
        ]
        for (name, text, messages) in cases {
            try write(name, text)
            let result = try await Fleet.run(["apply", "-f", "\(dir)/\(name)", "--agents", agentsFile])
            #expect(result.status != 0, "\(name) was accepted")
            #expect(result.stdout.isEmpty, "\(name): \(result.stdout)")
            #expect(result.stderr.contains("probe file \(dir)/\(name)"), "\(name): \(result.stderr)")
            for message in messages { #expect(result.stderr.contains(message), "\(name): wanted '\(message)' in\n\(result.stderr)") }
        }
        try write("good.yaml", "- {name: a, target: {type: syscall, name: read}}\n")
        try write("bad-agents.txt", "\(agent.base)\n# comment\nftp://example.com\n")
        let badAgents = try await Fleet.run(["apply", "-f", "\(dir)/good.yaml", "--agents", "\(dir)/bad-agents.txt"])
        #expect(badAgents.status != 0)
        #expect(badAgents.stderr.contains("agents file \(dir)/bad-agents.txt line 3"), "\(badAgents.stderr)")
        let missing = try await Fleet.run(["delete", "-f", "\(dir)/nowhere.yaml", "--agents", agentsFile])
        #expect(missing.status != 0)
        #expect(missing.stderr.contains("probe file \(dir)/nowhere.yaml: does not exist"), "\(missing.stderr)")

        #expect(agent.server.requestCounter.snapshot().total == 0, "a request reached the agent")
        #expect(await agent.manager.list().isEmpty)
        await agent.stop()
    }

    /// A loopback port where nothing listens (bound, then closed).
    static func closedPort() throws -> Int {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw CancellationError() }
        defer { close(fd) }
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_addr.s_addr = inet_addr("127.0.0.1")
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        let bound = withUnsafeMutablePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, length) == 0 && getsockname(fd, $0, &length) == 0 }
        }
        guard bound else { throw CancellationError() }
        return Int(UInt16(bigEndian: address.sin_port))
    }
}

/// The `traceplane fleet` executable as a child process.
enum Fleet {
    struct Result: CustomStringConvertible {
        var status: Int32
        var stdout: String
        var stderr: String
        var description: String { "exit \(status)\nstdout:\n\(stdout)\nstderr:\n\(stderr)" }
    }

    static func run(_ arguments: [String], stdin: String? = nil, viaShell: Bool = false) async throws -> Result {
        let dir = NSTemporaryDirectory() + "fleet-run-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        _ = FileManager.default.createFile(atPath: "\(dir)/out", contents: nil)
        _ = FileManager.default.createFile(atPath: "\(dir)/err", contents: nil)
        let process = Process()
        if viaShell {
            // The arguments are one bash command line after `traceplane fleet` (for `<(...)`).
            process.executableURL = URL(fileURLWithPath: "/bin/bash")
            process.arguments = ["-c", "exec '\(AgentProcess.executable)' fleet " + arguments.joined(separator: " ")]
        } else {
            process.executableURL = URL(fileURLWithPath: AgentProcess.executable)
            process.arguments = ["fleet"] + arguments
        }
        let input = Pipe()
        process.standardInput = input
        process.standardOutput = FileHandle(forWritingAtPath: "\(dir)/out")
        process.standardError = FileHandle(forWritingAtPath: "\(dir)/err")
        // Waits without blocking a thread of the pool that the in-process agents need.
        let status: Int32 = try await withCheckedThrowingContinuation { continuation in
            process.terminationHandler = { continuation.resume(returning: $0.terminationStatus) }
            do {
                try process.run()
                input.fileHandleForWriting.write(Data((stdin ?? "").utf8))
                try? input.fileHandleForWriting.close()
            } catch {
                continuation.resume(throwing: error)
            }
        }
        return Result(status: status,
                      stdout: (try? String(contentsOfFile: "\(dir)/out", encoding: .utf8)) ?? "",
                      stderr: (try? String(contentsOfFile: "\(dir)/err", encoding: .utf8)) ?? "")
    }
}

/// The fleet table, sliced by the header's column starts (cells may hold single spaces).
struct Table {
    var header: [String]
    var rows: [[String: String]]

    init?(_ text: String) {
        let lines = text.split(separator: "\n").map { Array($0) }
        guard let first = lines.first else { return nil }
        let starts = first.indices.filter { $0 < first.count && first[$0] != " " && ($0 == 0 || first[$0 - 1] == " ") }
        header = String(first).split(separator: " ").map(String.init)
        guard header.count == starts.count else { return nil }
        let names = header
        rows = lines.dropFirst().map { chars in
            var row: [String: String] = [:]
            for (k, start) in starts.enumerated() {
                let end = k + 1 < starts.count ? min(starts[k + 1], chars.count) : chars.count
                row[names[k]] = start < end ? String(chars[start..<end]).trimmingCharacters(in: .whitespaces) : ""
            }
            return row
        }
    }

    func row(_ node: String, _ probe: String) -> [String: String]? {
        rows.first { $0["NODE"] == node && $0["PROBE"] == probe }
    }
}
