import Foundation
import Glibc
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// Whatever a network sends, the real agent (real server, real kernel) answers a clear 4xx
/// problem, keeps serving, and holds nothing afterwards. Each test ends by checking that
/// the agent still answers `/healthz`, has no probe, and holds exactly the BPF objects and
/// perf events it held before.
///
/// Where libmicrohttpd answers by itself (the agent never sees the request), the answer is
/// its own short `text/html` page, not a problem: a malformed request line or header, a
/// request head larger than the per-connection memory (431, or 414 for a long target), an
/// invalid `Content-Length` (400/413). Those are checked by status only.
@Suite(.serialized, .enabled(if: RootRequirement.check("HostileInputTests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct HostileInputTests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    @Test("Malformed JSON, wrong types, unknown and missing fields, huge numbers and negative TTLs are 400 problems naming the field")
    func malformedSpecs() async throws {
        try await withAgent { agent in
            let target = #""target":{"type":"syscall","name":"getpid"}"#
            let cases: [(body: String, field: String)] = [
                ("{", "(body)"),
                ("", "(body)"),
                ("null", "(body)"),
                (#"[{"target":{}}]"#, "(body)"),
                (#"{"target":{"type":"syscall","name":"getpid"},}"#, "(body)"),
                (#"{"target":{"type":"syscall","name":"getpid"},"mechanisms":["tp_btf",]}"#, "(body)"),
                (#"{'target':{'type':'syscall','name':'getpid'}}"#, "(body)"),
                (#"{"target":{"type":"syscall","name":"getpid"}}{}"#, "(body)"),
                ("{\"target\":{\"type\":\"syscall\",\"name\":\"getpid\"}}\u{0}", "(body)"),
                (#"{"target":{"type":"syscall","name":"\ud800"}}"#, "target.name"),
                (#"{"target":"syscall:getpid"}"#, "target"),
                (#"{"target":{"type":"syscall","name":42}}"#, "target.name"),
                (#"{"target":{"type":7,"name":"getpid"}}"#, "target.type"),
                (#"{"target":{"type":"kernel","name":"getpid"}}"#, "target.type"),
                (#"{\#(target),"mechanisms":"tracepoint"}"#, "mechanisms"),
                (#"{\#(target),"mechanisms":[1]}"#, "mechanisms[0]"),
                (#"{\#(target),"labels":{"owner":1}}"#, "labels.owner"),
                (#"{\#(target),"filter":{"pid":"1"}}"#, "filter.pid"),
                (#"{\#(target),"enabled":true}"#, "enabled"),
                (#"{"target":{"type":"syscall","name":"getpid","arguments":[]}}"#, "target.arguments"),
                (#"{"name":"x"}"#, "target"),
                (#"{"target":null}"#, "target"),
                (#"{"target":{"name":"getpid"}}"#, "target.type"),
                (#"{"target":{"type":"syscall"}}"#, "target.name"),
                (#"{"target":{"type":"uprobe","path":"/bin/true"}}"#, "target.symbol"),
                (#"{\#(target),"ttl_seconds":-1}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":0}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":31536001}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":1.5}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":"60"}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":-9223372036854775809}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":99999999999999999999999}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":1e400}"#, "ttl_seconds"),
                (#"{\#(target),"ttl_seconds":-1e400}"#, "ttl_seconds"),
                (#"{\#(target),"filter":{"pid":9223372036854775807}}"#, "filter.pid"),
                (#"{\#(target),"filter":{"pid":-1}}"#, "filter.pid"),
                (#"{\#(target),"filter":{"comm":"a-command-name-longer-than-15"}}"#, "filter.comm"),
                (#"{\#(target),"filter":{"comm":"ééééééééé"}}"#, "filter.comm"),
                (#"{\#(target),"mechanisms":[]}"#, "mechanisms"),
                (#"{\#(target),"mechanisms":["uprobe"]}"#, "mechanisms[0]"),
                (#"{\#(target),"labels":{"__reserved":"x"}}"#, "labels.__reserved"),
                (#"{\#(target),"labels":{"a":"\#(String(repeating: "v", count: 257))"}}"#, "labels.a"),
            ]
            for (body, field) in cases {
                let reply = try await agent.request("POST", "/v1/probes", json: body)
                try expectProblem(reply, 400, field: field, "POST \(body.prefix(80))")
            }
            // Too many of everything at once: every error is listed.
            let labels = (0..<40).map { #""l\#($0)":"v""# }.joined(separator: ",")
            let mechanisms = Array(repeating: #""tp_btf""#, count: 17).joined(separator: ",")
            let crowded = try await agent.request(
                "POST", "/v1/probes", json: #"{"name":"-x",\#(target),"labels":{\#(labels)},"mechanisms":[\#(mechanisms)],"ttl_seconds":-5}"#)
            try expectProblem(crowded, 400, field: "name")
            let fields = Set(((crowded.json?["errors"] as? [[String: Any]]) ?? []).compactMap { $0["field"] as? String })
            #expect(fields.isSuperset(of: ["name", "labels", "mechanisms", "ttl_seconds"]), "\(fields)")
        }
    }

    @Test("Deeply nested JSON is refused before decoding, wherever the nesting is")
    func deepNesting() async throws {
        try await withAgent { agent in
            let bodies = [
                String(repeating: "[", count: 60_000),
                String(repeating: "{\"a\":", count: 10_000) + "1" + String(repeating: "}", count: 10_000),
                #"{"target":{"type":"syscall","name":"getpid"},"labels":"# + String(repeating: "[", count: 20) + String(repeating: "]", count: 20) + "}",
            ]
            for body in bodies {
                let reply = try await agent.request("POST", "/v1/probes", json: body)
                try expectProblem(reply, 400, field: "(body)", String(body.prefix(40)))
            }
        }
    }

    @Test("Bodies over 64 KiB are 413 (declared or chunked), other media types 415, unknown methods 405 with Allow, unknown paths 404")
    func limitsAndRouting() async throws {
        try await withAgent { agent in
            let port = agent.server.port
            let big = String(repeating: " ", count: 64 * 1024 + 1)
            let declared = try await raw(port, "POST /v1/probes HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: \(big.utf8.count)\r\nConnection: close\r\n\r\n\(big)")
            try expectProblem(declared, 413)
            #expect(declared.json?["limit_bytes"] as? Int == 65536)
            let chunk = String(repeating: "a", count: 0x8000)
            let chunks = String(repeating: "8000\r\n\(chunk)\r\n", count: 3) + "0\r\n\r\n"
            let chunked = try await raw(port, "PUT /v1/probes/big HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n\(chunks)")
            try expectProblem(chunked, 413)
            // Exactly at the limit is read (and then judged on its content).
            let atLimit = try await agent.request("POST", "/v1/probes", json: "{" + String(repeating: " ", count: 64 * 1024 - 2) + "}")
            try expectProblem(atLimit, 400, field: "target")

            for contentType in ["text/plain", "application/x-www-form-urlencoded", "application/json-seq", "multipart/form-data; boundary=x", ""] {
                let reply = try await agent.request("POST", "/v1/probes", json: #"{"target":{"type":"syscall","name":"getpid"}}"#, contentType: contentType)
                try expectProblem(reply, 415, contentType)
                #expect(reply.json?["accepted"] as? [String] == ["application/json"])
            }
            let noType = try await raw(port, "PUT /v1/probes/x HTTP/1.1\r\nHost: a\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            try expectProblem(noType, 415)

            for (method, path, allow) in [("PATCH", "/v1/probes", "GET, HEAD, POST"), ("DELETE", "/v1/probes", "GET, HEAD, POST"),
                                          ("POST", "/healthz", "GET, HEAD"), ("BREW", "/v1/capabilities", "GET, HEAD"),
                                          ("TRACE", "/v1/probes/x", "GET, HEAD, PUT, DELETE"), ("GET", "/v1/capabilities/refresh", "POST")] {
                let reply = try await raw(port, "\(method) \(path) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                try expectProblem(reply, 405, "\(method) \(path)")
                #expect(reply.headers["allow"] == allow, "\(method) \(path)")
                #expect((reply.json?["allowed"] as? [String])?.joined(separator: ", ") == allow)
            }
            for path in ["/", "/v2/probes", "/v1/probes/a/b", "/v1/probes/a/metrics/x", "/v1//probes", "/../../etc/passwd",
                         "/v1/probes/../../healthz", "/%2e%2e/%2e%2e/etc/passwd", "/healthz/", "/HEALTHZ", "/v1/probes%2fx"] {
                let reply = try await raw(port, "GET \(path) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                try expectProblem(reply, 404, path)
            }
            let conflicting = try await raw(port, "POST /v1/probes HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 5\r\nConnection: close\r\n\r\n{}")
            try expectProblem(conflicting, 400, field: "Content-Length")
        }
    }

    @Test("Path traversal, NUL, control bytes and unicode in names: 400 on PUT, 404 on GET and DELETE, 400 in the body")
    func oddNames() async throws {
        try await withAgent { agent in
            let spec = #"{"target":{"type":"syscall","name":"getpid"}}"#
            let names = ["%2e%2e%2f", "%2e%2e", "..%2f..%2fetc%2fpasswd", "%2e", "a%00b", "%00", "a%0d%0aSet-Cookie:%20x", "%C3%A9t%C3%A9",
                         "%F0%9F%90%9D", "%FF%FE", "%ef%bf%bd", "A", "-lead", "_lead", String(repeating: "a", count: 64), "a%20b", "a%2Fb", "%25"]
            for name in names {
                try expectProblem(try await agent.request("PUT", "/v1/probes/\(name)", json: spec), 400, field: "name", name)
                try expectProblem(try await agent.request("GET", "/v1/probes/\(name)"), 404, name)
                try expectProblem(try await agent.request("GET", "/v1/probes/\(name)/metrics"), 404, name)
                try expectProblem(try await agent.request("DELETE", "/v1/probes/\(name)"), 404, name)
            }
            // Raw bytes the client did not encode: libmicrohttpd passes them on (NUL ends the target).
            for target in ["/v1/probes/\u{E9}", "/v1/probes/a\u{1}b", "/v1/probes/\u{7F}"] {
                let reply = try await raw(agent.server.port, "GET \(target) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
                try expectProblem(reply, 404, target)
            }
            let bodyNames = [#""../x""#, #""a\u0000b""#, #""é""#, #""a/b""#, #""""#, #""\n""#]
            for name in bodyNames {
                try expectProblem(try await agent.request("POST", "/v1/probes", json: #"{"name":\#(name),"target":{"type":"syscall","name":"getpid"}}"#),
                                  400, field: "name", name)
            }
            // Names in targets: no traversal into tracefs, no odd bytes.
            let targets = [
                (#"{"type":"tracepoint","name":"../../../etc:passwd"}"#, "target.name"),
                (#"{"type":"tracepoint","name":"syscalls/../x:y"}"#, "target.name"),
                (#"{"type":"tracepoint","name":"sched:..%2fsched_switch"}"#, "target.name"),
                (#"{"type":"tracepoint","name":"sched:sched_switch:x"}"#, "target.name"),
                (#"{"type":"tracepoint","name":"sched:sched_switch\u0000"}"#, "target.name"),
                (#"{"type":"function","name":"../vfs_read"}"#, "target.name"),
                (#"{"type":"function","name":"vfs_read\n"}"#, "target.name"),
                (#"{"type":"syscall","name":"../read"}"#, "target.name"),
                (#"{"type":"syscall","name":"no_such_syscall"}"#, "target.name"),
                (#"{"type":"syscall","name":"read","path":"/bin/true"}"#, "target"),
                (#"{"type":"uprobe","path":"bin/true","symbol":"main"}"#, "target.path"),
                (#"{"type":"uprobe","path":"/usr/../bin/true","symbol":"main"}"#, "target.path"),
                (#"{"type":"uprobe","path":"/bin/true\u0000.so","symbol":"main"}"#, "target.path"),
                (#"{"type":"uprobe","path":"/bin/true","symbol":"main; rm -rf /"}"#, "target.symbol"),
                (#"{"type":"uprobe","path":"/bin/true","symbol":"main","name":"x"}"#, "target.name"),
            ]
            for (target, field) in targets {
                try expectProblem(try await agent.request("POST", "/v1/probes", json: #"{"target":\#(target)}"#), 400, field: field, target)
            }
        }
    }

    @Test("A uprobe path that is missing, a directory, a FIFO, a device or not ELF, or a symbol that is not there: a prompt 422 naming the cause")
    func unusableUprobeTargets() async throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("traceplane-hostile-\(getpid())")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let fifo = directory.appendingPathComponent("fifo").path
        #expect(mkfifo(fifo, 0o600) == 0)
        let text = directory.appendingPathComponent("script.sh").path
        #expect(FileManager.default.createFile(atPath: text, contents: Data("#!/bin/sh\necho hi\n".utf8)))
        let core = directory.appendingPathComponent("core.elf").path
        // An ELF header of type ET_CORE (4), little-endian, 64-bit.
        var header = [UInt8](repeating: 0, count: 64)
        header[0...6] = [0x7F, 0x45, 0x4C, 0x46, 2, 1, 1]
        header[16] = 4
        #expect(FileManager.default.createFile(atPath: core, contents: Data(header)))
        let executable = try #require(try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe"))

        try await withAgent { agent in
            let cases: [(path: String, symbol: String, errno: String, says: String)] = [
                ("/nonexistent/traceplane/lib.so", "malloc", "ENOENT", "does not exist"),
                ("/etc/hostname/x", "malloc", "ENOTDIR", "does not exist"),
                ("/etc", "malloc", "EISDIR", "is a directory"),
                (fifo, "malloc", "ENOEXEC", "is a FIFO"),
                ("/dev/null", "malloc", "ENOEXEC", "is a device"),
                ("/etc/hostname", "malloc", "ENOEXEC", "is not an ELF file"),
                (text, "main", "ENOEXEC", "is not an ELF file"),
                (core, "main", "ENOEXEC", "not an executable or shared object"),
            ] + (FileManager.default.fileExists(atPath: "/sys/kernel/tracing/trace_pipe")
                 ? [("/sys/kernel/tracing/trace_pipe", "main", "ENOEXEC", "is not an ELF file")] : [])
            for (path, symbol, errno, says) in cases {
                let started = ContinuousClock.now
                let reply = try await agent.request("PUT", "/v1/probes/u", json: #"{"target":{"type":"uprobe","path":"\#(path)","symbol":"\#(symbol)"}}"#)
                #expect(ContinuousClock.now - started < .seconds(5), "\(path) took \(ContinuousClock.now - started)")
                try expectProblem(reply, 422, path)
                let attempts = try #require(reply.json?["attempts"] as? [[String: Any]], "\(path)")
                #expect(attempts.count == 1)
                #expect(attempts.first?["mechanism"] as? String == "uprobe")
                #expect(attempts.first?["errno"] as? String == errno, "\(path): \(attempts)")
                let message = attempts.first?["message"] as? String ?? "", detail = reply.json?["detail"] as? String ?? ""
                #expect(message.contains(says), "\(path): \(attempts)")
                #expect(detail.contains(path), "\(detail)")
            }
            // A real ELF file without the symbol: the kernel side (libbpf) says so.
            let missing = try await agent.request("PUT", "/v1/probes/u", json: #"{"target":{"type":"uprobe","path":"\#(executable)","symbol":"traceplane_no_such_symbol"}}"#)
            try expectProblem(missing, 422)
            let attempts = try #require(missing.json?["attempts"] as? [[String: Any]])
            #expect(attempts.first?["outcome"] as? String == "unsupported")
            #expect(attempts.first?["stage"] as? String == "attach")
            let message = attempts.first?["message"] as? String ?? ""
            #expect(message.contains("traceplane_no_such_symbol"), "\(attempts)")
            #expect(try await agent.request("GET", "/v1/probes/u").status == 404)
        }
    }

    @Test("Hundreds of headers are served; a request head beyond the connection memory gets libmicrohttpd's 431 or 414")
    func manyHeaders() async throws {
        try await withAgent { agent in
            let port = agent.server.port
            let some = (0..<300).map { "X-Header-\($0): value-\($0)\r\n" }.joined()
            let served = try await raw(port, "GET /healthz HTTP/1.1\r\nHost: a\r\n\(some)Connection: close\r\n\r\n")
            #expect(served.status == 200)
            let badSpec = try await raw(port, "POST /v1/probes HTTP/1.1\r\nHost: a\r\n\(some)Content-Type: application/json\r\nContent-Length: 2\r\nConnection: close\r\n\r\n{}")
            try expectProblem(badSpec, 400, field: "target")

            let many = (0..<3000).map { "X-Header-\($0): value-\($0)\r\n" }.joined()
            let tooMany = try await raw(port, "GET /healthz HTTP/1.1\r\nHost: a\r\n\(many)Connection: close\r\n\r\n")
            #expect(tooMany.status == 431 || tooMany.status == 0, "got \(tooMany.status)")
            let hugeHeader = try await raw(port, "GET /healthz HTTP/1.1\r\nHost: a\r\nX-Big: \(String(repeating: "b", count: 40_000))\r\nConnection: close\r\n\r\n")
            #expect(hugeHeader.status == 431 || hugeHeader.status == 0, "got \(hugeHeader.status)")
            let longTarget = try await raw(port, "GET /v1/probes/\(String(repeating: "a", count: 40_000)) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
            #expect([414, 431, 0].contains(longTarget.status), "got \(longTarget.status)")
            for malformed in ["GET /healthz\r\n\r\n", "GET /healthz HTTP/1.1\r\nNo colon here\r\n\r\n",
                              "POST /v1/probes HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n{}"] {
                let reply = try await raw(port, malformed)
                #expect(reply.status == 400 || reply.status == 0, "\(malformed.debugDescription): \(reply.status)")
            }
            #expect(try await raw(port, "GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n").status == 200)
        }
    }

    @Test("Slow clients sending a byte a second do not hold up others, and are served once their request is complete")
    func slowClients() async throws {
        try await withAgent { agent in
            let port = agent.server.port
            let request = Array("GET /healthz HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8)
            let body = #"{"target":{"type":"syscall","name":"getpid"},"name":"slow"}"#
            let post = Array("PUT /v1/probes/slow HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\nConnection: close\r\n\r\n\(body)".utf8)
            let seconds = 4
            // Three slow heads and one slow body: a byte a second for `seconds`, then the rest.
            let slow = [request, request, request, post].enumerated().map { index, bytes in
                Task.detached { () throws -> RawResponse in
                    try await onThread {
                        let connection = try RawConnection(port: port)
                        let trickle = index == 3 ? bytes.count - body.utf8.count : 0
                        try connection.send(Array(bytes[..<trickle]))
                        for i in 0..<seconds {
                            try connection.send([bytes[trickle + i]])
                            sleep(1)
                        }
                        try connection.send(Array(bytes[(trickle + seconds)...]))
                        return try connection.readResponse()
                    }
                }
            }
            // Meanwhile everyone else is answered at once.
            let started = ContinuousClock.now
            var worst = Duration.zero
            while ContinuousClock.now - started < .seconds(seconds - 1) {
                let before = ContinuousClock.now
                #expect(try await agent.request("GET", "/healthz").status == 200)
                #expect(try await agent.request("GET", "/v1/probes").status == 200)
                worst = max(worst, ContinuousClock.now - before)
                try await Task.sleep(for: .milliseconds(100))
            }
            #expect(worst < .milliseconds(500), "a request took \(worst) while slow clients were connected")
            for (index, task) in slow.enumerated() {
                let reply = try await task.value
                #expect(reply.status == (index == 3 ? 201 : 200), "slow client \(index): \(reply.status)")
            }
            #expect(try await agent.request("DELETE", "/v1/probes/slow").status == 204)
        }
    }

    @Test("300 concurrent connections are all answered; 300 concurrent bad specs are all 400 problems")
    func manyConnections() async throws {
        try await withAgent { agent in
            let port = agent.server.port
            let statuses = try await onThread { () throws -> [Int] in
                // All open at once before any request is sent, then all answered.
                let connections = try (0..<300).map { _ in try RawConnection(port: port) }
                defer { connections.forEach { $0.close() } }
                for (i, connection) in connections.enumerated() {
                    let path = i % 3 == 0 ? "/healthz" : i % 3 == 1 ? "/v1/probes" : "/v1/probes/none"
                    try connection.send(Array("GET \(path) HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n".utf8))
                }
                return try connections.map { try $0.readResponse().status }
            }
            #expect(statuses.count == 300)
            #expect(statuses.enumerated().allSatisfy { i, status in status == (i % 3 == 2 ? 404 : 200) },
                    "\(Dictionary(grouping: statuses, by: { $0 }).mapValues(\.count))")

            try await withThrowingTaskGroup(of: AgentHarness.Reply.self) { group in
                for i in 0..<300 {
                    group.addTask {
                        try await agent.request("POST", "/v1/probes", json: #"{"name":"c\#(i)","target":{"type":"syscall","name":"getpid"},"ttl_seconds":-\#(i)}"#)
                    }
                }
                for try await reply in group { try expectProblem(reply, 400, field: "ttl_seconds") }
            }
        }
    }
}

// MARK: - Helpers

/// Runs `body` against a fresh agent, then checks it still serves and holds nothing more
/// than before: no probe, the same BPF programs, maps, links and perf events.
private func withAgent(_ body: (AgentHarness) async throws -> Void, sourceLocation: SourceLocation = #_sourceLocation) async throws {
    let agent = try await AgentHarness()
    Reaper.shared.drain()
    let before = FDCensus.take()
    do {
        try await body(agent)
    } catch {
        await agent.stop()
        throw error
    }
    #expect(try await agent.request("GET", "/healthz").status == 200, sourceLocation: sourceLocation)
    let listed = try await agent.request("GET", "/v1/probes")
    #expect(String(decoding: listed.body, as: UTF8.self) == "{\"probes\":[]}\n", sourceLocation: sourceLocation)
    #expect(await agent.manager.count == 0, sourceLocation: sourceLocation)
    Reaper.shared.drain()
    let after = FDCensus.take()
    #expect(after.kernelObjects == before.kernelObjects, "before: \(before); after: \(after)", sourceLocation: sourceLocation)
    await agent.stop()
}

/// An agent problem: the status, `application/problem+json`, the standard members, and for a
/// 400 an `errors` list (naming `field` when given).
private func expectProblem(_ reply: AgentHarness.Reply, _ status: Int, field: String? = nil, _ context: String = "",
                           sourceLocation: SourceLocation = #_sourceLocation) throws {
    let body = String(decoding: reply.body.prefix(600), as: UTF8.self)
    #expect(reply.status == status, "\(context): \(reply.status) \(body)", sourceLocation: sourceLocation)
    #expect(reply.contentType == "application/problem+json", "\(context): \(reply.contentType)", sourceLocation: sourceLocation)
    let json = try #require(reply.json, "\(context): not a JSON object: \(body)", sourceLocation: sourceLocation)
    #expect((json["type"] as? String)?.hasPrefix("https://traceplane.dev/problems/") == true, "\(context)", sourceLocation: sourceLocation)
    #expect(json["title"] is String && json["detail"] is String, "\(context)", sourceLocation: sourceLocation)
    #expect(json["status"] as? Int == status, "\(context)", sourceLocation: sourceLocation)
    guard status == 400 else { return }
    let errors = (json["errors"] as? [[String: Any]]) ?? []
    #expect(!errors.isEmpty && errors.allSatisfy { $0["field"] is String && $0["message"] is String },
            "\(context): errors \(errors)", sourceLocation: sourceLocation)
    if let field {
        #expect(errors.contains { $0["field"] as? String == field }, "\(context): no error for \(field) in \(body)",
                sourceLocation: sourceLocation)
    }
}

/// Blocking socket work on a thread of its own: never on the cooperative pool (which runs
/// the server's handlers) nor on Dispatch's (which URLSession and the planner use).
private func onThread<T: Sendable>(_ work: @escaping @Sendable () throws -> T) async throws -> T {
    try await withCheckedThrowingContinuation { continuation in
        Thread.detachNewThread { continuation.resume(with: Result { try work() }) }
    }
}

/// One raw exchange: the bytes as given, the response as parsed (status 0 when the server
/// closed the connection without one).
private func raw(_ port: Int, _ request: String) async throws -> AgentHarness.Reply {
    let response = try await onThread { () throws -> RawResponse in
        let connection = try RawConnection(port: port)
        defer { connection.close() }
        try? connection.send(Array(request.utf8))  // the server may close early (413, 431)
        return try connection.readResponse()
    }
    return AgentHarness.Reply(status: response.status, headers: response.headers, body: Data(response.body))
}

private struct RawResponse: Sendable {
    var status: Int
    var headers: [String: String]
    var body: [UInt8]
}

private struct SocketFailure: Error, CustomStringConvertible {
    var operation: String
    var code: Int32
    var description: String { "\(operation): \(String(cString: strerror(code)))" }
}

/// A client socket to 127.0.0.1 that writes exactly what it is given.
private final class RawConnection: @unchecked Sendable {
    // Used by one thread at a time.
    private var fd: Int32

    init(port: Int, timeoutSeconds: Int = 15) throws {
        fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw SocketFailure(operation: "socket", code: errno) }
        var timeout = timeval(tv_sec: timeoutSeconds, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let code = errno
            Glibc.close(fd)
            throw SocketFailure(operation: "connect", code: code)
        }
    }

    deinit { close() }

    func close() {
        if fd >= 0 { Glibc.close(fd) }
        fd = -1
    }

    func send(_ bytes: [UInt8]) throws {
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw SocketFailure(operation: "send", code: errno) }
            sent += n
        }
    }

    /// Reads one response: the head, then `Content-Length` bytes (or up to EOF).
    func readResponse() throws -> RawResponse {
        var data: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 16 * 1024)
        var headEnd: Int?
        var expected: Int?
        var response = RawResponse(status: 0, headers: [:], body: [])
        while true {
            if let end = headEnd, let expected, data.count - end >= expected { break }
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            if n < 0 {
                if errno == ECONNRESET { break }
                throw SocketFailure(operation: "recv", code: errno)
            }
            data += buffer[..<n]
            if headEnd == nil, let range = findHeadEnd(data) {
                headEnd = range
                let head = String(decoding: data[..<range], as: UTF8.self)
                let lines = head.components(separatedBy: "\r\n")
                let statusParts = lines[0].split(separator: " ")
                response.status = statusParts.count > 1 ? Int(statusParts[1]) ?? 0 : 0
                for line in lines.dropFirst() {
                    guard let colon = line.firstIndex(of: ":") else { continue }
                    response.headers[line[..<colon].lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                }
                expected = response.headers["content-length"].flatMap { Int($0) }
            }
        }
        if let end = headEnd { response.body = Array(data[end...].prefix(expected ?? Int.max)) }
        return response
    }

    private func findHeadEnd(_ data: [UInt8]) -> Int? {
        guard data.count >= 4 else { return nil }
        for i in 0...(data.count - 4) where data[i] == 13 && data[i + 1] == 10 && data[i + 2] == 13 && data[i + 3] == 10 {
            return i + 4
        }
        return nil
    }
}
