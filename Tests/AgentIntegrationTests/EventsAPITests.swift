import Foundation
import Glibc
import Testing
import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// `GET /v1/probes/{name}/events` on the real agent and the real kernel (root): probes made
/// over real HTTP, streams read by curl -N and by a raw-socket Python client
/// (tests/events/sse_client.py), the workload tests/events/sleeper.c with known numbers of
/// slow and fast calls.
@Suite(.serialized, .enabled(if: RootRequirement.check("EventsAPITests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct EventsAPITests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    static let repository = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("50 calls over the threshold among 10,000 fast ones: exactly those 50 reach curl -N and the Python client, in order, with pid, tid, comm and latency",
          arguments: [nil, "tracepoint"] as [String?])
    func slowCallsStreamed(mechanism: String?) async throws {
        let agent = try await AgentHarness()
        do {
            let name = "ev-slow-\(mechanism ?? "auto")"
            let mechanisms = mechanism.map { #","mechanisms":["\#($0)"]"# } ?? ""
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/\(name)", json: """
                {"target":{"type":"syscall","name":"nanosleep"},"filter":{"comm":"tp-sleeper"}\(mechanisms),
                 "events":{"min_latency_ns":1000000,"max_per_second":1000}}
                """)
            #expect(put.status == 201, "\(put.body)")
            let url = agent.base + "/v1/probes/\(name)/events"
            let curl = try StreamClient.curl(url)
            let python = try StreamClient.python(url, ["--ndjson"])
            try await Self.waitFor(agent, name) { $0.subscribers == 2 }

            let sleeper = try Sleeper(["mixed", "10000", "50", "2000000"])
            try sleeper.run()
            let counts = try await Self.waitFor(agent, name) { $0.consumed >= 50 }
            let metrics = try await agent.manager.metrics(name)
            #expect(metrics.calls == 10_050 && metrics.errors == 10_000, "every nanosleep of the sleeper is still aggregated (the fast ones fail with EINVAL)")
            #expect(counts.emitted == 50 && counts.throttled == 0 && counts.lost == 0 && counts.consumed == 50, "\(counts)")
            #expect(try CurlClient.run("DELETE", agent.base + "/v1/probes/\(name)").status == 204)

            for (client, items) in [("curl", try curl.finish()), ("python", try python.finish())] {
                let calls = items.filter { $0["event"] as? String == "call" }
                #expect(calls.count == 50, "\(client): \(calls.count) events")
                #expect(calls.compactMap { $0["seq"] as? Int } == Array(1...50), "\(client): in order, none missing")
                for call in calls {
                    #expect(call["pid"] as? Int == Int(sleeper.pid) && call["tid"] as? Int == Int(sleeper.tid), "\(client): \(call)")
                    #expect(call["comm"] as? String == Sleeper.comm && call["thread"] as? String == Sleeper.comm, "\(client): \(call)")
                    let latency = call["latency_ns"] as? Int ?? 0
                    #expect(latency >= 1_000_000 && latency < 1_000_000_000, "\(client): latency \(latency)")
                    #expect(call["ret"] as? Int == 0 && call["errno"] is NSNull, "\(client): \(call)")
                    // The wall-clock time against this host's clock: the whole test takes seconds.
                    let time = (call["time"] as? String).flatMap(Self.rfc3339.date(from:))
                    #expect(time.map { abs($0.timeIntervalSinceNow) < 120 } == true && call["cgroup_id"] is Int, "\(client): \(call)")
                }
                #expect(items.last?["event"] as? String == "end" && items.last?["reason"] as? String == "deleted", "\(client): \(items.suffix(2))")
            }
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("max_per_second 10 over 1,000 slow calls: at most 10 in any second of the kernel's clock, throttled is exactly the rest")
    func rateLimit() async throws {
        let agent = try await AgentHarness()
        do {
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/ev-rate", json: """
                {"target":{"type":"syscall","name":"nanosleep"},"filter":{"comm":"tp-sleeper"},
                 "events":{"min_latency_ns":1000000,"max_per_second":10}}
                """)
            #expect(put.status == 201, "\(put.body)")
            let client = try StreamClient.python(agent.base + "/v1/probes/ev-rate/events", [])
            try await Self.waitFor(agent, "ev-rate") { $0.subscribers == 1 }
            try Sleeper(["burst", "1000", "1200000"]).run()
            let counts = try await Self.waitFor(agent, "ev-rate") { $0.emitted + $0.throttled >= 1000 && $0.consumed == $0.emitted }
            #expect(counts.emitted + counts.throttled == 1000 && counts.lost == 0, "\(counts)")
            #expect(try CurlClient.run("DELETE", agent.base + "/v1/probes/ev-rate").status == 204)
            let calls = try client.finish().filter { $0["event"] as? String == "call" }
            #expect(UInt64(calls.count) == counts.emitted, "every admitted event arrives")
            let perSecond = Dictionary(grouping: calls) { ($0["ktime_ns"] as? Int ?? 0) / 1_000_000_000 }.mapValues(\.count)
            #expect(perSecond.values.allSatisfy { $0 <= 10 }, "\(perSecond)")
            // 1,000 calls of 1.2 ms span at least two seconds: the full ones give 10 each.
            #expect(perSecond.count >= 2 && perSecond.values.filter { $0 == 10 }.count >= 1, "\(perSecond)")
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("Three subscribers, one of which never reads: the other two get all 50,000 events, memory stays bounded, the stuck one gets gaps, and everything is freed")
    func stuckSubscriber() async throws {
        let before = FDCensus.take()
        let agent = try await AgentHarness()
        let opened = FDCensus.take()
        do {
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/ev-flood", json: """
                {"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"tp-sleeper"},
                 "events":{"min_latency_ns":0,"max_per_second":16777215,"buffer_kib":16384}}
                """)
            #expect(put.status == 201, "\(put.body)")
            let url = agent.base + "/v1/probes/ev-flood/events"
            // The two readers are curl (SSE and NDJSON into files): they keep up on a busy machine.
            let readers = [try StreamClient.curl(url), try StreamClient.curl(url, headers: ["Accept: application/x-ndjson"])]
            let stuck = try StreamClient.python(url, ["--ndjson", "--rcvbuf", "4096", "--stall", "15"])
            try await Self.waitFor(agent, "ev-flood") { $0.subscribers == 3 }
            let rssBefore = Self.residentKiB()
            // 10,000 a second for 5 s: the readers (a Python client parsing every line) keep up.
            try Sleeper(["getppid", "50000", "10000"]).run()
            let counts = try await Self.waitFor(agent, "ev-flood") { $0.consumed >= 50_000 }
            let rssAfter = Self.residentKiB()
            #expect(counts.emitted == 50_000 && counts.lost == 0 && counts.throttled == 0, "\(counts)")
            #expect(rssAfter - rssBefore < 64 * 1024, "RSS grew by \(rssAfter - rssBefore) KiB streaming 50,000 events to a stuck client")
            // The stuck client reads after its stall: let it catch up on what is queued for it.
            try await Task.sleep(for: .seconds(16))
            #expect(try CurlClient.run("DELETE", agent.base + "/v1/probes/ev-flood").status == 204)
            for reader in readers {
                let items = try reader.finish()
                let calls = items.filter { $0["event"] as? String == "call" }
                #expect(calls.count == 50_000 && !items.contains { $0["event"] as? String == "gap" }, "\(calls.count) events")
                #expect(calls.last?["seq"] as? Int == 50_000)
                #expect(items.last?["event"] as? String == "end")
            }
            let items = try stuck.finish()
            let got = items.filter { $0["event"] as? String == "call" }.count
            let missed = items.filter { $0["event"] as? String == "gap" }.reduce(0) { $0 + ($1["missed"] as? Int ?? 0) }
            #expect(missed > 0 && got + missed == 50_000, "the stuck client: \(got) events, \(missed) missed")
            #expect(items.last?["event"] as? String == "end")
            let final = try await Self.waitForCensus { $0.kernelObjects == opened.kernelObjects && $0.total <= opened.total }
            #expect(final.kernelObjects == opened.kernelObjects, "streams and the probe freed everything: \(opened) → \(final)")
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
        let after = try await Self.waitForCensus { $0.kernelObjects == before.kernelObjects }
        #expect(after.kernelObjects == before.kernelObjects, "\(before) → \(after)")
    }

    @Test("Last-Event-ID resumes from the replay buffer, or says gap with the exact count; a replacing PUT ends streams with end replaced; disconnects unsubscribe")
    func resumeAndReplace() async throws {
        let agent = try await AgentHarness()
        do {
            let spec = #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"tp-sleeper"},"events":{"min_latency_ns":0,"max_per_second":100000}}"#
            #expect(try CurlClient.run("PUT", agent.base + "/v1/probes/ev-resume", json: spec).status == 201)
            try Sleeper(["getppid", "3000", "0"]).run()
            try await Self.waitFor(agent, "ev-resume") { $0.consumed == 3000 }
            let url = agent.base + "/v1/probes/ev-resume/events"

            // Within the replay buffer: exactly the ten after 2990.
            let near = try StreamClient.python(url, ["--ndjson", "--last-event-id", "2990", "--stop-after", "10"]).finish()
            #expect(near.filter { $0["event"] as? String == "call" }.compactMap { $0["seq"] as? Int } == Array(2991...3000))
            // Beyond it: a gap of exactly the events no longer kept, then all that are.
            let far = try StreamClient.curl(url + "?follow=false", headers: ["Last-Event-ID: 100"]).finish()
            let kept = 3000 - 1024
            #expect(far.first?["event"] as? String == "gap" && far.first?["missed"] as? Int == kept - 100, "\(far.prefix(2))")
            #expect(far.filter { $0["event"] as? String == "call" }.compactMap { $0["seq"] as? Int } == Array((kept + 1)...3000))
            #expect(far.last?["event"] as? String == "end" && far.last?["reason"] as? String == "caught-up", "\(far.suffix(1))")
            // The client that left is unsubscribed once a write to it fails: new events make
            // the agent write (the first write after a close may still be accepted by the socket).
            var left = try await agent.manager.metrics("ev-resume").events
            for _ in 0..<20 where left?.subscribers != 0 {
                try Sleeper(["getppid", "10", "0"]).run()
                try await Task.sleep(for: .milliseconds(200))
                left = try await agent.manager.metrics("ev-resume").events
            }
            #expect(left?.subscribers == 0, "a client that disconnected is unsubscribed: \(String(describing: left))")

            // Bad ids are refused.
            let bad = try CurlClient.run("GET", url, extra: ["-H", "Last-Event-ID: x1"])
            #expect(bad.status == 400 && bad.headers.lowercased().contains("application/problem+json"), "\(bad.body)")
            let none = try CurlClient.run("PUT", agent.base + "/v1/probes/ev-none", json: #"{"target":{"type":"syscall","name":"getppid"}}"#)
            #expect(none.status == 201)
            let conflict = try CurlClient.run("GET", agent.base + "/v1/probes/ev-none/events")
            #expect(conflict.status == 409 && conflict.body.contains("probe-has-no-events"), "\(conflict.body)")
            #expect(try CurlClient.run("GET", agent.base + "/v1/probes/ev-missing/events").status == 404)

            // A live stream ends when a PUT replaces the probe.
            let live = try StreamClient.python(url, ["--ndjson"])
            try await Self.waitFor(agent, "ev-resume") { $0.subscribers == 1 }
            let replaced = spec.replacingOccurrences(of: "100000", with: "50000")
            #expect(try CurlClient.run("PUT", agent.base + "/v1/probes/ev-resume", json: replaced).status == 200)
            let items = try live.finish()
            #expect(items.last?["event"] as? String == "end" && items.last?["reason"] as? String == "replaced", "\(items.suffix(1))")
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("A read-only token may subscribe; no token is a 401")
    func readOnlyTokenSubscribes() async throws {
        let admin = "events-admin-token-0123456789", reader = "events-reader-token-0123456789"
        let agent = try await AgentHarness(tokens: AccessTokens(admin: Array(admin.utf8), readOnly: Array(reader.utf8)))
        do {
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/ev-token", token: admin,
                                         json: #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"tp-sleeper"},"events":{"min_latency_ns":0}}"#)
            #expect(put.status == 201, "\(put.body)")
            try Sleeper(["getppid", "5", "0"]).run()
            try await Self.waitFor(agent, "ev-token") { $0.consumed == 5 }
            let url = agent.base + "/v1/probes/ev-token/events?follow=false"
            let items = try StreamClient.python(url, ["--ndjson", "--token", reader]).finish()
            #expect(items.filter { $0["event"] as? String == "call" }.count == 5 && items.last?["reason"] as? String == "caught-up", "\(items)")
            #expect(try CurlClient.run("GET", url).status == 401)
            let refused = try CurlClient.run("PUT", agent.base + "/v1/probes/ev-token2", token: reader,
                                             json: #"{"target":{"type":"syscall","name":"getppid"}}"#)
            #expect(refused.status == 403)
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    @Test("traceplane probe events prints one line per slow call (what the agent holds, and with -f until the probe is deleted)")
    func cliPrintsEvents() async throws {
        let agent = try await AgentHarness()
        do {
            let put = try CurlClient.run("PUT", agent.base + "/v1/probes/ev-cli", json: #"{"target":{"type":"syscall","name":"nanosleep"},"filter":{"comm":"tp-sleeper"},"events":{"min_latency_ns":1000000}}"#)
            #expect(put.status == 201, "\(put.body)")
            let follow = Process()
            follow.executableURL = URL(fileURLWithPath: AgentProcess.executable)
            follow.arguments = ["probe", "events", "ev-cli", "-f", "--agent", agent.base]
            let followed = Pipe(), notices = Pipe()
            follow.standardOutput = followed
            follow.standardError = notices
            try follow.run()
            try await Self.waitFor(agent, "ev-cli") { $0.subscribers == 1 }
            let sleeper = try Sleeper(["mixed", "1000", "5", "2000000"])
            try sleeper.run()
            try await Self.waitFor(agent, "ev-cli") { $0.consumed == 5 }

            let held = try Command.run(AgentProcess.executable, ["probe", "events", "ev-cli", "--agent", agent.base])
            #expect(held.status == 0, "\(held.output)")
            for output in [held.output] {
                let lines = output.split(separator: "\n").filter { $0.contains(Sleeper.comm) }
                #expect(lines.count == 5, "\(output)")
                #expect(lines.allSatisfy { $0.contains(" \(sleeper.pid) ") }, "\(output)")
                let latencies = lines.compactMap { line in line.split(separator: " ").compactMap { Double($0) }.first { $0 >= 1 && $0 < 1000 } }
                #expect(latencies.count == 5, "a LAT(ms) column of at least 2 ms in each line: \(output)")
            }
            #expect(try CurlClient.run("DELETE", agent.base + "/v1/probes/ev-cli").status == 204)
            follow.waitUntilExit()
            let out = String(decoding: followed.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let err = String(decoding: notices.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            #expect(follow.terminationStatus == 0, "\(err)")
            #expect(out.split(separator: "\n").filter { $0.contains(Sleeper.comm) }.count == 5, "\(out)")
            #expect(err.contains("deleted"), "\(err)")
        } catch {
            await agent.stop()
            throw error
        }
        await agent.stop()
    }

    // MARK: Helpers

    nonisolated(unsafe) static let rfc3339: ISO8601DateFormatter = {
        let f = ISO8601DateFormatter()
        f.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
        return f
    }()

    /// Polls the probe's event counts until `done` holds (30 s at most).
    @discardableResult
    static func waitFor(_ agent: AgentHarness, _ name: String, _ done: (ProbeCounters.EventCounts) -> Bool) async throws -> ProbeCounters.EventCounts {
        let deadline = ContinuousClock.now + .seconds(30)
        var last: ProbeCounters.EventCounts?
        while ContinuousClock.now < deadline {
            last = try await agent.manager.metrics(name).events
            if let last, done(last) { return last }
            try await Task.sleep(for: .milliseconds(50))
        }
        throw StreamClient.Failure(description: "probe \(name): event counts never got there: \(String(describing: last))")
    }

    static func waitForCensus(_ done: (FDCensus.Counts) -> Bool) async throws -> FDCensus.Counts {
        var counts = FDCensus.take()
        for _ in 0..<100 where !done(counts) {
            try await Task.sleep(for: .milliseconds(100))
            counts = FDCensus.take()
        }
        return counts
    }

    static func residentKiB() -> Int {
        let status = (try? String(contentsOfFile: "/proc/self/status", encoding: .utf8)) ?? ""
        let line = status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") } ?? ""
        return Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") ?? 0
    }
}

/// A streaming client in a child process (curl -N, or tests/events/sse_client.py), its
/// output in a file; `finish` waits for it to end and parses what it received, one object
/// per item, as the agent's JSON has it (`event` is `call`, `gap` or `end`).
final class StreamClient {
    struct Failure: Error, CustomStringConvertible { var description: String }
    let process = Process()
    let output: String
    let sse: Bool

    private init(_ executable: String, _ arguments: [String], sse: Bool) throws {
        output = NSTemporaryDirectory() + "stream-\(UUID().uuidString)"
        guard FileManager.default.createFile(atPath: output, contents: nil) else { throw CocoaError(.fileWriteUnknown, userInfo: [NSFilePathErrorKey: output]) }
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardOutput = try FileHandle(forWritingTo: URL(fileURLWithPath: output))
        process.standardError = FileHandle.standardError
        self.sse = sse
        try process.run()
    }

    static func curl(_ url: String, headers: [String] = []) throws -> StreamClient {
        try StreamClient("/usr/bin/curl", ["-sSN", "--max-time", "120"] + headers.flatMap { ["-H", $0] } + [url],
                         sse: !headers.contains { $0.hasSuffix("application/x-ndjson") })
    }

    static func python(_ url: String, _ arguments: [String]) throws -> StreamClient {
        let script = EventsAPITests.repository.appendingPathComponent("tests/events/sse_client.py").path
        return try StreamClient("/usr/bin/python3", [script, "--url", url, "--timeout", "120"] + arguments, sse: false)
    }

    /// Waits (60 s at most) for the client to end, and parses its output.
    func finish() throws -> [[String: Any]] {
        let deadline = Date().addingTimeInterval(60)
        while process.isRunning && Date() < deadline { usleep(20_000) }
        if process.isRunning {
            process.terminate()
            throw Failure(description: "the stream client did not end in 60 s")
        }
        let text = (try? String(contentsOfFile: output, encoding: .utf8)) ?? ""
        try? FileManager.default.removeItem(atPath: output)
        return sse ? Self.parseSSE(text) : Self.parseLines(text)
    }

    /// curl's SSE output: blocks separated by a blank line; `data:` holds the JSON object.
    static func parseSSE(_ text: String) -> [[String: Any]] {
        text.components(separatedBy: "\n\n").compactMap { block -> [String: Any]? in
            var data = "", id: Int?
            for line in block.split(separator: "\n") {
                if line.hasPrefix("data:") { data += line.dropFirst(5).drop { $0 == " " } }
                if line.hasPrefix("id:") { id = Int(line.dropFirst(3).drop { $0 == " " }) }
            }
            guard var object = (try? JSONSerialization.jsonObject(with: Data(data.utf8))) as? [String: Any] else { return nil }
            if let id, let seq = object["seq"] as? Int, seq != id { object["id_mismatch"] = id }
            return object
        }
    }

    /// The Python client's lines: an SSE item as `{"id","event","data"}`, an NDJSON one as
    /// is; its own last line (`client`) is dropped.
    static func parseLines(_ text: String) -> [[String: Any]] {
        text.split(separator: "\n").compactMap { line -> [String: Any]? in
            guard let object = (try? JSONSerialization.jsonObject(with: Data(line.utf8))) as? [String: Any], object["client"] == nil else { return nil }
            return object["data"] as? [String: Any] ?? object
        }
    }
}
