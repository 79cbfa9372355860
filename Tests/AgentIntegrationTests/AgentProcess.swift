import Foundation
import Glibc

/// The real `traceplane` executable run as a child process (real signals, real restarts).
final class AgentProcess: @unchecked Sendable {
    // Mutable state is only touched from the test that owns the process.
    let process = Process()
    let logPath: String
    private(set) var port: Int = 0

    static var executable: String {
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? ""
        var dir = URL(fileURLWithPath: exe).deletingLastPathComponent()
        // swift-testing runs the .xctest bundle from the build directory.
        if dir.lastPathComponent.hasSuffix(".xctest") { dir = dir.deletingLastPathComponent() }
        return dir.appendingPathComponent("traceplane").path
    }

    /// Starts `traceplane serve ARGS`. Does not wait for readiness.
    init(_ arguments: [String]) throws {
        logPath = NSTemporaryDirectory() + "traceplane-\(UUID().uuidString).log"
        FileManager.default.createFile(atPath: logPath, contents: nil)
        process.executableURL = URL(fileURLWithPath: Self.executable)
        process.arguments = ["serve"] + arguments
        let log = FileHandle(forWritingAtPath: logPath)!
        process.standardOutput = log
        process.standardError = log
        try process.run()
    }

    var log: String { (try? String(contentsOfFile: logPath, encoding: .utf8)) ?? "" }

    /// Waits (≤ `seconds`) for the "listening on HOST:PORT" line; returns false if the process exited.
    func waitForListening(seconds: Double = 20) async -> Bool {
        let deadline = Date().addingTimeInterval(seconds)
        while Date() < deadline {
            if let range = log.range(of: #"listening on \S+:(\d+)"#, options: .regularExpression) {
                let line = String(log[range])
                port = Int(line.split(separator: ":").last ?? "") ?? 0
                return port > 0
            }
            if !process.isRunning { return false }
            try? await Task.sleep(for: .milliseconds(50))
        }
        return false
    }

    /// Waits (≤ `seconds`) for exit; returns the status, or nil if still running.
    func waitForExit(seconds: Double = 20) async -> Int32? {
        let deadline = Date().addingTimeInterval(seconds)
        while process.isRunning && Date() < deadline { try? await Task.sleep(for: .milliseconds(20)) }
        return process.isRunning ? nil : process.terminationStatus
    }

    func signal(_ sig: Int32) { kill(process.processIdentifier, sig) }

    deinit {
        if process.isRunning { kill(process.processIdentifier, SIGKILL) }
        try? FileManager.default.removeItem(atPath: logPath)
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
