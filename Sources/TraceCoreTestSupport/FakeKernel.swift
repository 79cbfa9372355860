import Dispatch
import Foundation
import Glibc
import Synchronization
import TraceCore

/// A scriptable in-memory ``KernelBackend`` for unit tests: no BPF, no root.
///
/// Script what the "kernel" does per program name (load failure, attach failure, whether
/// its event fires, map contents, run-time stats) and per attach point (attach failure),
/// run the code under test, then assert on what happened: the call log, which objects and
/// links are still open, and whether a link outlived its object.
///
/// Semantics, mirroring the real kernel seam:
/// - `load` fails with the first scripted load error among the spec's programs (or the
///   object's); otherwise it returns a ``FakeObject`` that counts as open until `close()`.
/// - `attach` fails with the scripted error of the attach point, else of the program;
///   attaching through a closed object fails with `EBADF`.
/// - `fire(trigger)` makes every open link whose point the trigger reaches (see
///   ``FakeKernel/reaches(_:_:)``) count one hit, unless its program is scripted not to fire.
/// - `readMap("hits")` returns one entry (key 0, one little-endian `UInt64` value) with the
///   object's hit count, unless `hits` is scripted. Other unscripted maps read as empty.
/// - `update` and `lookup` of single keys work on the object's own copy of the map
///   (starting from what `readMap` would return), one value per key (a one-CPU kernel).
///
/// Thread-safe: every piece of state lives behind one `Mutex`.
public final class FakeKernel: KernelBackend, Sendable {
    /// What the fake does for one program name.
    public struct ProgramScript: Sendable, Hashable {
        /// Thrown by `load` when a spec contains this program.
        public var loadError: KernelError?
        /// Thrown by `attach` of this program (any point, unless the point has its own script).
        public var attachError: KernelError?
        /// Whether an attached link of this program counts hits when its event fires.
        public var fires: Bool = true
        /// Contents that `readMap(map)` returns for objects holding this program.
        public var maps: [BPFMapID: [MapEntry]] = [:]
        /// Errors that `readMap(map)` throws for objects holding this program.
        public var mapErrors: [BPFMapID: KernelError] = [:]
        /// Run-time statistics reported by `programStats()`; nil reports the hit count as run count.
        public var stats: ProgramStats?

        public init() {}
    }

    /// One call made into the fake, in the order the fake saw them.
    public enum Call: Sendable, Hashable {
        case load(LoadSpec)
        case attach(object: Int, program: BPFProgramID, point: AttachPoint)
        case fire(Trigger)
        case readMap(object: Int, map: BPFMapID)
        case lookupMap(object: Int, map: BPFMapID)
        case updateMap(object: Int, map: BPFMapID)
        case programStats(object: Int)
        case closeLink(link: Int)
        case closeObject(object: Int)
        case inspect
        case check(Feature)
    }

    /// A loaded object as the fake tracks it.
    public struct ObjectRecord: Sendable, Hashable {
        public var id: Int
        public var spec: LoadSpec
        public var isOpen: Bool
        /// The hits counted by its links.
        public var hits: UInt64
        /// True when its owner dropped it without calling `close()`.
        public var droppedOpen: Bool
        public var programs: [BPFProgramID] { spec.programs.map(\.id) }
    }

    /// An attached link as the fake tracks it.
    public struct LinkRecord: Sendable, Hashable {
        public var id: Int
        public var object: Int
        public var program: BPFProgramID
        public var point: AttachPoint
        public var isOpen: Bool
        public var droppedOpen: Bool
    }

    struct State {
        var programs: [BPFProgramID: ProgramScript] = [:]
        var objectLoadErrors: [BPFObjectID: KernelError] = [:]
        var pointAttachErrors: [AttachPoint: KernelError] = [:]
        var objectMaps: [Int: [BPFMapID: [MapEntry]]] = [:]
        var objects: [Int: ObjectRecord] = [:]
        var links: [Int: LinkRecord] = [:]
        var calls: [Call] = []
        var nextID = 1
        var redundantCloses = 0
        var objectsClosedBeforeLinks: [Int] = []
        var loadDelayMicroseconds: UInt32 = 0
        var conditionalLoadErrors: [(when: @Sendable (LoadSpec) -> Bool, error: KernelError)] = []
        var gate: LoadGate?
        /// Inner maps by object, outer map and index: their entries.
        var innerMaps: [Int: [BPFMapID: [UInt32: [MapEntry]]]] = [:]
    }

    let state = Mutex(State())
    /// The fake host: kernel facts, feature checks and the executable path.
    public let fakeHost: FakeHost

    public var host: any HostEnvironment { fakeHost }

    /// A kernel where everything loads, attaches and fires, on a host described by `facts`.
    public init(facts: KernelFacts = .canned(), executablePath: String = "/usr/local/bin/traceplane") {
        fakeHost = FakeHost(facts: facts, executablePath: executablePath)
        fakeHost.recorder = { [weak self] call in self?.record(call) }
    }

    // MARK: Scripting

    /// Edits the script of `program`.
    public func script(_ program: BPFProgramID, _ edit: (inout ProgramScript) -> Void) {
        state.withLock { edit(&$0.programs[program, default: ProgramScript()]) }
    }

    /// Makes loading any spec that contains `program` fail with `error`.
    public func failLoad(_ program: BPFProgramID, with error: KernelError) {
        script(program) { $0.loadError = error }
    }

    /// Makes loading any spec that contains `program` fail at stage `.load` with `errno`.
    public func failLoad(_ program: BPFProgramID, errno: Errno, detail: String = "") {
        failLoad(program, with: KernelError(stage: .load, errno: errno, operation: "load \(program)", detail: detail))
    }

    /// Makes loading any spec of embedded object `object` fail with `error`.
    public func failLoad(object: BPFObjectID, with error: KernelError) {
        state.withLock { $0.objectLoadErrors[object] = error }
    }

    /// Makes attaching `program` (to any point) fail at stage `.attach` with `errno`.
    public func failAttach(_ program: BPFProgramID, errno: Errno, detail: String = "") {
        script(program) {
            $0.attachError = KernelError(stage: .attach, errno: errno, operation: "attach \(program)", detail: detail)
        }
    }

    /// Makes attaching any program to `point` fail with `error` (takes precedence over the
    /// program's attach script).
    public func failAttach(at point: AttachPoint, with error: KernelError) {
        state.withLock { $0.pointAttachErrors[point] = error }
    }

    /// Makes attaching any program to `point` fail at stage `.attach` with `errno`.
    public func failAttach(at point: AttachPoint, errno: Errno, detail: String = "") {
        failAttach(at: point, with: KernelError(stage: .attach, errno: errno, operation: "attach to \(point)", detail: detail))
    }

    /// Makes `program` attach but never count a hit (the kernel swallows the event).
    public func neverFires(_ program: BPFProgramID) {
        script(program) { $0.fires = false }
    }

    /// Sets what `readMap(map)` returns for every object holding `program`, from now on.
    public func setMap(_ map: BPFMapID, of program: BPFProgramID, to entries: [MapEntry]) {
        script(program) { $0.maps[map] = entries }
    }

    /// Makes `readMap(map)` throw `error` for every object holding `program`.
    public func failMapRead(_ map: BPFMapID, of program: BPFProgramID, with error: KernelError) {
        script(program) { $0.mapErrors[map] = error }
    }

    /// Sets the statistics `programStats()` reports for `program`.
    public func setStats(_ stats: ProgramStats, of program: BPFProgramID) {
        script(program) { $0.stats = stats }
    }

    /// Sets what `readMap(map)` returns for the live object `object` (overrides program scripts).
    public func setMap(_ map: BPFMapID, of object: FakeObject, to entries: [MapEntry]) {
        state.withLock { $0.objectMaps[object.id, default: [:]][map] = entries }
    }

    /// Makes loading fail with `error` for every spec that `condition` picks (checked after
    /// the program and object scripts), e.g. only with task storage, or only for one
    /// load-time target.
    public func failLoad(with error: KernelError, when condition: @escaping @Sendable (LoadSpec) -> Bool) {
        state.withLock { $0.conditionalLoadErrors.append((condition, error)) }
    }

    /// Makes every later `load` wait at `gate` until the test opens it (a load in progress
    /// that the test controls). Returns the gate.
    @discardableResult
    public func holdLoads() -> LoadGate {
        let gate = LoadGate()
        state.withLock { $0.gate = gate }
        return gate
    }

    /// Makes every later `load` take `microseconds` (a slow kernel: lets tests interleave
    /// operations that wait for an attach).
    public func slowLoads(microseconds: UInt32) {
        state.withLock { $0.loadDelayMicroseconds = microseconds }
    }

    // MARK: Observation

    /// Every call so far, in order.
    public var calls: [Call] { state.withLock { $0.calls } }

    /// The specs of every `load` call, in order (failed ones included).
    public var loadedSpecs: [LoadSpec] {
        calls.compactMap { if case .load(let spec) = $0 { spec } else { nil } }
    }

    /// Every object that loaded, open or closed, by id.
    public var objects: [ObjectRecord] { state.withLock { $0.objects.values.sorted { $0.id < $1.id } } }

    /// Every link that attached, open or closed, by id.
    public var links: [LinkRecord] { state.withLock { $0.links.values.sorted { $0.id < $1.id } } }

    /// Objects not closed yet (leaks, once the code under test is done).
    public var openObjects: [ObjectRecord] { objects.filter(\.isOpen) }

    /// Links not closed yet (leaks, once the code under test is done).
    public var openLinks: [LinkRecord] { links.filter(\.isOpen) }

    /// How many objects loaded successfully / were closed.
    public var loadCount: Int { state.withLock { $0.objects.count } }
    public var closedObjectCount: Int { state.withLock { $0.objects.values.filter { !$0.isOpen }.count } }

    /// How many links attached successfully / were closed.
    public var attachCount: Int { state.withLock { $0.links.count } }
    public var closedLinkCount: Int { state.withLock { $0.links.values.filter { !$0.isOpen }.count } }

    /// `close()` calls on something already closed (allowed: close is idempotent).
    public var redundantCloses: Int { state.withLock { $0.redundantCloses } }

    /// Objects closed while one of their links was still open (the owner closed in the
    /// wrong order).
    public var objectsClosedBeforeTheirLinks: [Int] { state.withLock { $0.objectsClosedBeforeLinks } }

    /// True when nothing is open and nothing was closed out of order.
    public var isClean: Bool { openObjects.isEmpty && openLinks.isEmpty && objectsClosedBeforeTheirLinks.isEmpty }

    /// A sentence listing what is still open or was closed out of order; empty when clean.
    public var leakReport: String {
        var parts: [String] = []
        for o in openObjects { parts.append("object #\(o.id) (\(o.spec.object): \(o.programs.map(\.name).joined(separator: ", "))) is open") }
        for l in openLinks { parts.append("link #\(l.id) (\(l.program) at \(l.point)) is open") }
        for id in objectsClosedBeforeTheirLinks { parts.append("object #\(id) was closed before its links") }
        return parts.joined(separator: "; ")
    }

    // MARK: KernelBackend

    public func load(_ spec: LoadSpec) throws(KernelError) -> any LoadedObject {
        let (delay, gate) = state.withLock { ($0.loadDelayMicroseconds, $0.gate) }
        if delay > 0 { usleep(delay) }
        gate?.pass()
        let outcome: Result<Int, KernelError> = state.withLock { s in
            s.calls.append(.load(spec))
            if let error = s.objectLoadErrors[spec.object] { return .failure(error) }
            for program in spec.programs {
                if let error = s.programs[program.id]?.loadError { return .failure(error) }
            }
            if let rule = s.conditionalLoadErrors.first(where: { $0.when(spec) }) { return .failure(rule.error) }
            let id = s.nextID
            s.nextID += 1
            s.objects[id] = ObjectRecord(id: id, spec: spec, isOpen: true, hits: 0, droppedOpen: false)
            return .success(id)
        }
        switch outcome {
        case .success(let id): return FakeObject(kernel: self, id: id)
        case .failure(let error): throw error
        }
    }

    public func fire(_ trigger: Trigger) {
        state.withLock { s in
            s.calls.append(.fire(trigger))
            for link in s.links.values where link.isOpen && Self.reaches(trigger, link.point) {
                guard s.objects[link.object]?.isOpen == true, s.programs[link.program]?.fires ?? true else { continue }
                s.objects[link.object]?.hits += 1
            }
        }
    }

    /// Whether making `trigger` happen reaches a program attached at `point`: `getpgid` fires
    /// syscall entry functions, kernel functions and (raw) tracepoints; `uprobeTarget`
    /// fires uprobes; `spin` fires cpu-clock events.
    public static func reaches(_ trigger: Trigger, _ point: AttachPoint) -> Bool {
        switch (trigger, point) {
        case (.getpgid, .loadTimeTarget), (.getpgid, .kprobe), (.getpgid, .kprobeMulti),
             (.getpgid, .tracepoint), (.getpgid, .rawTracepoint):
            true
        case (.uprobeTarget, .uprobe):
            true
        case (.spin, .cpuClock):
            true
        default:
            false
        }
    }

    // MARK: Used by FakeObject, FakeLink, FakeHost

    func record(_ call: Call) {
        state.withLock { $0.calls.append(call) }
    }

    func attach(object id: Int, program: BPFProgramID, point: AttachPoint) throws(KernelError) -> any AttachedLink {
        let outcome: Result<Int, KernelError> = state.withLock { s in
            s.calls.append(.attach(object: id, program: program, point: point))
            guard let object = s.objects[id], object.isOpen else {
                return .failure(KernelError(stage: .attach, errno: .EBADF, operation: "attach \(program) through closed object #\(id)"))
            }
            precondition(object.programs.contains(program),
                         "FakeKernel: object #\(id) (\(object.spec.object)) was not loaded with program \(program).")
            if let error = s.pointAttachErrors[point] ?? s.programs[program]?.attachError { return .failure(error) }
            let linkID = s.nextID
            s.nextID += 1
            s.links[linkID] = LinkRecord(id: linkID, object: id, program: program, point: point, isOpen: true, droppedOpen: false)
            return .success(linkID)
        }
        switch outcome {
        case .success(let linkID): return FakeLink(kernel: self, id: linkID)
        case .failure(let error): throw error
        }
    }

    func readMap(object id: Int, map: BPFMapID) throws(KernelError) -> [MapEntry] {
        let outcome: Result<[MapEntry], KernelError> = state.withLock { s in
            s.calls.append(.readMap(object: id, map: map))
            guard let object = s.objects[id], object.isOpen else {
                return .failure(KernelError(stage: .read, errno: .EBADF, operation: "read map \(map) of closed object #\(id)"))
            }
            let scripts = object.programs.compactMap { s.programs[$0] }
            if let error = scripts.lazy.compactMap({ $0.mapErrors[map] }).first { return .failure(error) }
            if let entries = s.objectMaps[id]?[map] { return .success(entries) }
            if let entries = scripts.lazy.compactMap({ $0.maps[map] }).first { return .success(entries) }
            if map == CapabilityBPF.Maps.hits {
                let value = withUnsafeBytes(of: object.hits.littleEndian, Array.init)
                return .success([MapEntry(key: [0, 0, 0, 0], values: [value])])
            }
            return .success([])
        }
        return try outcome.get()
    }

    /// The object's current entries of `map` (its own copy once written, else the script).
    private static func entries(_ s: State, object: ObjectRecord, map: BPFMapID) -> [MapEntry] {
        if let entries = s.objectMaps[object.id]?[map] { return entries }
        return object.programs.compactMap { s.programs[$0] }.lazy.compactMap { $0.maps[map] }.first ?? []
    }

    /// Values of object `id`'s array map for keys `first ..< first + count`, back to back;
    /// keys never written or scripted read as zeros.
    public func readArrayValues(object id: Int, map: BPFMapID, first: UInt32, count: Int, valueSize: Int) throws(KernelError) -> [UInt8] {
        let outcome: Result<[UInt8], KernelError> = state.withLock { s in
            s.calls.append(.readMap(object: id, map: map))
            guard let object = s.objects[id], object.isOpen else {
                return .failure(KernelError(stage: .read, errno: .EBADF, operation: "read map \(map) of closed object #\(id)"))
            }
            if let error = object.programs.compactMap({ s.programs[$0]?.mapErrors[map] }).first { return .failure(error) }
            var values = [UInt8](repeating: 0, count: valueSize * count)
            for entry in Self.entries(s, object: object, map: map) where entry.key.count == 4 {
                let key = Int(entry.key.withUnsafeBytes { $0.loadUnaligned(as: UInt32.self) })
                guard key >= Int(first), key < Int(first) + count, let value = entry.values.first else { continue }
                let at = (key - Int(first)) * valueSize
                values.replaceSubrange(at..<(at + min(valueSize, value.count)), with: value.prefix(valueSize))
            }
            return .success(values)
        }
        return try outcome.get()
    }

    /// The inner maps object `id` holds in `outer`, by index (see ``LoadedObject/setInnerMap(_:index:maxEntries:)``).
    public func innerMaps(object id: Int, outer: BPFMapID) -> [UInt32: [MapEntry]] {
        state.withLock { $0.innerMaps[id]?[outer] ?? [:] }
    }

    /// Sets what the inner map at `index` of object `id`'s `outer` holds (it must exist).
    public func setInnerEntries(object id: Int, outer: BPFMapID, index: UInt32, _ entries: [MapEntry]) {
        state.withLock { s in
            precondition(s.innerMaps[id]?[outer]?[index] != nil, "no inner map at \(index) of \(outer)")
            s.innerMaps[id]?[outer]?[index] = entries
        }
    }

    func setInnerMap(object id: Int, outer: BPFMapID, index: UInt32) throws(KernelError) {
        let outcome: Result<Void, KernelError> = state.withLock { s in
            s.calls.append(.updateMap(object: id, map: outer))
            guard let object = s.objects[id], object.isOpen else {
                return .failure(KernelError(stage: .attach, errno: .EBADF, operation: "update map \(outer) of closed object #\(id)"))
            }
            s.innerMaps[id, default: [:]][outer, default: [:]][index] = []
            return .success(())
        }
        try outcome.get()
    }

    func removeInnerMap(object id: Int, outer: BPFMapID, index: UInt32) {
        state.withLock { s in
            s.calls.append(.updateMap(object: id, map: outer))
            s.innerMaps[id]?[outer]?[index] = nil
        }
    }

    func readInnerMap(object id: Int, outer: BPFMapID, index: UInt32) throws(KernelError) -> [MapEntry] {
        let outcome: Result<[MapEntry], KernelError> = state.withLock { s in
            s.calls.append(.readMap(object: id, map: outer))
            guard let object = s.objects[id], object.isOpen else {
                return .failure(KernelError(stage: .read, errno: .EBADF, operation: "read map \(outer) of closed object #\(id)"))
            }
            return .success(s.innerMaps[id]?[outer]?[index] ?? [])
        }
        return try outcome.get()
    }

    /// One key of object `id`'s map, as `LoadedObject.lookup` would return it.
    public func lookup(object id: Int, map: BPFMapID, key: [UInt8]) throws(KernelError) -> [[UInt8]]? {
        let outcome: Result<[[UInt8]]?, KernelError> = state.withLock { s in
            s.calls.append(.lookupMap(object: id, map: map))
            guard let object = s.objects[id], object.isOpen else {
                return .failure(KernelError(stage: .read, errno: .EBADF, operation: "read map \(map) of closed object #\(id)"))
            }
            if let error = object.programs.compactMap({ s.programs[$0]?.mapErrors[map] }).first { return .failure(error) }
            return .success(Self.entries(s, object: object, map: map).first { $0.key == key }?.values)
        }
        return try outcome.get()
    }

    /// Sets one key of object `id`'s map.
    public func update(object id: Int, map: BPFMapID, key: [UInt8], value: [UInt8]) throws(KernelError) {
        let outcome: Result<Void, KernelError> = state.withLock { s in
            s.calls.append(.updateMap(object: id, map: map))
            guard let object = s.objects[id], object.isOpen else {
                return .failure(KernelError(stage: .attach, errno: .EBADF, operation: "update map \(map) of closed object #\(id)"))
            }
            var entries = Self.entries(s, object: object, map: map).filter { $0.key != key }
            entries.append(MapEntry(key: key, values: [value]))
            s.objectMaps[id, default: [:]][map] = entries
            return .success(())
        }
        try outcome.get()
    }

    func programStats(object id: Int) -> [ProgramStats] {
        state.withLock { s in
            s.calls.append(.programStats(object: id))
            guard let object = s.objects[id], object.isOpen else { return [] }
            return object.programs.map { name in
                s.programs[name]?.stats
                    ?? ProgramStats(name: name.name, id: UInt32(id), runTimeNanoseconds: object.hits * 100, runCount: object.hits)
            }
        }
    }

    func closeObject(_ id: Int, dropped: Bool) {
        state.withLock { s in
            guard var object = s.objects[id] else { return }
            guard object.isOpen else {
                if !dropped { s.redundantCloses += 1 }
                return
            }
            if dropped {
                // Dropped without close(): keep it open in the books, that is the leak.
                object.droppedOpen = true
                s.objects[id] = object
                return
            }
            if s.links.values.contains(where: { $0.object == id && $0.isOpen }) {
                s.objectsClosedBeforeLinks.append(id)
            }
            object.isOpen = false
            s.objects[id] = object
            s.objectMaps[id] = nil
            s.calls.append(.closeObject(object: id))
        }
    }

    func closeLink(_ id: Int, dropped: Bool) {
        state.withLock { s in
            guard var link = s.links[id] else { return }
            guard link.isOpen else {
                if !dropped { s.redundantCloses += 1 }
                return
            }
            if dropped {
                link.droppedOpen = true
                s.links[id] = link
                return
            }
            link.isOpen = false
            s.links[id] = link
            s.calls.append(.closeLink(link: id))
        }
    }
}

/// Holds loads until opened: ``waitForLoad(timeout:)`` tells a test that a load is in
/// progress (blocked here); ``open()`` lets it, and every later one, through.
public final class LoadGate: Sendable {
    private let arrived = DispatchSemaphore(value: 0)
    private let opened = DispatchSemaphore(value: 0)
    private let isOpen = Mutex(false)

    func pass() {
        arrived.signal()
        if isOpen.withLock({ $0 }) { return }
        opened.wait()
        opened.signal()  // and the next one
    }

    /// Waits until a load reached the gate; false after `seconds`.
    public func waitForLoad(timeout seconds: Double) -> Bool {
        arrived.wait(timeout: .now() + seconds) == .success
    }

    /// The same, for async tests: the wait runs on a thread of its own, never on one of
    /// the few threads that run Swift tasks (the load it waits for may need one of them).
    public func waitForLoad(seconds: Double) async -> Bool {
        await withCheckedContinuation { (continuation: CheckedContinuation<Bool, Never>) in
            Thread { continuation.resume(returning: self.waitForLoad(timeout: seconds)) }.start()
        }
    }

    /// Lets every held and later load through.
    public func open() {
        isOpen.withLock { $0 = true }
        opened.signal()
    }
}

/// An object loaded by ``FakeKernel``.
public final class FakeObject: LoadedObject {
    public let kernel: FakeKernel
    /// The fake kernel's id of this object (see ``FakeKernel/objects``).
    public let id: Int

    init(kernel: FakeKernel, id: Int) {
        self.kernel = kernel
        self.id = id
    }

    public func attach(program: BPFProgramID, to point: AttachPoint) throws(KernelError) -> any AttachedLink {
        try kernel.attach(object: id, program: program, point: point)
    }

    public func readMap(_ name: BPFMapID) throws(KernelError) -> [MapEntry] {
        try kernel.readMap(object: id, map: name)
    }

    public func readArrayValues(map name: BPFMapID, first: UInt32, count: Int, valueSize: Int) throws(KernelError) -> [UInt8] {
        try kernel.readArrayValues(object: id, map: name, first: first, count: count, valueSize: valueSize)
    }

    public func lookup(map name: BPFMapID, key: [UInt8]) throws(KernelError) -> [[UInt8]]? {
        try kernel.lookup(object: id, map: name, key: key)
    }

    public func update(map name: BPFMapID, key: [UInt8], value: [UInt8]) throws(KernelError) {
        try kernel.update(object: id, map: name, key: key, value: value)
    }

    public func setInnerMap(_ outer: BPFMapID, index: UInt32, maxEntries: UInt32) throws(KernelError) {
        try kernel.setInnerMap(object: id, outer: outer, index: index)
    }

    public func removeInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError) {
        kernel.removeInnerMap(object: id, outer: outer, index: index)
    }

    public func readInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError) -> [MapEntry] {
        try kernel.readInnerMap(object: id, outer: outer, index: index)
    }

    public func programStats() -> [ProgramStats] {
        kernel.programStats(object: id)
    }

    public func close() {
        kernel.closeObject(id, dropped: false)
    }

    deinit {
        kernel.closeObject(id, dropped: true)
    }
}

/// A link attached through ``FakeObject``.
public final class FakeLink: AttachedLink {
    public let kernel: FakeKernel
    /// The fake kernel's id of this link (see ``FakeKernel/links``).
    public let id: Int

    init(kernel: FakeKernel, id: Int) {
        self.kernel = kernel
        self.id = id
    }

    public func close() {
        kernel.closeLink(id, dropped: false)
    }

    deinit {
        kernel.closeLink(id, dropped: true)
    }
}

/// A scriptable ``HostEnvironment``: canned kernel facts and per-feature outcomes.
public final class FakeHost: HostEnvironment, Sendable {
    struct State {
        var facts: KernelFacts
        var features: [Feature: KernelError] = [:]
        var schemas: [ProbeTarget: TargetSchema] = [:]
        var cgroups: [CgroupSelector: CgroupMatch] = [:]
        var recorder: (@Sendable (FakeKernel.Call) -> Void)?
    }

    let state: Mutex<State>
    public let executablePath: String

    public init(facts: KernelFacts = .canned(), executablePath: String = "/usr/local/bin/traceplane") {
        state = Mutex(State(facts: facts))
        self.executablePath = executablePath
    }

    /// The facts `inspect()` returns.
    public var facts: KernelFacts {
        get { state.withLock { $0.facts } }
        set { state.withLock { $0.facts = newValue } }
    }

    var recorder: (@Sendable (FakeKernel.Call) -> Void)? {
        get { state.withLock { $0.recorder } }
        set { state.withLock { $0.recorder = newValue } }
    }

    /// The cgroups `matchCgroup` finds (every other selector names none).
    public var cgroups: [CgroupSelector: CgroupMatch] {
        get { state.withLock { $0.cgroups } }
        set { state.withLock { $0.cgroups = newValue } }
    }

    public func matchCgroup(_ selector: CgroupSelector, fact: Cgroup2Fact) -> Result<CgroupMatch, CgroupLookupError> {
        guard fact.layout != .none else { return .failure(CgroupLookupError(field: selector.field, message: "this host has no cgroup2 mount")) }
        if let found = state.withLock({ $0.cgroups[selector] }) { return .success(found) }
        return .failure(CgroupLookupError(field: selector.field, message: "no such cgroup on the fake host"))
    }

    /// Makes `check(feature)` fail with `error`.
    public func failFeature(_ feature: Feature, with error: KernelError) {
        state.withLock { $0.features[feature] = error }
    }

    /// Makes `check(feature)` fail at `stage` with `errno`.
    public func failFeature(_ feature: Feature, errno: Errno, stage: KernelStage = .load, operation: String? = nil) {
        failFeature(feature, with: KernelError(stage: stage, errno: errno, operation: operation ?? "check \(feature.rawValue)"))
    }

    /// Schemas by target; targets not listed get ``TargetSchema/canned(for:)``.
    public var schemas: [ProbeTarget: TargetSchema] {
        get { state.withLock { $0.schemas } }
        set { state.withLock { $0.schemas = newValue } }
    }

    public func schema(for target: ProbeTarget) -> TargetSchema? {
        state.withLock { $0.schemas[target] } ?? TargetSchema.canned(for: target)
    }

    public func inspect() -> KernelFacts {
        let (facts, recorder) = state.withLock { ($0.facts, $0.recorder) }
        recorder?(.inspect)
        return facts
    }

    public func check(_ feature: Feature, facts: KernelFacts) -> Result<Void, KernelError> {
        let (error, recorder) = state.withLock { ($0.features[feature], $0.recorder) }
        recorder?(.check(feature))
        return error.map { .failure($0) } ?? .success(())
    }
}

// MARK: Canned facts and kernels

extension KernelFacts {
    /// Kernel facts for tests. Defaults describe a privileged x86-64 host with BTF, tracefs
    /// and bpffs mounted, and kprobes built in.
    public static func canned(
        release: String = "6.1.0-fake-amd64",
        machine: String = "x86_64",
        btf: Bool = true,
        lockdown: String? = "none",
        jit: String? = "enabled",
        tracefs: MountFact = MountFact(path: "/sys/kernel/tracing", mounted: true, mountedByAgent: false),
        bpffs: MountFact = MountFact(path: "/sys/fs/bpf", mounted: true, mountedByAgent: false),
        syscallPrefix: String? = "__x64_",
        eventSources: [String] = ["breakpoint", "kprobe", "software", "tracepoint", "uprobe"],
        kprobeEvents: Bool = true,
        privileged: Bool = true,
        taskLayout: TaskLayout? = TaskLayout(groupLeader: 2384, comm: 3000)
    ) -> KernelFacts {
        KernelFacts(release: release, machine: machine, btf: btf, lockdown: lockdown, jit: jit, tracefs: tracefs,
                    bpffs: bpffs, syscallPrefix: syscallPrefix, eventSources: eventSources,
                    kprobeEvents: kprobeEvents, privileged: privileged, taskLayout: taskLayout)
    }

    /// The development machines of DESIGN.md: Linux 6.18, BTF, lockdown `integrity`, no
    /// kprobe PMU and no `kprobe_events` (CONFIG_KPROBES off).
    public static func developmentMachine(privileged: Bool = true) -> KernelFacts {
        canned(release: "6.18.44-fake", lockdown: "integrity",
               eventSources: ["breakpoint", "msr", "software", "tracepoint", "uprobe"],
               kprobeEvents: false, privileged: privileged)
    }
}

extension FakeKernel {
    /// A fake of the development machines of DESIGN.md: fentry/fexit fail to load with
    /// EPERM, kprobes load but cannot attach (ENOENT, no kprobe PMU), kprobe_multi cannot
    /// attach (EOPNOTSUPP); tracepoints, raw tracepoints, tp_btf, uprobes and perf events work.
    public static func developmentMachine(executablePath: String = "/usr/local/bin/traceplane") -> FakeKernel {
        let kernel = FakeKernel(facts: .developmentMachine(), executablePath: executablePath)
        let p = CapabilityBPF.Programs.self
        kernel.failLoad(p.capFentry, errno: .EPERM)
        kernel.failLoad(p.capFexit, errno: .EPERM)
        kernel.failAttach(p.capKprobe, errno: .ENOENT)
        kernel.failAttach(p.capKretprobe, errno: .ENOENT)
        kernel.failAttach(p.capKprobeMulti, errno: .EOPNOTSUPP)
        return kernel
    }
}

extension TargetSchema {
    /// What the fake host says of targets it was not told about: the real formats of a few
    /// syscalls and of `sched:sched_switch`, `vfs_read`'s prototype, no names otherwise.
    public static func canned(for target: ProbeTarget) -> TargetSchema? {
        func arg(_ name: String, _ i: Int, _ type: String) -> Argument {
            Argument(name: name, index: i, type: type, shape: TargetSchemaReader.syscallArgumentShape(type))
        }
        switch target.type {
        case .profile:
            return TargetSchema(arguments: nil, fields: nil, source: "a profile has no arguments or fields")
        case .syscall:
            let args: [Argument]? = switch target.name {
            case "read", "write": [arg("fd", 0, "unsigned int"), arg("buf", 1, target.name == "read" ? "char *" : "const char *"), arg("count", 2, "size_t")]
            case "openat": [arg("dfd", 0, "int"), arg("filename", 1, "const char *"), arg("flags", 2, "int"), arg("mode", 3, "umode_t")]
            case "close": [arg("fd", 0, "unsigned int")]
            case "getppid", "getpid", "getpgrp": []
            default: nil
            }
            return TargetSchema(arguments: args, fields: nil, source: "the fake host's format of syscalls:sys_enter_\(target.name ?? "")")
        case .function:
            if target.name == "security_file_open" {
                return TargetSchema(arguments: [Argument(name: "file", index: 0, type: "pointer", shape: .integer(size: 8, signed: false))],
                                    fields: nil, source: "the fake host's BTF prototype of security_file_open", returns: .integer(size: 4, signed: true))
            }
            if target.name == "fput" {
                return TargetSchema(arguments: [Argument(name: "file", index: 0, type: "pointer", shape: .integer(size: 8, signed: false))],
                                    fields: nil, source: "the fake host's BTF prototype of fput", returns: .unreadable("void: the function returns nothing"))
            }
            guard target.name == "vfs_read" else { return TargetSchema(arguments: nil, fields: nil, source: "no BTF prototype") }
            return TargetSchema(arguments: [
                Argument(name: "file", index: 0, type: "pointer", shape: .integer(size: 8, signed: false)),
                Argument(name: "buf", index: 1, type: "char __user *", shape: .integer(size: 8, signed: false)),
                Argument(name: "count", index: 2, type: "u64", shape: .integer(size: 8, signed: false)),
                Argument(name: "pos", index: 3, type: "pointer", shape: .integer(size: 8, signed: false)),
            ], fields: nil, source: "the fake host's BTF prototype of vfs_read")
        case .tracepoint:
            let fields: [Field] = target.name == "sched:sched_switch" ? [
                Field(name: "prev_comm", offset: 8, type: "char[16]", shape: .chars(16)),
                Field(name: "prev_pid", offset: 24, type: "pid_t", shape: .integer(size: 4, signed: true)),
                Field(name: "prev_state", offset: 32, type: "long", shape: .integer(size: 8, signed: true)),
                Field(name: "next_comm", offset: 40, type: "char[16]", shape: .chars(16)),
                Field(name: "next_pid", offset: 56, type: "pid_t", shape: .integer(size: 4, signed: true)),
            ] : []
            return TargetSchema(arguments: nil, fields: fields, source: "the fake host's format of \(target.name ?? "")")
        case .uprobe:
            return TargetSchema(arguments: nil, fields: nil, source: "uprobe targets have no argument names")
        }
    }
}
