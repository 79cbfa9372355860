import CLibBPF
import Glibc
import Synchronization

/// cgroup v2 ids to paths under the cgroup2 mount, and what each path says runs there: the
/// id of a cgroup is its directory's inode number. Cached; an id not found walks the
/// hierarchy again (at most once a second), and a cached path is checked again (one
/// `stat`) when it was last seen more than `recheck` ago. A cgroup removed meanwhile keeps
/// its last known path, marked removed, for `retention`; then it is forgotten.
public final class CgroupPaths: Sendable {
    /// The host's hierarchy, found on first use.
    public static let shared = CgroupPaths(root: nil)

    /// What an id resolved to.
    public struct Known: Sendable, Hashable {
        public var path: String
        public var identity: CgroupIdentity
        /// The cgroup is gone; `path` is where it was.
        public var removed: Bool
    }

    struct Entry {
        var path: String
        var identity: CgroupIdentity
        var checked: ContinuousClock.Instant
        var removedAt: ContinuousClock.Instant?
    }

    struct State {
        var entries: [UInt64: Entry] = [:]
        var lastWalk: ContinuousClock.Instant?
    }

    private let state = Mutex(State())
    private let fixedRoot: String?
    private let found = Mutex<String??>(nil)
    let recheck: Duration
    let retention: Duration
    let now: @Sendable () -> ContinuousClock.Instant

    /// `root`: the cgroup2 mount point (nil: this host's, from /proc/self/mountinfo).
    public init(root: String?, recheck: Duration = .seconds(5), retention: Duration = .seconds(600),
                now: @escaping @Sendable () -> ContinuousClock.Instant = { .now }) {
        fixedRoot = root
        self.recheck = recheck
        self.retention = retention
        self.now = now
    }

    /// The cgroup2 mount point, if any.
    public var root: String? {
        if let fixedRoot { return fixedRoot }
        return found.withLock { cached in
            if let cached { return cached }
            let path = Cgroup2Fact.inspect().path
            cached = .some(path)
            return path
        }
    }

    /// The path of cgroup `id`, if known.
    public func path(of id: UInt64) -> String? { resolve(id)?.path }

    /// What cgroup `id` is, if it is known or was until less than `retention` ago.
    public func resolve(_ id: UInt64) -> Known? {
        let t = now()
        if let hit = state.withLock({ s in s.entries[id] }) {
            var entry = hit
            // Checked only against a mounted hierarchy: with cgroup2 unmounted nothing is
            // there to stat, which says nothing about the cgroup (it keeps its path, not removed).
            if entry.removedAt == nil, t - entry.checked >= recheck, let root, Self.isMounted(root) {
                entry.checked = t
                if Self.inode(root + (entry.path == "/" ? "" : entry.path)) != id { entry.removedAt = t }
            }
            if let gone = entry.removedAt, t - gone >= retention {
                state.withLock { _ = $0.entries.removeValue(forKey: id) }
                return nil
            }
            // Written back only when this look changed it, and only over the entry it read:
            // a walk meanwhile may have put a newer one there.
            if entry.checked != hit.checked || entry.removedAt != hit.removedAt {
                state.withLock { s in
                    if s.entries[id]?.checked == hit.checked { s.entries[id] = entry }
                }
            }
            return Known(path: entry.path, identity: entry.identity, removed: entry.removedAt != nil)
        }
        // One lookup by file handle (what the kernel's id is to kernfs) finds a cgroup made
        // a moment ago; the walk is for hosts that refuse it (no CAP_DAC_READ_SEARCH).
        if let root, let path = Self.byHandle(root: root, id: id) {
            let identity = CgroupIdentity.parse(path)
            state.withLock { $0.entries[id] = Entry(path: path, identity: identity, checked: t, removedAt: nil) }
            return Known(path: path, identity: identity, removed: false)
        }
        let due = state.withLock { s -> Bool in
            if let last = s.lastWalk, t - last < .seconds(1) { return false }
            s.lastWalk = t
            return true
        }
        guard due, root != nil else { return nil }
        refresh()
        guard let entry = state.withLock({ $0.entries[id] }) else { return nil }
        return Known(path: entry.path, identity: entry.identity, removed: entry.removedAt != nil)
    }

    /// Walks the whole hierarchy now: every cgroup there, by id (the cache learns them, and
    /// marks removed the ones it knew that are gone).
    @discardableResult
    public func refresh() -> [UInt64: String] {
        // A walk of the directory left where cgroup2 was unmounted would find none of the
        // cgroups and mark every known one removed.
        guard let root, Self.isMounted(root) else { return [:] }
        var walked: [UInt64: String] = [:]
        Self.walk(root, relative: "/", depth: 0, into: &walked)
        let t = now()
        state.withLock { s in
            for (id, entry) in s.entries where walked[id] == nil && entry.removedAt == nil {
                s.entries[id]?.removedAt = t
            }
            for (id, path) in walked {
                if let old = s.entries[id], old.path == path, old.removedAt == nil {
                    s.entries[id]?.checked = t
                } else {
                    s.entries[id] = Entry(path: path, identity: CgroupIdentity.parse(path), checked: t, removedAt: nil)
                }
            }
        }
        return walked
    }

    /// The cgroup a filter names: a path (stat), or the cgroup of a container or a pod (a
    /// fresh walk; the outermost cgroup whose path names it, since the filter covers
    /// descendants). A container id may be a unique prefix of at least 12 digits.
    public func match(_ selector: CgroupSelector, fact: Cgroup2Fact) -> Result<CgroupMatch, CgroupLookupError> {
        guard let mount = fact.path, fact.layout != .none else {
            return .failure(CgroupLookupError(field: selector.field, message: "this host has no cgroup2 mount (\(fact.error ?? "none found")): cgroup filters need cgroup v2"))
        }
        func made(_ path: String, _ id: UInt64) -> CgroupMatch {
            let depth = path == "/" ? 0 : UInt32(path.split(separator: "/").count)
            return CgroupMatch(path: path, id: id, level: fact.wholeHierarchy ? depth : nil, directory: path == "/" ? mount : mount + path)
        }
        switch selector {
        case .path(let path):
            let directory = path == "/" ? mount : mount + path
            var info = stat()
            guard stat(directory, &info) == 0, (info.st_mode & S_IFMT) == S_IFDIR, LinuxHost.fsMagic(directory) == Cgroup2Fact.superMagic else {
                return .failure(CgroupLookupError(field: selector.field, message: "no cgroup \(path) under the cgroup2 mount \(mount)"))
            }
            return .success(made(path, UInt64(info.st_ino)))
        case .container(let prefix):
            let candidates = refresh().compactMap { id, path -> (UInt64, String, String)? in
                guard let cid = CgroupIdentity.parse(path).containerID, cid.hasPrefix(prefix) else { return nil }
                return (id, path, cid)
            }
            let ids = Set(candidates.map(\.2))
            guard ids.count == 1 else {
                let message = ids.isEmpty
                    ? "no cgroup under \(mount) belongs to container \(prefix) (docker, containerd, cri-o and podman cgroup names are recognised)"
                    : "\(prefix) names \(ids.count) containers (\(ids.sorted().map { String($0.prefix(16)) }.joined(separator: ", "))): give more digits"
                return .failure(CgroupLookupError(field: selector.field, message: message))
            }
            let outer = candidates.min { $0.1.utf8.count < $1.1.utf8.count }!
            return .success(made(outer.1, outer.0))
        case .pod(let uid):
            let candidates = refresh().filter { _, path in
                let identity = CgroupIdentity.parse(path)
                return identity.podUID == uid && identity.containerID == nil
            }
            guard let outer = candidates.min(by: { $0.value.utf8.count < $1.value.utf8.count }) else {
                return .failure(CgroupLookupError(field: selector.field, message: "no cgroup under \(mount) belongs to pod \(uid) (kubelet's systemd and cgroupfs drivers are recognised)"))
            }
            return .success(made(outer.value, outer.key))
        }
    }

    /// The path under `root` of cgroup `id`, through open_by_handle_at.
    static func byHandle(root: String, id: UInt64) -> String? {
        var buffer = [CChar](repeating: 0, count: 4097)
        let n = tp_cgroup_path(root, id, &buffer, buffer.count)
        guard n > 0 else { return nil }
        let absolute = String(decoding: buffer.prefix(Int(n)).map { UInt8(bitPattern: $0) }, as: UTF8.self)
        if absolute == root { return "/" }
        guard absolute.hasPrefix(root + "/") else { return nil }
        return String(absolute.dropFirst(root.utf8.count))
    }

    /// Whether cgroup2 is mounted at `root` now.
    static func isMounted(_ root: String) -> Bool { LinuxHost.fsMagic(root) == Cgroup2Fact.superMagic }

    static func inode(_ path: String) -> UInt64? {
        var info = stat()
        guard stat(path, &info) == 0 else { return nil }
        return UInt64(info.st_ino)
    }

    private static func walk(_ path: String, relative: String, depth: Int, into found: inout [UInt64: String]) {
        var info = stat()
        guard depth < 32, found.count < 100_000, stat(path, &info) == 0 else { return }
        found[UInt64(info.st_ino)] = relative
        guard let dir = opendir(path) else { return }
        defer { closedir(dir) }
        while let entry = readdir(dir) {
            guard entry.pointee.d_type == UInt8(DT_DIR) else { continue }
            let name = withUnsafeBytes(of: entry.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if name == "." || name == ".." { continue }
            walk(path + "/" + name, relative: relative == "/" ? "/" + name : relative + "/" + name, depth: depth + 1, into: &found)
        }
    }
}

/// A cgroup filter that names no cgroup here (422: the spec is fine, the host lacks it).
public struct CgroupLookupError: Error, Sendable, Hashable {
    public var field: String
    public var message: String
    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }
}
