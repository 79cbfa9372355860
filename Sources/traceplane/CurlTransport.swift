import Dispatch
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// HTTPS requests that must trust a CA file. FoundationNetworking on Linux has no API for
/// a CA file (libcurl's CAINFO is only read from the environment on Android), so these go
/// through the curl CLI. The token and body travel in a config read from curl's stdin,
/// never in its arguments (which any user can read in /proc).
enum CurlTransport {
    /// curl exit codes worth another try: cannot resolve (6), cannot connect (7),
    /// timed out (28), empty reply (52), send (55) or receive (56) failed.
    static let retryableExits: Set<Int32> = [6, 7, 28, 52, 55, 56]

    static func exchange(_ method: String, _ url: URL, body: Data?, token: String?, caFile: String,
                         timeout: TimeInterval) async throws(AgentClient.TransportError) -> AgentClient.Reply {
        guard let curl = executable() else {
            throw .init(description: "--cacert needs the curl command on PATH (URLSession on Linux cannot load a CA file)", retryable: false)
        }
        var config = [
            "url = \(quote(url.absoluteString))",
            "request = \(quote(method))",
            "cacert = \(quote(caFile))",
            "proto = \"=https\"",
            "max-time = \(String(format: "%.3f", max(timeout, 0.001)))",
            "silent", "show-error",
            // The outcome header of a PUT, then the status, on lines of their own after the body.
            "write-out = \"\\n%header{probe-outcome}\\n%{http_code}\"",
        ]
        if let token { config.append("header = \(quote("Authorization: Bearer \(token)"))") }
        if let body {
            config.append("header = \"Content-Type: application/json\"")
            config.append("data-raw = \(quote(String(decoding: body, as: UTF8.self)))")
        }
        let run = CurlRun(executable: curl, config: Data((config.joined(separator: "\n") + "\n").utf8))
        let (status, output, errors) = await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                DispatchQueue.global().async { continuation.resume(returning: run.run()) }
            }
        } onCancel: {
            run.terminate()
        }
        guard status == 0, let newline = output.lastIndex(of: UInt8(ascii: "\n")),
              let code = Int(String(decoding: output[output.index(after: newline)...], as: UTF8.self)),
              let previous = output[..<newline].lastIndex(of: UInt8(ascii: "\n")) else {
            let message = String(decoding: errors, as: UTF8.self).trimmingCharacters(in: .whitespacesAndNewlines)
            throw .init(description: message.isEmpty ? "curl exited with status \(status)" : message,
                        retryable: retryableExits.contains(status))
        }
        let outcome = String(decoding: output[output.index(after: previous)..<newline], as: UTF8.self)
        return AgentClient.Reply(status: code, headers: outcome.isEmpty ? [:] : ["probe-outcome": outcome], body: Data(output[..<previous]))
    }

    /// A double-quoted curl config string.
    static func quote(_ s: String) -> String {
        var out = "\""
        for c in s.unicodeScalars {
            switch c {
            case "\\": out += "\\\\"
            case "\"": out += "\\\""
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default: out.unicodeScalars.append(c)
            }
        }
        return out + "\""
    }

    /// Starts `process` with no signal blocked. The threads of Dispatch and of the Swift
    /// runtime's pool block every signal, and a child keeps the mask it is spawned with:
    /// curl would then ignore the SIGTERM of ``CurlRun/terminate()`` and the terminal's SIGINT.
    static func launch(_ process: Process) throws {
        var none = sigset_t(), saved = sigset_t()
        sigemptyset(&none)
        pthread_sigmask(SIG_SETMASK, &none, &saved)
        defer { pthread_sigmask(SIG_SETMASK, &saved, nil) }
        try process.run()
    }

    static func executable() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin"
        return path.split(separator: ":").map { "\($0)/curl" }.first { FileManager.default.isExecutableFile(atPath: $0) }
    }
}

/// One curl process. `terminate()` may come from any thread (task cancellation).
private final class CurlRun: @unchecked Sendable {
    // `process` is configured once before `run()`; Process itself is thread-safe for
    // terminate() against a running process.
    private let process = Process()
    private let config: Data

    init(executable: String, config: Data) {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["--disable", "--config", "-"]
        self.config = config
    }

    /// Runs curl to completion (blocking): exit status, stdout, stderr.
    func run() -> (Int32, Data, Data) {
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        do { try CurlTransport.launch(process) } catch { return (-1, Data(), Data("cannot run curl: \(error)".utf8)) }
        input.fileHandleForWriting.write(config)
        try? input.fileHandleForWriting.close()
        // curl writes little to stderr (-sS), so reading stdout first cannot deadlock.
        let out = output.fileHandleForReading.readDataToEndOfFile()
        let err = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, out, err)
    }

    func terminate() {
        if process.isRunning { process.terminate() }
    }
}
