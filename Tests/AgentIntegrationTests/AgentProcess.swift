import Foundation
import Glibc
import Synchronization
import Testing
import TraceCore

/// The real `traceplane` executable run as a child process (real signals, real restarts).
/// Its output arrives through a pipe; waiting for a line or for exit suspends on
/// continuations resumed by the pipe's and the process's handlers (no polling).
final class AgentProcess: Sendable {
    private let process: Process
    private struct Output {
        var text = ""
        /// Waiters for a line matching a pattern (resumed with the match, or nil at exit).
        var waiters: [(pattern: String, continuation: CheckedContinuation<String?, Never>)] = []
        var exited = false
    }
    private final class OutputBox: Sendable {
        let state = Mutex(Output())
    }
    private let box = OutputBox()
    private let exit = Promise<Int32>()
    private let boundPort = Mutex(0)

    static var executable: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // swift-testing runs the .xctest bundle from the build directory.
        if dir.lastPathComponent.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir.appendingPathComponent("traceplane").path
    }

    /// Starts `traceplane serve ARGS` (of `executable`: another build of the agent; nil:
    /// this build's), run through `wrapper` when given (`["/usr/bin/prlimit", "--nofile=64", "--"]`,
    /// `unshare`, …: the agent then is the wrapper's child or its exec). Does not wait for readiness.
    init(_ arguments: [String], executable: String? = nil, wrapper: [String] = []) throws {
        let process = Process()
        self.process = process
        let agent = executable ?? Self.executable
        if let first = wrapper.first {
            process.executableURL = URL(fileURLWithPath: first)
            process.arguments = Array(wrapper.dropFirst()) + [agent, "serve"] + arguments
        } else {
            process.executableURL = URL(fileURLWithPath: agent)
            process.arguments = ["serve"] + arguments
        }
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = pipe
        pipe.fileHandleForReading.readabilityHandler = { [box] handle in
            let data = handle.availableData
            let ready = box.state.withLock { o -> [(CheckedContinuation<String?, Never>, String?)] in
                if data.isEmpty { o.exited = true } else { o.text += String(decoding: data, as: UTF8.self) }
                var resumed: [(CheckedContinuation<String?, Never>, String?)] = []
                o.waiters.removeAll { waiter in
                    if let range = o.text.range(of: waiter.pattern, options: .regularExpression) {
                        resumed.append((waiter.continuation, String(o.text[range])))
                        return true
                    }
                    if o.exited { resumed.append((waiter.continuation, nil)); return true }
                    return false
                }
                return resumed
            }
            if data.isEmpty { handle.readabilityHandler = nil }
            for (continuation, match) in ready { continuation.resume(returning: match) }
        }
        let exit = self.exit
        process.terminationHandler = { exit.fulfil($0.terminationStatus) }
        try process.run()
    }

    /// Everything the agent wrote so far (stdout and stderr).
    var log: String { box.state.withLock { $0.text } }

    /// Waits for output matching the regular expression `pattern`; nil when the agent's
    /// output ended first.
    func waitForOutput(matching pattern: String) async -> String? {
        await withCheckedContinuation { (continuation: CheckedContinuation<String?, Never>) in
            let now = box.state.withLock { o -> String?? in
                if let range = o.text.range(of: pattern, options: .regularExpression) { return .some(String(o.text[range])) }
                if o.exited { return .some(nil) }
                o.waiters.append((pattern, continuation))
                return nil
            }
            if let now { continuation.resume(returning: now) }
        }
    }

    /// Waits (≤ `seconds`) for the "listening on HOST:PORT" line; false if the agent exited or took longer.
    func waitForListening(seconds: Double = 20) async -> Bool {
        let line = await withTimeout(seconds) { await self.waitForOutput(matching: #"listening on \S+:(\d+)"#) } ?? nil
        guard let line, let value = Int(line.split(separator: ":").last ?? "") else { return false }
        boundPort.withLock { $0 = value }
        return value > 0
    }

    /// The port from the "listening on" line.
    var port: Int { boundPort.withLock { $0 } }

    /// Waits (≤ `seconds`) for exit; returns the status, or nil if still running.
    func waitForExit(seconds: Double = 20) async -> Int32? {
        await withTimeout(seconds) { try? await self.exit.value() } ?? nil
    }

    var isRunning: Bool { process.isRunning }
    var pid: Int32 { process.processIdentifier }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    /// `body`'s result, or nil when it takes longer than `seconds` (it is then left to finish).
    private func withTimeout<T: Sendable>(_ seconds: Double, _ body: @escaping @Sendable () async -> T) async -> T? {
        let result = Promise<T?>()
        let work = Task { result.fulfil(await body()) }
        let timer = Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            result.fulfil(nil)
        }
        let value = (try? await result.value()) ?? nil
        timer.cancel()
        _ = work
        return value
    }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
    }
}

extension AgentProcess {
    /// `traceplane serve --listen 127.0.0.1:0 ARGS`, started and ready (its "ready: N probes"
    /// line); a failed requirement, with the agent's log, when it does not listen within a
    /// minute or exits before it is ready.
    static func started(_ arguments: [String], executable: String? = nil, wrapper: [String] = []) async throws -> AgentProcess {
        let agent = try AgentProcess(["--listen", "127.0.0.1:0"] + arguments, executable: executable, wrapper: wrapper)
        try #require(await agent.waitForListening(seconds: 60), "agent did not start: \(agent.log)")
        try #require(await agent.waitForOutput(matching: "ready: [0-9]+ probes") != nil, "agent never got ready: \(agent.log)")
        return agent
    }

    /// SIGTERM, and an exit status of 0 expected within 30 s.
    func stopCleanly() async {
        signal(SIGTERM)
        let status = await waitForExit(seconds: 30)
        #expect(status == 0, "the agent exited \(String(describing: status)) on SIGTERM: \(log.suffix(3000))")
    }

    /// `method path` on this agent, with curl (a JSON body when given).
    func request(_ method: String, _ path: String, _ json: String? = nil) throws -> CurlClient.Reply {
        try CurlClient.run(method, "http://127.0.0.1:\(port)\(path)", json: json)
    }
}

/// curl as the HTTP client for process-level tests (TLS with a test CA included).
enum CurlClient {
    struct Reply {
        var status: Int
        var headers: String
        var body: String
        var json: [String: Any]? { (try? JSONSerialization.jsonObject(with: Data(body.utf8))) as? [String: Any] }
    }

    static func run(_ method: String, _ url: String, token: String? = nil, json: String? = nil, extra: [String] = []) throws -> Reply {
        let dir = NSTemporaryDirectory() + "curl-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        var args = ["-sS", "--max-time", "10", "-X", method, "-D", "\(dir)/h", "-o", "\(dir)/b", "-w", "%{http_code}"]
        if let token { args += ["-H", "Authorization: Bearer \(token)"] }
        if let json { args += ["-H", "Content-Type: application/json", "--data-binary", json] }
        args += extra + [url]
        let p = Process()
        p.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        p.arguments = args
        let out = Pipe()
        p.standardOutput = out
        p.standardError = Pipe()
        try p.run()
        p.waitUntilExit()
        let code = Int(String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)) ?? 0
        return Reply(status: p.terminationStatus == 0 ? code : -Int(p.terminationStatus),
                     headers: (try? String(contentsOfFile: "\(dir)/h", encoding: .utf8)) ?? "",
                     body: (try? String(contentsOfFile: "\(dir)/b", encoding: .utf8)) ?? "")
    }
}
