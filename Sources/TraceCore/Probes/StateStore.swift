import Dispatch
import Foundation
import Glibc
import Synchronization

/// The desired probes as saved on disk.
public struct PersistedState: Sendable, Codable, Hashable {
    public struct Probe: Sendable, Codable, Hashable {
        public var spec: ProbeSpec
        public var createdAt: Date
        public var expiresAt: Date?
        public var generation: Int

        enum CodingKeys: String, CodingKey {
            case spec, generation
            case createdAt = "created_at"
            case expiresAt = "expires_at"
        }
    }
    public var version: Int
    public var savedAt: Date
    public var probes: [Probe]

    public init(savedAt: Date, probes: [Probe]) {
        version = 1
        self.savedAt = savedAt
        self.probes = probes
    }

    enum CodingKeys: String, CodingKey {
        case version, probes
        case savedAt = "saved_at"
    }
}

/// Saves the desired probes atomically (temp file, fsync, rename, fsync of the directory)
/// in a state directory, off the caller's path, and loads them at start-up.
public final class StateStore: Sendable {
    public let directory: String
    public var path: String { directory + "/probes.json" }
    private let queue = DispatchQueue(label: "traceplane.state")
    private let pending = Mutex<PersistedState?>(nil)
    private let lastError = Mutex<String?>(nil)

    /// Outcome of reading the state file at start-up.
    public enum Loaded: Sendable {
        case none
        case loaded(PersistedState)
        /// The file was unreadable or corrupt; it was moved aside to `keptAt`.
        case corrupt(reason: String, keptAt: String?)
    }

    /// - Throws: ``StateError`` when the directory cannot be created or written.
    public init(directory: String) throws(StateError) {
        self.directory = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: self.directory, isDirectory: &isDirectory) {
            if mkdir(self.directory, 0o700) != 0 {
                throw StateError(description: "cannot create state directory \(self.directory): \(String(cString: strerror(errno)))")
            }
        } else if !isDirectory.boolValue {
            throw StateError(description: "state directory \(self.directory) is not a directory")
        }
        if access(self.directory, W_OK) != 0 {
            throw StateError(description: "state directory \(self.directory) is not writable: \(String(cString: strerror(errno)))")
        }
    }

    /// Reads the state file. A corrupt or unreadable file is moved aside, never dropped.
    public func load() -> Loaded {
        guard FileManager.default.fileExists(atPath: path) else { return .none }
        let reason: String
        if let data = FileManager.default.contents(atPath: path) {
            do {
                let state = try ReportJSON.decoder().decode(PersistedState.self, from: data)
                guard state.version == 1 else { throw StateError(description: "unknown state version \(state.version)") }
                return .loaded(state)
            } catch {
                reason = "cannot be decoded: \(error)"
            }
        } else {
            reason = "cannot be read: \(String(cString: strerror(errno)))"
        }
        let stamp = ReportJSON.rfc3339(Date()).replacingOccurrences(of: ":", with: "")
        let aside = "\(path).corrupt-\(stamp)"
        if rename(path, aside) == 0 { return .corrupt(reason: reason, keptAt: aside) }
        return .corrupt(reason: reason + "; moving it aside failed: \(String(cString: strerror(errno)))", keptAt: nil)
    }

    /// Saves `state` in the background; saves requested meanwhile coalesce to the newest.
    public func save(_ state: PersistedState) {
        let first = pending.withLock { slot -> Bool in
            defer { slot = state }
            return slot == nil
        }
        guard first else { return }
        queue.async {
            guard let newest = self.pending.withLock({ slot -> PersistedState? in
                defer { slot = nil }
                return slot
            }) else { return }
            do {
                try self.write(newest)
                self.lastError.withLock { $0 = nil }
            } catch {
                self.lastError.withLock { $0 = "\(error)" }
            }
        }
    }

    /// Waits for every requested save to reach the disk.
    public func flush() {
        queue.sync {}
    }

    /// Suspends until every save requested so far has reached the disk (or failed).
    public func flushed() async {
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            queue.async { continuation.resume() }
        }
    }

    /// The last save failure, if the last save failed.
    public var failure: String? { lastError.withLock { $0 } }

    /// Writes `state` now: temp file, fsync, rename over the old file, fsync the directory.
    public func write(_ state: PersistedState) throws(StateError) {
        let data: Data
        do { data = try ReportJSON.encoder(pretty: true).encode(state) } catch { throw StateError(description: "cannot encode state: \(error)") }
        let temp = "\(path).tmp-\(getpid())"
        let fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw StateError(description: "cannot create \(temp): \(String(cString: strerror(errno)))") }
        var ok = data.withUnsafeBytes { raw -> Bool in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 { if errno == EINTR { continue }; return false }
                offset += n
            }
            return true
        }
        let code = errno
        ok = ok && fsync(fd) == 0
        close(fd)
        guard ok else {
            unlink(temp)
            throw StateError(description: "cannot write \(temp): \(String(cString: strerror(code)))")
        }
        guard rename(temp, path) == 0 else {
            let code = errno
            unlink(temp)
            throw StateError(description: "cannot rename \(temp) to \(path): \(String(cString: strerror(code)))")
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dir >= 0 {
            fsync(dir)
            close(dir)
        }
    }
}

public struct StateError: Error, Sendable, CustomStringConvertible {
    public var description: String
}
