/// The narrow seam between TraceCore and the kernel: load an object, attach a program,
/// read a map, detach. The planner, the capability prober and the probe runtime only
/// speak to this protocol, so a fake (in `TraceCoreTestSupport`) can drive them in unit
/// tests, while ``LibBPFBackend`` runs the same code against the real kernel.
public protocol KernelBackend: Sendable {
    /// Opens an embedded BPF object, applies `spec` (autoload, load-time targets,
    /// read-only settings, map tweaks) and loads it into the kernel.
    ///
    /// - Throws: ``KernelError`` with stage `.load` and the kernel's errno.
    func load(_ spec: LoadSpec) throws(KernelError) -> any LoadedObject

    /// Makes the event that `trigger` names happen, from this process and this thread.
    func fire(_ trigger: Trigger)

    /// Facts about the host that the capability report includes.
    var host: any HostEnvironment { get }
}

/// A loaded BPF object: programs and maps in the kernel. One owner; `close()` frees
/// everything the object holds (links must be closed by their owners first) and is
/// safe to call more than once.
public protocol LoadedObject: AnyObject, Sendable {
    /// Attaches the loaded program `program` at `point`.
    ///
    /// - Throws: ``KernelError`` with stage `.attach`.
    func attach(program: BPFProgramID, to point: AttachPoint) throws(KernelError) -> any AttachedLink

    /// Every entry of map `map`; per-CPU maps give one value per possible CPU.
    ///
    /// - Throws: ``KernelError`` with stage `.read`.
    func readMap(_ map: BPFMapID) throws(KernelError) -> [MapEntry]

    /// The values of entries `first ..< first + count` of array map `map` (not per-CPU),
    /// back to back, `valueSize` bytes each: one batched read where the kernel has it, and
    /// no per-entry allocation (a scrape reads thousands of them).
    ///
    /// - Throws: ``KernelError`` with stage `.read`.
    func readArrayValues(map: BPFMapID, first: UInt32, count: Int, valueSize: Int) throws(KernelError) -> [UInt8]

    /// The value of one key of map `map` (one per possible CPU for per-CPU maps), or nil
    /// when the key is absent.
    ///
    /// - Throws: ``KernelError`` with stage `.read`.
    func lookup(map: BPFMapID, key: [UInt8]) throws(KernelError) -> [[UInt8]]?

    /// Sets one key of map `map` to `value` (on every CPU, for per-CPU maps).
    ///
    /// - Throws: ``KernelError`` with stage `.attach` (map updates configure attached probes).
    func update(map: BPFMapID, key: [UInt8], value: [UInt8]) throws(KernelError)

    /// Creates a map from the inner-map template of array-of-maps `outer`, with `maxEntries`
    /// entries, and puts it at `index` (replacing and freeing what was there). The object
    /// owns it: ``removeInnerMap(_:index:)`` or `close()` frees it.
    ///
    /// - Throws: ``KernelError`` with stage `.attach`.
    func setInnerMap(_ outer: BPFMapID, index: UInt32, maxEntries: UInt32) throws(KernelError)

    /// Takes the inner map at `index` out of `outer` and frees it; nothing when there is none.
    func removeInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError)

    /// Every entry of the inner map at `index` of `outer` (empty when there is none).
    ///
    /// - Throws: ``KernelError`` with stage `.read`.
    func readInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError) -> [MapEntry]

    /// Run-time statistics of the loaded programs (zero unless BPF stats are enabled).
    func programStats() -> [ProgramStats]

    /// Frees the object's programs and maps. Idempotent.
    func close()
}

/// An attachment of a program to an event. `close()` detaches (and may wait for an RCU
/// grace period in the kernel); it is idempotent.
public protocol AttachedLink: AnyObject, Sendable {
    func close()
}

/// What to load: an embedded object and how to prepare it. Programs, maps and globals are
/// the object's generated bindings (`LatencyBPF.Programs.latFentry`, …), so only names the
/// compiled object holds can be given.
public struct LoadSpec: Sendable, Hashable {
    /// A program to load, with the kernel function or BTF tracepoint it binds to at load
    /// time (fentry, fexit and tp_btf need one; others attach later).
    public struct Program: Sendable, Hashable {
        public var id: BPFProgramID
        public var loadTimeTarget: String?
        public init(_ id: BPFProgramID, loadTimeTarget: String? = nil) {
            self.id = id
            self.loadTimeTarget = loadTimeTarget
        }
        public var name: String { id.name }
    }

    /// A change to a map's definition before load.
    public enum MapChange: Sendable, Hashable {
        /// Turn a task-storage map into a hash keyed by thread id (kernels without task storage).
        case taskStorageToHash(maxEntries: UInt32)
        /// Resize a map (the shared syscall hook sizes its tables to the probe limit).
        case maxEntries(UInt32)
        /// Set a map's key size, value size and entries (a probe's key table).
        case sizes(key: UInt32, value: UInt32, maxEntries: UInt32)
    }

    public var object: BPFObjectID
    public var programs: [Program]
    /// Values of `const volatile` globals, as raw little-endian bytes of the global's size.
    public private(set) var readOnly: [BPFGlobalID: [UInt8]] = [:]
    public private(set) var mapChanges: [BPFMapID: MapChange] = [:]

    public init(object: BPFObjectID, programs: [Program]) {
        precondition(programs.allSatisfy { $0.id.object == object }, "LoadSpec: every program must belong to \(object).")
        self.object = object
        self.programs = programs
    }

    /// Sets global `global` before load. The value's width must be the global's size.
    public mutating func set<T: FixedWidthInteger>(_ global: BPFGlobalID, _ value: T) {
        precondition(MemoryLayout<T>.size == global.size, "LoadSpec: a \(T.self) for \(global), which is \(global.size) bytes.")
        set(global, bytes: Swift.withUnsafeBytes(of: value.littleEndian) { [UInt8]($0) })
    }

    public mutating func set(_ global: BPFGlobalID, _ value: Bool) {
        set(global, bytes: [value ? 1 : 0])
    }

    /// Sets global `global` to raw bytes (a string or struct setting), padded with zeros to its size.
    public mutating func set(_ global: BPFGlobalID, bytes: [UInt8]) {
        precondition(global.object == object, "LoadSpec: global \(global) belongs to \(global.object), not \(object).")
        precondition(bytes.count <= global.size, "LoadSpec: \(bytes.count) bytes for \(global), which holds \(global.size).")
        readOnly[global] = bytes + [UInt8](repeating: 0, count: global.size - bytes.count)
    }

    /// Changes map `map`'s definition before load.
    public mutating func change(_ map: BPFMapID, _ change: MapChange) {
        precondition(map.object == object, "LoadSpec: map \(map) belongs to \(map.object), not \(object).")
        mapChanges[map] = change
    }
}

/// Where a loaded program attaches.
public enum AttachPoint: Sendable, Hashable {
    /// fentry, fexit, tp_btf: the target was bound at load time.
    case loadTimeTarget
    case kprobe(function: String, retprobe: Bool)
    case kprobeMulti(pattern: String, retprobe: Bool)
    case tracepoint(category: String, name: String)
    case rawTracepoint(name: String)
    /// `pid` nil traces every process.
    case uprobe(binary: String, symbol: String, pid: Int32?, retprobe: Bool)
    /// A software cpu-clock perf event on the calling thread.
    case cpuClock(periodNanoseconds: UInt64)
    /// A software cpu-clock perf event sampling every task on one CPU (profile targets).
    case cpuSampler(cpu: Int32, frequencyHz: UInt64)
}

/// Events that the capability prober makes happen in its own process.
public enum Trigger: Sendable, Hashable {
    /// A `getpgid(0)` system call (fires syscall entry/exit, its tracepoints and `sys_enter`).
    case getpgid
    /// A call of `traceplane_uprobe_target` in this executable.
    case uprobeTarget
    /// Burns CPU on this thread for about `milliseconds` (fires cpu-clock perf events).
    case spin(milliseconds: Int)
}

/// One map entry, raw: the key bytes and one value per CPU (one value for non-per-CPU maps).
public struct MapEntry: Sendable, Hashable {
    public var key: [UInt8]
    public var values: [[UInt8]]
    public init(key: [UInt8], values: [[UInt8]]) {
        self.key = key
        self.values = values
    }
}

/// Run-time statistics of one loaded program, from the kernel's BPF stats.
public struct ProgramStats: Sendable, Hashable {
    public var name: String
    public var id: UInt32
    public var runTimeNanoseconds: UInt64
    public var runCount: UInt64
    public init(name: String, id: UInt32, runTimeNanoseconds: UInt64, runCount: UInt64) {
        self.name = name
        self.id = id
        self.runTimeNanoseconds = runTimeNanoseconds
        self.runCount = runCount
    }
}
