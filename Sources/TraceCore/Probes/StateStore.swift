import Dispatch
import Foundation
import Glibc
import Logging
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

/// A save that did not reach the disk.
public struct StateSaveError: Error, Sendable, Hashable, CustomStringConvertible {
    /// The errno of the step that failed (`ENOSPC`, `EROFS`, …), when there is one.
    public var errno: Errno?
    public var description: String

    /// The disk (or the quota) is full: HTTP's 507 Insufficient Storage.
    public var isOutOfSpace: Bool { errno == .ENOSPC || errno == .EDQUOT }
}

/// Saves the desired probes in a state directory and loads them at start-up.
///
/// Contract: ``submit(_:)`` queues a state synchronously (so the caller's order is the
/// order of the states) and returns a ticket; the ticket's result is success only once that
/// state, or a newer one submitted after it, is on disk: written to a temporary file,
/// fsynced, renamed over `probes.json`, and the directory fsynced. States submitted while a
/// write runs share the next write. When a write fails, it fails every ticket submitted
/// before it ended, the queued ones included, and their state is dropped unwritten: a newer
/// state may carry changes its submitter is about to undo because of the failure. A failure
/// is logged and counted and makes ``health`` say so until a later save works; the caller
/// decides what to undo (``ProbeManager`` changes nothing that was not saved, and saves
/// again until one works).
public final class StateStore: Sendable {
    public let directory: String
    public var path: String { directory + "/probes.json" }
    private let logger: Logger
    private let writer = DispatchQueue(label: "traceplane.state")

    /// A submitted save's outcome.
    public typealias Ticket = Promise<Void>

    private struct Queue {
        var newest: PersistedState?
        var waiting: [Ticket] = []
        var writing = false
    }
    private let queue = Mutex(Queue())

    /// Whether saves work now.
    public enum Health: Sendable, Hashable {
        case ok
        /// Saving has failed since `since`; `error` is the latest failure.
        case failing(since: Date, error: StateSaveError)
    }
    private struct Books {
        var health = Health.ok
        var failures = 0
        var saves = 0
    }
    private let books = Mutex(Books())

    /// Outcome of reading the state file at start-up.
    public enum Loaded: Sendable {
        case none
        case loaded(PersistedState)
        /// The file was unreadable or corrupt; it was moved aside to `keptAt`.
        case corrupt(reason: String, keptAt: String?)
    }

    /// - Throws: ``StateError`` when the directory cannot be created or written.
    public init(directory: String, logger: Logger = Logger(label: "traceplane.state")) throws(StateError) {
        self.directory = directory.hasSuffix("/") && directory.count > 1 ? String(directory.dropLast()) : directory
        self.logger = logger
        var isDirectory: ObjCBool = false
        if !FileManager.default.fileExists(atPath: self.directory, isDirectory: &isDirectory) {
            if mkdir(self.directory, 0o700) != 0 {
                throw StateError(description: "cannot create state directory \(self.directory): \(Errno.current.message)")
            }
        } else if !isDirectory.boolValue {
            throw StateError(description: "state directory \(self.directory) is not a directory")
        }
        if access(self.directory, W_OK) != 0 {
            throw StateError(description: "state directory \(self.directory) is not writable: \(Errno.current.message)")
        }
    }

    /// Reads the state file. A corrupt or unreadable file is moved aside, never dropped; so
    /// is anything at its path that is not a regular file (a FIFO is not read: opening it
    /// would wait for a writer forever).
    public func load() -> Loaded {
        var info = stat()
        guard lstat(path, &info) == 0 else {
            if errno == ENOENT { return .none }
            return moveAside("cannot be examined: \(Errno.current.message)")
        }
        guard info.st_mode & S_IFMT == S_IFREG else {
            return moveAside("is not a regular file but \(Self.kind(info.st_mode))")
        }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOFOLLOW)
        guard fd >= 0 else { return moveAside("cannot be read: \(Errno.current.message)") }
        let data = FileHandle(fileDescriptor: fd, closeOnDealloc: true).readDataToEndOfFile()
        do {
            let state = try ReportJSON.decoder().decode(PersistedState.self, from: data)
            guard state.version == 1 else { throw StateError(description: "unknown state version \(state.version)") }
            remember(info)
            return .loaded(state)
        } catch {
            return moveAside("cannot be decoded: \(error)")
        }
    }

    private func moveAside(_ reason: String) -> Loaded {
        let stamp = ReportJSON.rfc3339(Date()).replacingOccurrences(of: ":", with: "")
        let aside = "\(path).corrupt-\(stamp)"
        if rename(path, aside) == 0 { return .corrupt(reason: reason, keptAt: aside) }
        return .corrupt(reason: reason + "; moving it aside failed: \(Errno.current.message)", keptAt: nil)
    }

    static func kind(_ mode: mode_t) -> String {
        switch mode & S_IFMT {
        case S_IFDIR: "a directory"
        case S_IFIFO: "a FIFO"
        case S_IFLNK: "a symbolic link"
        case S_IFSOCK: "a socket"
        case S_IFCHR, S_IFBLK: "a device"
        default: "not a regular file"
        }
    }

    /// The file this store wrote (or loaded) last: its device and inode.
    private let written = Mutex<(dev: UInt64, ino: UInt64)?>(nil)

    private func remember(_ info: stat) {
        written.withLock { $0 = (UInt64(info.st_dev), UInt64(info.st_ino)) }
    }

    /// What happened to the state file since this store last wrote or loaded it, if anything
    /// did: removed (with its directory or alone), replaced by something that is not a
    /// regular file, or replaced by another file. Nil while it is intact, and before the
    /// first save of a store that found no file. The caller saves again.
    public func damage() -> String? {
        guard let last = written.withLock({ $0 }) else { return nil }
        var info = stat()
        guard lstat(path, &info) == 0 else {
            if errno == ENOENT {
                return access(directory, F_OK) == 0 ? "\(path) was removed" : "the state directory \(directory) was removed"
            }
            return "\(path) cannot be examined: \(Errno.current.message)"
        }
        guard info.st_mode & S_IFMT == S_IFREG else { return "\(path) was replaced by \(Self.kind(info.st_mode))" }
        guard UInt64(info.st_dev) == last.dev, UInt64(info.st_ino) == last.ino else { return "\(path) was replaced by another file" }
        return nil
    }

    /// Queues `state` as the newest desired state, now, in the caller's order; the ticket
    /// says whether it (or a newer state) reached the disk. See the type's contract.
    public func submit(_ state: PersistedState) -> Ticket {
        let ticket = Ticket()
        let start = queue.withLock { q -> Bool in
            q.newest = state
            q.waiting.append(ticket)
            defer { q.writing = true }
            return !q.writing
        }
        if start { writer.async { self.drain() } }
        return ticket
    }

    /// Writes the newest submitted state until none is left, answering every ticket that
    /// was waiting when each write started; a failure also fails (and drops) what was queued
    /// meanwhile.
    private func drain() {
        while true {
            let (state, waiting) = queue.withLock { q -> (PersistedState?, [Ticket]) in
                defer {
                    q.newest = nil
                    q.waiting = []
                }
                if q.newest == nil { q.writing = false }
                return (q.newest, q.waiting)
            }
            guard let state else { return }
            do {
                try write(state)
                record(.success(()))
                for ticket in waiting { ticket.fulfil(()) }
            } catch {
                record(.failure(error))
                let queued = queue.withLock { q -> [Ticket] in
                    defer {
                        q.newest = nil
                        q.waiting = []
                    }
                    return q.waiting
                }
                for ticket in waiting + queued { ticket.fulfil(.failure(error)) }
            }
        }
    }

    private func record(_ result: Result<Void, StateSaveError>) {
        let transition = books.withLock { b -> (failed: StateSaveError?, recovered: Date?) in
            switch (result, b.health) {
            case (.success, .ok):
                b.saves += 1
                return (nil, nil)
            case (.success, .failing(let since, _)):
                b.saves += 1
                b.health = .ok
                return (nil, since)
            case (.failure(let error), .ok):
                b.failures += 1
                b.health = .failing(since: Date(), error: error)
                return (error, nil)
            case (.failure(let error), .failing(let since, _)):
                b.failures += 1
                b.health = .failing(since: since, error: error)
                return (nil, nil)
            }
        }
        if let error = transition.failed {
            logger.error("saving the desired probes to \(path) failed: \(error); changes are refused until a save works again")
        }
        if let since = transition.recovered {
            logger.notice("saving the desired probes to \(path) works again (it failed from \(ReportJSON.rfc3339(since)))")
        }
    }

    /// Waits for every requested save to reach the disk (or fail).
    public func flush() {
        writer.sync {}
    }

    /// Whether saves work now.
    public var health: Health { books.withLock { $0.health } }

    /// Failed writes since start-up (each save and each retry that failed).
    public var failureCount: Int { books.withLock { $0.failures } }

    /// Writes that reached the disk since start-up.
    public var saveCount: Int { books.withLock { $0.saves } }

    /// Writes `state` now: temp file, fsync, rename over the old file, fsync the directory.
    /// A state directory that disappeared is created again.
    public func write(_ state: PersistedState) throws(StateSaveError) {
        let data: Data
        do { data = try ReportJSON.encoder(pretty: true).encode(state) } catch {
            throw StateSaveError(errno: nil, description: "cannot encode the state: \(error)")
        }
        try DurableFile.replace(path, with: data, directory: directory)
        var info = stat()
        if lstat(path, &info) == 0 { remember(info) }
    }
}

/// Replacing a small file so that a crash leaves the old or the new content, never a mix.
enum DurableFile {
    /// Creates `directory` and any missing parents (mode 0700), each made durable by an
    /// fsync of its parent: a re-created directory whose entry is lost in a crash would
    /// lose the file saved in it.
    static func makeDirectory(_ directory: String) throws(StateSaveError) {
        var missing: [String] = []
        var current = directory
        while !current.isEmpty, current != "/", access(current, F_OK) != 0 {
            missing.append(current)
            current = (current as NSString).deletingLastPathComponent
        }
        for dir in missing.reversed() {
            if mkdir(dir, 0o700) != 0, errno != EEXIST {
                let code = errno
                throw StateSaveError(errno: Errno(rawValue: code), description: "cannot create \(dir): \(Errno(rawValue: code).name) (\(Errno(rawValue: code).message))")
            }
            let parent = open((dir as NSString).deletingLastPathComponent, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
            if parent >= 0 {
                _ = fsync(parent)
                close(parent)
            }
        }
    }

    /// Writes `data` to a temporary file, fsyncs it, renames it over `path`, and fsyncs
    /// `directory`. A directory that disappeared is created again.
    static func replace(_ path: String, with data: Data, directory: String) throws(StateSaveError) {
        func failure(_ what: String, _ code: Int32) -> StateSaveError {
            StateSaveError(errno: Errno(rawValue: code), description: "\(what): \(Errno(rawValue: code).name) (\(Errno(rawValue: code).message))")
        }
        let temp = "\(path).tmp-\(getpid())"
        var fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        if fd < 0, errno == ENOENT {
            try makeDirectory(directory)
            fd = open(temp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
        }
        guard fd >= 0 else { throw failure("cannot create \(temp)", errno) }
        var code: Int32 = 0
        data.withUnsafeBytes { raw in
            var offset = 0
            while offset < raw.count {
                let n = Glibc.write(fd, raw.baseAddress! + offset, raw.count - offset)
                if n < 0 {
                    if errno == EINTR { continue }
                    code = errno
                    return
                }
                offset += n
            }
        }
        if code == 0, fsync(fd) != 0 { code = errno }
        close(fd)
        guard code == 0 else {
            unlink(temp)
            throw failure("cannot write \(temp)", code)
        }
        guard rename(temp, path) == 0 else {
            let code = errno
            unlink(temp)
            throw failure("cannot rename \(temp) to \(path)", code)
        }
        let dir = open(directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard dir >= 0 else { throw failure("cannot open \(directory) to fsync it", errno) }
        defer { close(dir) }
        // A file system that cannot fsync a directory (EINVAL) has nothing more to flush.
        if fsync(dir) != 0, errno != EINVAL { throw failure("cannot fsync \(directory)", errno) }
    }
}

public struct StateError: Error, Sendable, CustomStringConvertible {
    public var description: String
}
