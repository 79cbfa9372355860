import Foundation
import Glibc

/// The two places of pinned state: the pin directory on bpffs (maps, programs, links, in
/// one directory per probe and one per shared hook), and the manifests, one JSON file per
/// probe in `<state-dir>/pins/` (bpffs takes no regular files).
///
/// Layout: `<root>/<probe>/g<generation>/{map_*,prog_*,link_*}` for a probe's own object,
/// `<root>/_hub-<flavour>/{map_*,prog_*,link_*}` for a shared syscall hook (probe names
/// cannot start with `_`, and bpffs refuses names with a dot: a dot in a probe name is `+`).
public final class PinStore: Sendable {
    public let root: String
    public let manifests: String
    /// The pin directory, open and flock(2)ed exclusively while this store lives: a second
    /// agent on the same directory would remove the first one's pins as unknown.
    private let lockFD: Int32

    /// Checks that `root` is on bpffs (mounting bpffs at /sys/fs/bpf when `root` is under it
    /// and nothing is mounted there), creates it and the manifest directory.
    ///
    /// - Throws: ``StateError`` saying why the directory cannot hold pins.
    public init(root: String, stateDirectory: String, mountMissing: Bool = true) throws(StateError) {
        let root = Self.normalized(root)
        try Self.checkFileSystem(root, mountMissing: mountMissing)
        try Self.makeDirectories(root)
        self.root = root
        lockFD = try Self.lock(root)
        manifests = Self.normalized(stateDirectory) + "/pins"
        do { try Self.makeDirectories(manifests) } catch {
            close(lockFD)
            throw error
        }
    }

    deinit { close(lockFD) }

    /// Opens `root` and takes its exclusive lock, or says who holds it.
    ///
    /// - Throws: ``StateError`` when another process holds the lock or `root` cannot be opened.
    public static func lock(_ root: String) throws(StateError) -> Int32 {
        let fd = open(root, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else { throw StateError(description: "cannot open \(root): \(Errno.current.message)") }
        var rc: Int32
        repeat { rc = flock(fd, LOCK_EX | LOCK_NB) } while rc != 0 && errno == EINTR
        if rc != 0 {
            let error = Errno.current
            close(fd)
            if error == .EAGAIN {
                throw StateError(description: "\(root) is in use by another TracePlane agent (it holds the directory's lock); each agent needs its own --pin-dir")
            }
            throw StateError(description: "cannot lock \(root): \(error.message)")
        }
        return fd
    }

    static let standardMount = "/sys/fs/bpf"

    /// `root` is on bpffs, or will be once bpffs is mounted at /sys/fs/bpf (done here).
    ///
    /// - Throws: ``StateError`` when it is on another file system.
    public static func checkFileSystem(_ root: String, mountMissing: Bool) throws(StateError) {
        guard root.hasPrefix("/") else { throw StateError(description: "--pin-dir \(root) must be an absolute path") }
        func nearestExisting() -> String {
            var path = root
            while access(path, F_OK) != 0, path != "/" {
                path = (path as NSString).deletingLastPathComponent
            }
            return path
        }
        if LinuxHost.fsMagic(nearestExisting()) == LinuxHost.bpffsMagic { return }
        if root == standardMount || root.hasPrefix(standardMount + "/"), LinuxHost.fsMagic(standardMount) != LinuxHost.bpffsMagic {
            let fact = LinuxHost(mountMissing: mountMissing).ensureMounted(path: standardMount, type: "bpf", source: "bpf",
                                                                            magic: LinuxHost.bpffsMagic, options: "mode=0700")
            guard fact.mounted else {
                throw StateError(description: "--pin-dir \(root) needs bpffs at \(standardMount): \(fact.error ?? "it is not mounted")")
            }
            if LinuxHost.fsMagic(nearestExisting()) == LinuxHost.bpffsMagic { return }
        }
        let existing = nearestExisting()
        let magic = LinuxHost.fsMagic(existing).map { String(format: "0x%x", $0) } ?? "unknown"
        throw StateError(description: "--pin-dir \(root) is not on bpffs (\(existing) is on a file system of magic \(magic)); pinned BPF objects live only on bpffs, e.g. \(standardMount)/traceplane")
    }

    /// Why nothing can be pinned now, if nothing can: the pin directory is no longer on
    /// bpffs (unmounted under the running agent; a bpffs mounted there again is another,
    /// empty one, without the directory this agent locked and its shared hooks' pins).
    public func unusable() -> String? {
        if LinuxHost.fsMagic(root) == LinuxHost.bpffsMagic { return nil }
        return "\(root) is not on bpffs any more (was bpffs unmounted under the agent?): probes attached before keep counting but their pins are gone; mount bpffs again and restart the agent, which then attaches the saved probes anew (counting from zero)"
    }

    static func normalized(_ path: String) -> String {
        var path = path
        while path.count > 1 && path.hasSuffix("/") { path.removeLast() }
        return path
    }

    static func makeDirectories(_ path: String) throws(StateError) {
        var built = ""
        for part in path.split(separator: "/") {
            built += "/" + part
            if mkdir(built, 0o700) != 0 && errno != EEXIST {
                throw StateError(description: "cannot create \(built): \(Errno.current.message)")
            }
        }
    }

    // MARK: - Pins

    /// Everything pinned for probe `name`.
    public func probeDirectory(_ name: String) -> String { "\(root)/\(PinName.escaped(name))" }

    /// The pins of one own object of probe `name`.
    public func ownDirectory(_ name: String, _ directory: String) -> String { "\(probeDirectory(name))/\(directory)" }

    static let hubPrefix = "_hub-"

    static func hubDirectory(root: String, _ id: FlavourDescriptor.ID) -> String { "\(root)/\(hubPrefix)\(id.rawValue)" }

    /// The names of the probes pinned under the root.
    public func pinnedProbes() -> [String] {
        Self.list(root).filter { !$0.hasPrefix(Self.hubPrefix) }.map(PinName.unescaped)
    }

    /// The hub directories under the root.
    public func pinnedHubs() -> [String] {
        Self.list(root).filter { $0.hasPrefix(Self.hubPrefix) }
    }

    static func list(_ directory: String) -> [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).sorted()
    }

    /// Removes `path` and everything under it (pins are files to unlink, directories to
    /// remove); returns what it removed. Nothing when it does not exist.
    @discardableResult
    public static func removeTree(_ path: String) -> [String] {
        var info = stat()
        guard lstat(path, &info) == 0 else { return [] }
        var removed: [String] = []
        if (info.st_mode & S_IFMT) == S_IFDIR {
            for entry in list(path) { removed += removeTree("\(path)/\(entry)") }
            if rmdir(path) == 0 { removed.append(path) }
        } else if unlink(path) == 0 {
            removed.append(path)
        }
        return removed
    }

    /// Removes the directory of probe `name` once nothing is left in it.
    func removeIfEmpty(_ name: String) {
        _ = rmdir(probeDirectory(name))
    }

    // MARK: - Manifests

    public func manifestPath(_ name: String) -> String { "\(manifests)/\(name).json" }

    /// Replaces probe `manifest.name`'s manifest atomically.
    public func write(_ manifest: PinManifest) throws(StateSaveError) {
        let data: Data
        do { data = try manifest.encoded() } catch {
            throw StateSaveError(errno: nil, description: "cannot encode the manifest of \(manifest.name): \(error)")
        }
        try DurableFile.replace(manifestPath(manifest.name), with: data, directory: manifests)
    }

    public enum ManifestRead: Sendable {
        case none
        case manifest(PinManifest)
        /// Unreadable or not a manifest; moved aside to `keptAt` (nil when that failed too).
        case corrupt(reason: String, keptAt: String?)
    }

    /// Reads probe `name`'s manifest; a corrupt one is renamed with a `.corrupt-<time>` suffix.
    public func read(_ name: String) -> ManifestRead {
        let path = manifestPath(name)
        guard access(path, F_OK) == 0 else { return .none }
        let reason: String
        if let data = FileManager.default.contents(atPath: path) {
            do { return .manifest(try PinManifest.decode(data)) } catch { reason = "cannot be decoded: \(error)" }
        } else {
            reason = "cannot be read: \(Errno.current.message)"
        }
        let stamp = ReportJSON.rfc3339(Date()).replacingOccurrences(of: ":", with: "")
        let aside = "\(path).corrupt-\(stamp)"
        if rename(path, aside) == 0 { return .corrupt(reason: reason, keptAt: aside) }
        return .corrupt(reason: reason + "; moving it aside failed: \(Errno.current.message)", keptAt: nil)
    }

    public func removeManifest(_ name: String) {
        _ = unlink(manifestPath(name))
    }

    /// The probes that have a manifest.
    public func manifestNames() -> [String] {
        Self.list(manifests).filter { $0.hasSuffix(".json") }.map { String($0.dropLast(5)) }
    }
}
