import Foundation

@testable import TraceAPI

/// A real HTTP client for socket tests: the `curl` command line tool.
enum Curl {
    struct Response {
        var exitCode: Int32
        var status: Int
        var headers: HTTPHeaders
        var body: [UInt8]
        var stderr: String

        var text: String { String(decoding: body, as: UTF8.self) }

        func json() throws -> [String: JSONValue] {
            try JSONDecoder().decode([String: JSONValue].self, from: Data(body))
        }
    }

    /// Runs one request. `exitCode` 7 means the connection was refused.
    static func request(
        _ method: String, _ url: String, headers: [String: String] = [:], body: [UInt8]? = nil,
        arguments: [String] = [], timeout: Double = 5
    ) async throws -> Response {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("curl-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let headerFile = directory.appendingPathComponent("headers").path
        let bodyFile = directory.appendingPathComponent("body").path

        var command = ["-sS", "--max-time", "\(timeout)", "-D", headerFile, "-o", bodyFile, "-w", "%{http_code}"]
        if method == "HEAD" { command += ["-I"] } else { command += ["-X", method] }
        for (name, value) in headers { command += ["-H", "\(name): \(value)"] }
        if let body {
            let bodyPath = directory.appendingPathComponent("request").path
            try Data(body).write(to: URL(fileURLWithPath: bodyPath))
            command += ["--data-binary", "@\(bodyPath)"]
        }
        command += arguments + [url]

        let (exitCode, stdout, stderr) = try await run(command)
        let headerText = (try? String(contentsOfFile: headerFile, encoding: .utf8)) ?? ""
        let bodyData = FileManager.default.contents(atPath: bodyFile) ?? Data()
        return Response(
            exitCode: exitCode, status: Int(stdout.trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0,
            headers: parseHeaders(headerText), body: Array(bodyData), stderr: stderr)
    }

    /// Runs curl with `arguments`; returns exit code, stdout and stderr.
    static func run(_ arguments: [String]) async throws -> (Int32, String, String) {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/curl")
        process.arguments = arguments
        let out = Pipe()
        let err = Pipe()
        process.standardOutput = out
        process.standardError = err
        try await withCheckedThrowingContinuation { (continuation: CheckedContinuation<Void, any Error>) in
            process.terminationHandler = { _ in continuation.resume() }
            do { try process.run() } catch { continuation.resume(throwing: error) }
        }
        let stdout = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        let stderr = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        return (process.terminationStatus, stdout, stderr)
    }

    /// The headers of the last response block (after any `100 Continue`).
    private static func parseHeaders(_ text: String) -> HTTPHeaders {
        let blocks = text.components(separatedBy: "\r\n\r\n").filter { !$0.isEmpty }
        var headers = HTTPHeaders()
        for line in (blocks.last ?? "").components(separatedBy: "\r\n").dropFirst() {
            guard let colon = line.firstIndex(of: ":") else { continue }
            headers.add(
                String(line[..<colon]),
                line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces))
        }
        return headers
    }
}
