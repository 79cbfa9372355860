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

    /// A streamed GET through `curl -N`: the response head is read from curl's stdout
    /// (`--include`), then every read of the body is handed over as it comes.
    /// `headers` (the token's included) travel in the config on curl's stdin.
    static func stream(_ url: URL, headers: [String: String], caFile: String,
                       idleTimeout: TimeInterval) async throws(AgentClient.TransportError) -> AgentClient.StreamedReply {
        guard let curl = executable() else {
            throw .init(description: "--cacert needs the curl command on PATH (URLSession on Linux cannot load a CA file)", retryable: false)
        }
        let seconds = Int(max(idleTimeout, 1).rounded(.up))
        var config = [
            "url = \(quote(url.absoluteString))",
            "cacert = \(quote(caFile))",
            "proto = \"=https\"",
            "silent", "show-error", "no-buffer", "include", "suppress-connect-headers",
            "connect-timeout = \(seconds)",
            // No max-time: a followed stream is endless. Idle is under a byte a second for
            // the whole window (keep-alives every 15 s stay well above it).
            "speed-limit = 1", "speed-time = \(seconds)",
        ]
        for (name, value) in headers.sorted(by: { $0.key < $1.key }) { config.append("header = \(quote("\(name): \(value)"))") }
        return try await CurlStream(executable: curl, config: Data((config.joined(separator: "\n") + "\n").utf8)).start()
    }

    /// The status and lowercased headers of one response head (`HTTP/1.1 404 Not Found`
    /// and `Name: value` lines), and the bytes it took with its blank line; nil while the
    /// blank line has not arrived.
    static func parseHead(_ bytes: [UInt8]) -> (status: Int, headers: [String: String], length: Int)? {
        var end: Int?
        var i = 0
        while i < bytes.count {
            if bytes[i] == UInt8(ascii: "\n") {
                if i + 1 < bytes.count, bytes[i + 1] == UInt8(ascii: "\n") { end = i + 2; break }
                if i + 2 < bytes.count, bytes[i + 1] == UInt8(ascii: "\r"), bytes[i + 2] == UInt8(ascii: "\n") { end = i + 3; break }
            }
            i += 1
        }
        guard let end else { return nil }
        let lines = String(decoding: bytes[..<end], as: UTF8.self).split(whereSeparator: \.isNewline)
        let statusParts = lines.first?.split(separator: " ") ?? []
        let status = statusParts.count >= 2 ? Int(statusParts[1]) ?? 0 : 0
        var headers: [String: String] = [:]
        for line in lines.dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers[line[..<colon].trimmingCharacters(in: .whitespaces).lowercased()] = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
        }
        return (status, headers, end)
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

/// One `curl -N` process whose stdout is read as it arrives, on a thread of its own until
/// curl exits. `terminate()` may come from any thread (task cancellation, or the consumer
/// ending the body's iteration); `lock` guards `cancelled`.
private final class CurlStream: @unchecked Sendable {
    private let process = Process()
    private let config: Data
    private let lock = NSLock()
    private var cancelled = false

    init(executable: String, config: Data) {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = ["--disable", "--config", "-"]
        self.config = config
    }

    func start() async throws(AgentClient.TransportError) -> AgentClient.StreamedReply {
        let (body, continuation) = AsyncThrowingStream<Data, any Error>.makeStream()
        continuation.onTermination = { _ in self.terminate() }
        do {
            let head = try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { (waiter: CheckedContinuation<(Int, [String: String]), any Error>) in
                    Thread.detachNewThread { self.run(head: waiter, body: continuation) }
                }
            } onCancel: {
                self.terminate()
            }
            return AgentClient.StreamedReply(status: head.0, headers: head.1, body: body)
        } catch let error as AgentClient.TransportError {
            throw error
        } catch {
            throw .init(description: "\(error)", retryable: false)
        }
    }

    /// Runs curl to its exit: resumes `head` once the response head is read (or with the
    /// error when there is none), then yields the body to `body`.
    private func run(head: CheckedContinuation<(Int, [String: String]), any Error>, body: AsyncThrowingStream<Data, any Error>.Continuation) {
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        let started: Bool = lock.withLock {
            guard !cancelled else { return false }
            do { try CurlTransport.launch(process) } catch { return false }
            return true
        }
        guard started else {
            let failure = AgentClient.TransportError(description: wasCancelled ? "cancelled" : "cannot run curl", retryable: false)
            head.resume(throwing: failure)
            body.finish(throwing: failure)
            return
        }
        input.fileHandleForWriting.write(config)
        try? input.fileHandleForWriting.close()

        var waiter: CheckedContinuation<(Int, [String: String]), any Error>? = head
        var pending: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 1 << 16)
        let fd = output.fileHandleForReading.fileDescriptor
        while true {
            let n = buffer.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            guard let current = waiter else {
                body.yield(Data(buffer[..<n]))
                continue
            }
            pending.append(contentsOf: buffer[..<n])
            // 1xx heads (100 Continue) come before the real one.
            while let (status, headers, length) = CurlTransport.parseHead(pending) {
                pending.removeFirst(length)
                if (100..<200).contains(status) { continue }
                current.resume(returning: (status, headers))
                waiter = nil
                if !pending.isEmpty { body.yield(Data(pending)) }
                pending = []
                break
            }
        }
        // curl writes little to stderr (-sS), so reading stdout first cannot deadlock.
        let message = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            .trimmingCharacters(in: .whitespacesAndNewlines)
        process.waitUntilExit()
        let status = process.terminationStatus
        let failure = AgentClient.TransportError(
            description: wasCancelled ? "cancelled" : message.isEmpty ? "curl exited with status \(status)" : message,
            retryable: CurlTransport.retryableExits.contains(status))
        if let waiter {
            waiter.resume(throwing: status == 0 ? AgentClient.TransportError(description: "no response head from curl", retryable: false) : failure)
            body.finish(throwing: failure)
        } else if status == 0 {
            body.finish()
        } else {
            body.finish(throwing: failure)
        }
    }

    private var wasCancelled: Bool { lock.withLock { cancelled } }

    func terminate() {
        lock.withLock {
            cancelled = true
            if process.isRunning { process.terminate() }
        }
    }
}
