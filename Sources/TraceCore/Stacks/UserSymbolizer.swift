import Glibc
import Synchronization

/// Names user-space instruction pointers of any process on the host.
///
/// For each process it keeps a snapshot of its executable mappings (/proc/PID/maps), read
/// on first use, again when an address lies outside all of them (at most once a second
/// per process), and kept for `retention` seconds after the process was last looked at,
/// so stacks of processes that have exited still symbolize; a pid reused by a new process
/// (another start time, compared at most once a second) gets a new snapshot. ELF files are opened through
/// /proc/PID/map_files (deleted files too; needs root) or else /proc/PID/root (other mount
/// namespaces); their function symbols are cached by build id (or by device, inode, size
/// and modification time), least recently used first out when the cache outgrows
/// `maxCacheBytes`. Safe to use from any thread.
public final class UserSymbolizer: Sendable {
    /// The host's symbolizer.
    public static let shared = UserSymbolizer()

    private enum ImageKey: Hashable {
        case buildID([UInt8])
        case file(FileIdentity)
    }

    private struct Process {
        var mappings: [Mapping]
        /// The image of a mapping (by its start), once opened.
        var images: [UInt64: ImageKey] = [:]
        /// Mappings whose file could not be opened or parsed since the last maps read.
        var failed: Set<UInt64> = []
        var readAt: Double
        var lastSeen: Double
        /// The process's start time (/proc/PID/stat), nil when unknown: a pid reused by a
        /// new process has another, and its snapshot is dropped.
        var startTime: UInt64?
        /// When the start time was last compared.
        var checkedAt: Double = -Double.infinity
    }

    private struct CachedImage {
        var image: ELFImage
        var lastUse: UInt64
    }

    private struct State {
        var processes: [UInt32: Process] = [:]
        var images: [ImageKey: CachedImage] = [:]
        var identities: [FileIdentity: ImageKey] = [:]
        var bytes = 0
        var tick: UInt64 = 0
        var prunedAt = -Double.infinity
    }

    private let procRoot: String
    private let maxCacheBytes: Int
    private let maxProcesses: Int
    private let retention: Double
    private let clock: @Sendable () -> Double
    private let state = Mutex(State())

    /// A symbolizer reading processes under `procRoot`, caching at most about
    /// `maxCacheBytes` of ELF symbol tables.
    public convenience init(procRoot: String = "/proc", maxCacheBytes: Int = 64 << 20) {
        self.init(procRoot: procRoot, maxCacheBytes: maxCacheBytes, maxProcesses: 4096, retention: 600, clock: { ProcFiles.monotonicNow() })
    }

    /// `clock` gives monotonic seconds; `retention` is how long a process's mappings stay
    /// after it was last looked at; at most `maxProcesses` snapshots are kept (the least
    /// recently seen go first).
    init(procRoot: String, maxCacheBytes: Int, maxProcesses: Int, retention: Double, clock: @escaping @Sendable () -> Double) {
        precondition(maxProcesses > 0, "a UserSymbolizer must be able to keep at least one process")
        self.procRoot = procRoot
        self.maxCacheBytes = maxCacheBytes
        self.maxProcesses = maxProcesses
        self.retention = retention
        self.clock = clock
    }

    /// The estimated bytes of the cached ELF symbol tables.
    public var cacheBytes: Int { state.withLock { $0.bytes } }

    /// How many processes have a mapping snapshot.
    var processCount: Int { state.withLock { $0.processes.count } }

    /// One frame per nonzero ip of `ips` (innermost first) in process `tgid`.
    ///
    /// A frame of a file mapping names the function holding the ip, or has no symbol and
    /// the file offset; frames elsewhere carry `[vdso]`, `[anon]`, the kernel's name of the
    /// area, or `[unknown]` (outside every mapping, offset = ip).
    public func symbolize(tgid: UInt32, ips: [UInt64]) -> [StackFrame] {
        let now = clock()
        var mappings = snapshot(tgid: tgid, now: now, forceRead: false)
        var located: [(ip: UInt64, mapping: Int?)] = []
        located.reserveCapacity(ips.count)
        for ip in ips where ip != 0 { located.append((ip, ProcessMaps.index(of: ip, in: mappings))) }
        if located.contains(where: { $0.mapping == nil }), let fresh = reread(tgid: tgid, now: now) {
            mappings = fresh
            located = located.map { ($0.ip, ProcessMaps.index(of: $0.ip, in: mappings)) }
        }
        var images: [Int: ELFImage?] = [:]
        var frames: [StackFrame] = []
        frames.reserveCapacity(located.count)
        for (ip, index) in located {
            guard let index else {
                frames.append(StackFrame(symbol: nil, module: "[unknown]", offset: ip, address: ip))
                continue
            }
            let mapping = mappings[index]
            let image: ELFImage?
            if let known = images[index] {
                image = known
            } else {
                image = self.image(for: mapping, tgid: tgid)
                images[index] = image
            }
            frames.append(Self.frame(ip, mapping: mapping, image: image))
        }
        return frames
    }

    /// Reads the mappings of `tgid` now and loads the symbols of every ELF file it has
    /// mapped executable, so its stacks still symbolize after it exits.
    public func observe(tgid: UInt32) {
        for mapping in snapshot(tgid: tgid, now: clock(), forceRead: true) {
            if case .file = mapping.kind { _ = image(for: mapping, tgid: tgid) }
        }
    }

    /// Reads the mappings of `tgid` unless they are known: cheap (no ELF file is opened), so
    /// a caller with many processes' stacks to name can first take every snapshot while the
    /// processes still run, then resolve them (a process that exits meanwhile still names
    /// its frames, from its files on the host).
    public func remember(tgid: UInt32) {
        _ = snapshot(tgid: tgid, now: clock(), forceRead: false)
    }

    static func frame(_ ip: UInt64, mapping: Mapping, image: ELFImage?) -> StackFrame {
        let fromStart = ip - mapping.start
        let fileOffset = fromStart &+ mapping.offset
        let module = mapping.module
        if let image, let vaddr = image.vaddr(fileOffset: fileOffset), let index = image.symbolIndex(vaddr: vaddr) {
            return StackFrame(symbol: image.symbols.name(at: index), module: module,
                              offset: vaddr - image.symbols.addresses[index], address: ip)
        }
        if case .file = mapping.kind {
            return StackFrame(symbol: nil, module: module, offset: fileOffset, address: ip)
        }
        return StackFrame(symbol: nil, module: module, offset: fromStart, address: ip)
    }

    // MARK: Process snapshots

    /// The known mappings of `tgid`, read first when there are none yet or `forceRead`.
    private func snapshot(tgid: UInt32, now: Double, forceRead: Bool) -> [Mapping] {
        let known: [Mapping]? = state.withLock { state in
            prune(&state, now: now)
            guard !forceRead, var process = state.processes[tgid] else { return nil }
            process.lastSeen = now
            state.processes[tgid] = process
            return process.mappings
        }
        if let known {
            guard reused(tgid: tgid, now: now) else { return known }
            state.withLock { _ = $0.processes.removeValue(forKey: tgid) }
        }
        return store(tgid: tgid, read: ProcFiles.read("\(procRoot)/\(tgid)/maps"), now: now)
    }

    /// Whether `tgid` is now another process than its snapshot's (its start time changed),
    /// checked at most once a second; a process that is gone is the same one.
    private func reused(tgid: UInt32, now: Double) -> Bool {
        let due = state.withLock { state -> UInt64?? in
            guard var process = state.processes[tgid], now - process.checkedAt >= 1 else { return .none }
            process.checkedAt = now
            state.processes[tgid] = process
            return .some(process.startTime)
        }
        guard case .some(let known) = due, let known, let current = startTime(tgid) else { return false }
        return current != known
    }

    /// Field 22 of /proc/PID/stat (after the parenthesised comm, which may hold anything).
    func startTime(_ tgid: UInt32) -> UInt64? {
        guard let text = ProcFiles.read("\(procRoot)/\(tgid)/stat"), let close = text.lastIndex(of: UInt8(ascii: ")")) else { return nil }
        let fields = text[(close + 1)...].split(separator: UInt8(ascii: " "))
        guard fields.count > 19 else { return nil }
        return UInt64(String(decoding: fields[19], as: UTF8.self))
    }

    /// Reads the maps of `tgid` again unless they were read less than a second ago; the
    /// new mappings, or nil when nothing changed.
    private func reread(tgid: UInt32, now: Double) -> [Mapping]? {
        let due = state.withLock { state -> Bool in
            guard var process = state.processes[tgid] else { return true }
            guard now - process.readAt >= 1 else { return false }
            process.readAt = now
            state.processes[tgid] = process
            return true
        }
        guard due, let text = ProcFiles.read("\(procRoot)/\(tgid)/maps") else { return nil }
        return store(tgid: tgid, read: text, now: now)
    }

    /// Records maps `text` (nil: unreadable, the process is gone) for `tgid`; what is known
    /// of it afterwards. Images already opened stay with the mappings that did not change.
    private func store(tgid: UInt32, read text: [UInt8]?, now: Double) -> [Mapping] {
        let fresh = text.map(ProcessMaps.parse)
        let started = text == nil ? nil : startTime(tgid)
        return state.withLock { state in
            if var process = state.processes[tgid] {
                process.readAt = now
                process.lastSeen = now
                if let fresh {
                    let kept = Set(fresh.filter { process.mappings.contains($0) }.map(\.start))
                    process.images = process.images.filter { kept.contains($0.key) }
                    process.failed = []
                    process.mappings = fresh
                    process.startTime = started ?? process.startTime
                }
                state.processes[tgid] = process
                return process.mappings
            }
            // A process gone before its first read is remembered with no mappings, so each of
            // its stacks does not try /proc again (re-reads stay once a second).
            if state.processes.count >= maxProcesses, let oldest = state.processes.min(by: { $0.value.lastSeen < $1.value.lastSeen }) {
                state.processes[oldest.key] = nil
            }
            state.processes[tgid] = Process(mappings: fresh ?? [], readAt: now, lastSeen: now, startTime: started, checkedAt: now)
            return fresh ?? []
        }
    }

    /// Drops processes not seen for `retention` seconds (checked at most once a second).
    private func prune(_ state: inout State, now: Double) {
        guard now - state.prunedAt >= 1 else { return }
        state.prunedAt = now
        state.processes = state.processes.filter { now - $0.value.lastSeen < retention }
    }

    // MARK: ELF images

    /// The symbols of the file behind `mapping`, from the cache or opened now; nil for a
    /// mapping that is not a file or a file that cannot be read.
    private func image(for mapping: Mapping, tgid: UInt32) -> ELFImage? {
        guard case .file(let path) = mapping.kind else {
            return mapping.kind == .vdso ? Self.vdso : nil
        }
        let cached: ELFImage?? = state.withLock { state in
            guard let process = state.processes[tgid] else { return .some(nil) }
            if let key = process.images[mapping.start] {
                if let image = Self.use(key, in: &state) { return image }
            }
            return process.failed.contains(mapping.start) ? .some(nil) : nil
        }
        if let cached { return cached }

        // The process's own view of the file while it lives (map_files: the mapped file
        // itself, deleted or not; its root: a process in another mount namespace, where an
        // overlayfs file's stat need not show the inode maps shows); after it exited, the file
        // of that path on this host only when it is the same file (device and inode).
        let device = (major: UInt32(truncatingIfNeeded: mapping.device >> 20), minor: UInt32(truncatingIfNeeded: mapping.device & 0xfffff))
        let candidates = ["\(procRoot)/\(tgid)/map_files/\(mapping.mapFilesName)", "\(procRoot)/\(tgid)/root\(path)", path]
        for candidate in candidates {
            guard let identity = FileIdentity.of(path: candidate) else { continue }
            let onHost = candidate == path
            if onHost, identity.inode != mapping.inode || ELFImage.major(identity.device) != device.major || ELFImage.minor(identity.device) != device.minor {
                continue
            }
            let known = state.withLock { state -> ELFImage? in
                guard let key = state.identities[identity], let image = Self.use(key, in: &state) else { return nil }
                state.processes[tgid]?.images[mapping.start] = key
                return image
            }
            if let known { return known }
            guard let (loaded, loadedIdentity) = ELFImage.load(path: candidate, inode: onHost ? mapping.inode : nil, device: onHost ? device : nil) else { continue }
            return state.withLock { state in
                let key = loaded.buildID.map(ImageKey.buildID) ?? .file(loadedIdentity)
                let image = Self.use(key, in: &state) ?? insert(loaded, key: key, in: &state)
                if state.identities.count >= 1 << 14 { state.identities.removeAll(keepingCapacity: true) }
                state.identities[loadedIdentity] = key
                state.processes[tgid]?.images[mapping.start] = key
                return image
            }
        }
        state.withLock { _ = $0.processes[tgid]?.failed.insert(mapping.start) }
        return nil
    }

    private static func use(_ key: ImageKey, in state: inout State) -> ELFImage? {
        guard var entry = state.images[key] else { return nil }
        state.tick += 1
        entry.lastUse = state.tick
        state.images[key] = entry
        return entry.image
    }

    /// Adds `image` to the cache and evicts the least recently used others until the cache
    /// fits its bound (or `image` is all it holds).
    private func insert(_ image: ELFImage, key: ImageKey, in state: inout State) -> ELFImage {
        state.tick += 1
        state.images[key] = CachedImage(image: image, lastUse: state.tick)
        state.bytes += image.estimatedBytes
        // The image just added stays even when it alone is over the bound: evicting it would
        // parse the whole file again for each of its stacks.
        while state.bytes > maxCacheBytes, let oldest = state.images.filter({ $0.key != key }).min(by: { $0.value.lastUse < $1.value.lastUse }) {
            state.images[oldest.key] = nil
            state.bytes -= oldest.value.image.estimatedBytes
        }
        return image
    }

    /// This process's vDSO, which is the kernel's and so every 64-bit process's.
    private static let vdso: ELFImage? = {
        guard let maps = ProcFiles.read("/proc/self/maps"),
              let mapping = ProcessMaps.parse(maps).first(where: { $0.kind == .vdso }),
              let start = UnsafeRawPointer(bitPattern: UInt(mapping.start)) else { return nil }
        return ELFImage.parse(UnsafeRawBufferPointer(start: start, count: Int(mapping.end - mapping.start)))
    }()
}
