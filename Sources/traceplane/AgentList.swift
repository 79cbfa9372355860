import Foundation

/// The agents file: one base URL per line, `#` comments, blank lines ignored.
enum AgentList {
    /// Reads the agents file `path`; `-` is standard input. Pipes and process
    /// substitutions (`--agents <(kubectl ...)`, a `/dev/fd/N` path) are read to their end.
    static func load(_ path: String) throws -> [URL] {
        let name = path == "-" ? "(standard input)" : path
        let handle: FileHandle
        if path == "-" {
            handle = FileHandle.standardInput
        } else {
            guard let opened = FileHandle(forReadingAtPath: path) else {
                throw FleetError("agents file \(path) \(FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist")")
            }
            handle = opened
        }
        defer { if path != "-" { try? handle.close() } }
        let data: Data
        do { data = try handle.readToEnd() ?? Data() } catch { throw FleetError("agents file \(name) cannot be read: \(error)") }
        return try parse(String(decoding: data, as: UTF8.self), file: name)
    }

    static func parse(_ text: String, file: String) throws -> [URL] {
        var urls: [URL] = []
        var seen: [String: Int] = [:]
        for (offset, raw) in text.split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let line = offset + 1
            let entry = (raw.firstIndex(of: "#").map { raw[..<$0] } ?? raw[...]).trimmingCharacters(in: .whitespaces)
            if entry.isEmpty { continue }
            var text = entry
            while text.hasSuffix("/") { text.removeLast() }
            guard let url = URL(string: text), let scheme = url.scheme, scheme == "http" || scheme == "https",
                  let host = url.host, !host.isEmpty, url.query == nil, url.fragment == nil, url.user == nil else {
                throw FleetError("agents file \(file) line \(line): '\(entry)' is not an agent base URL (e.g. http://10.0.0.5:9480 or https://node-1:9480)")
            }
            if let first = seen[url.absoluteString] {
                throw FleetError("agents file \(file) line \(line): \(url.absoluteString) is already listed on line \(first)")
            }
            seen[url.absoluteString] = line
            urls.append(url)
        }
        guard !urls.isEmpty else { throw FleetError("agents file \(file) lists no agents") }
        return urls
    }

    static func isLoopback(_ url: URL) -> Bool {
        guard let host = url.host?.lowercased() else { return false }
        return host == "localhost" || host.hasPrefix("127.") || host == "::1" || host == "[::1]"
    }
}
