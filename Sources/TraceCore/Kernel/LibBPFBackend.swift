import BPFPrograms
import CLibBPF
import Glibc
import Logging
import Synchronization

/// The real kernel seam: libbpf objects and links, owned by Swift objects with
/// idempotent `close()`.
public final class LibBPFBackend: KernelBackend {
    public let host: any HostEnvironment

    public init(host: any HostEnvironment = LinuxHost(), logger: Logger = Logger(label: "traceplane.libbpf")) {
        self.host = host
        LibBPFLog.install(logger)
    }

    public func load(_ spec: LoadSpec) throws(KernelError) -> any LoadedObject {
        try LibBPFObject(spec: spec)
    }

    public func fire(_ trigger: Trigger) {
        switch trigger {
        case .getpgid:
            _ = getpgid(0)
        case .uprobeTarget:
            _ = traceplane_uprobe_target(41)
        case .spin(let milliseconds):
            var now = timespec()
            clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
            let end = Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec) + Int64(milliseconds) * 1_000_000
            var sink: UInt64 = 0
            while true {
                for i in 0..<10_000 { sink &+= UInt64(i) &* 31 }
                clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now)
                if Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec) >= end { break }
            }
            blackHole(sink)
        }
    }
}

@inline(never) func blackHole<T>(_ value: T) { withExtendedLifetime(value) {} }

/// Routes libbpf's log lines into swift-log. libbpf warnings are expected while probing
/// (that is how unsupported mechanisms show), so they are logged at `info`.
enum LibBPFLog {
    static let logger = Mutex<Logger?>(nil)

    static func install(_ logger: Logger) {
        Self.logger.withLock { $0 = logger }
        tp_libbpf_set_logger { level, line in
            guard let line else { return }
            let text = String(cString: line)
            guard let logger = LibBPFLog.logger.withLock({ $0 }) else { return }
            switch level {
            case 0: logger.info("\(text)")
            case 1: logger.debug("\(text)")
            default: logger.trace("\(text)")
            }
        }
    }

    /// Runs `body`, capturing libbpf's warnings on this thread; returns them with the result.
    static func capturing<T>(_ body: () -> T) -> (T, String) {
        tp_log_capture_begin()
        let result = body()
        var buffer = [CChar](repeating: 0, count: 2048)
        tp_log_capture_end(&buffer, buffer.count)
        let text = buffer.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        return (result, summarize(text))
    }

    /// The most telling line of a libbpf/verifier log tail: the last verifier line before
    /// the end marker, or the last line.
    static func summarize(_ log: String) -> String {
        let lines = log.split(separator: "\n").map { $0.trimmingCharacters(in: " ") }.filter { !$0.isEmpty }
        if let end = lines.lastIndex(where: { $0.contains("-- END PROG LOAD LOG --") }), end > 0 {
            // The verifier ends with its statistics; the reason is the line before them.
            let statistics = ["processed ", "verification time ", "stack depth "]
            if let at = lines[..<end].lastIndex(where: { line in
                !statistics.contains { line.hasPrefix($0) } && !line.contains("BEGIN PROG LOAD LOG")
            }) {
                // With the instruction it refused (`917: (79) r1 = *(u64 *)(r0 +32)`), when
                // the log has it, without the register states after it.
                let reason = lines[at]
                if at > 0, let insn = lines[at - 1].split(separator: ";").first, insn.first?.isNumber == true, insn.contains(": (") {
                    return "verifier: \(reason) at \(insn.trimmingCharacters(in: " "))"
                }
                return "verifier: \(reason)"
            }
        }
        return lines.last.map(String.init) ?? ""
    }
}

extension Substring {
    func trimmingCharacters(in set: Character) -> Substring {
        var s = self
        while s.first == set { s.removeFirst() }
        while s.last == set { s.removeLast() }
        return s
    }
}

/// Raw libbpf pointers. Sendable because they are only ever touched under the owning
/// object's Mutex; libbpf objects are not tied to a thread.
struct ObjectHandle: ~Copyable, @unchecked Sendable {
    var object: OpaquePointer?
    /// File descriptors of the inner maps the object owns, by outer map name and index.
    var innerMaps: [String: [UInt32: Int32]] = [:]
    /// The inner-map templates of its arrays of maps, read before load (libbpf frees them
    /// once the outer maps exist).
    var innerTemplates: [String: InnerTemplate] = [:]
    /// Program fds opened from pins, by program name (an adopted object loads none of its own).
    var adoptedPrograms: [String: Int32] = [:]
}

struct InnerTemplate {
    var type: bpf_map_type
    var keySize: UInt32
    var valueSize: UInt32
    var flags: UInt32
}

final class LibBPFObject: LoadedObject {
    let state: Mutex<ObjectHandle>
    let name: String
    let programNames: [String]

    /// Takes over a loaded object (``LibBPFObject/adopt(_:programs:from:)``).
    init(adopted handle: consuming ObjectHandle, name: String, programNames: [String]) {
        self.name = name
        self.programNames = programNames
        state = Mutex(handle)
    }

    init(spec: LoadSpec) throws(KernelError) {
        name = spec.object.name
        programNames = spec.programs.map(\.name)
        // libbpf may keep pointers into the ELF image while the object lives: the embedded
        // image is immortal, shared by every load of the object.
        let image = BPFObjects.image(spec.object)
        guard let object = tp_object_open_mem(image.base, image.count, spec.object.name) else {
            throw KernelError(stage: .open, errno: .current, operation: "open BPF object \(spec.object)")
        }
        var handle = ObjectHandle(object: object)
        do throws(KernelError) {
            try Self.prepare(object, spec: spec)
            var map = bpf_object__next_map(object, nil)
            while let m = map {
                if let t = bpf_map__inner_map(m) {
                    handle.innerTemplates[String(cString: bpf_map__name(m))] = InnerTemplate(
                        type: bpf_map__type(t), keySize: bpf_map__key_size(t), valueSize: bpf_map__value_size(t), flags: bpf_map__map_flags(t))
                }
                map = bpf_object__next_map(object, m)
            }
            let (rc, log) = LibBPFLog.capturing { tp_object_load(object) }
            if rc != 0 {
                let what = spec.programs.map(\.name).joined(separator: ", ")
                throw KernelError(stage: .load, code: -rc, operation: "load \(what)", detail: log)
            }
        } catch {
            Self.free(&handle)
            throw error
        }
        state = Mutex(handle)
    }

    private static func prepare(_ object: OpaquePointer, spec: LoadSpec) throws(KernelError) {
        let wanted = Dictionary(spec.programs.map { ($0.name, $0) }, uniquingKeysWith: { a, _ in a })
        var found = Set<String>()
        var prog = bpf_object__next_program(object, nil)
        while let p = prog {
            let name = String(cString: bpf_program__name(p))
            if let want = wanted[name] {
                found.insert(name)
                bpf_program__set_autoload(p, true)
                if let target = want.loadTimeTarget {
                    let rc = bpf_program__set_attach_target(p, 0, target)
                    if rc != 0 {
                        throw KernelError(stage: .load, code: -rc, operation: "set attach target \(target) for \(name)")
                    }
                }
            } else {
                bpf_program__set_autoload(p, false)
            }
            prog = bpf_object__next_program(object, p)
        }
        if let missing = Set(wanted.keys).subtracting(found).first {
            preconditionFailure("BPF object \(spec.object) has no program named \(missing).")
        }
        for (variable, value) in spec.readOnly {
            let rc = value.withUnsafeBytes { tp_object_set_rodata(object, variable.name, $0.baseAddress, $0.count) }
            precondition(rc == 0, "BPF object \(spec.object) has no read-only global \(variable) of \(value.count) bytes.")
        }
        for (mapID, change) in spec.mapChanges {
            guard let map = bpf_object__find_map_by_name(object, mapID.name) else {
                preconditionFailure("BPF object \(spec.object) has no map named \(mapID).")
            }
            switch change {
            case .taskStorageToHash(let maxEntries):
                bpf_map__set_type(map, bpf_map_type(rawValue: UInt32(TP_MAP_TYPE_HASH)))
                bpf_map__set_max_entries(map, maxEntries)
                bpf_map__set_key_size(map, 4)
            case .maxEntries(let entries):
                bpf_map__set_max_entries(map, entries)
            case .sizes(let key, let value, let entries):
                bpf_map__set_key_size(map, key)
                bpf_map__set_value_size(map, value)
                bpf_map__set_max_entries(map, entries)
            }
        }
    }

    static func free(_ handle: inout ObjectHandle) {
        if let object = handle.object { bpf_object__close(object) }
        handle.object = nil
        for fds in handle.innerMaps.values { for fd in fds.values { Glibc.close(fd) } }
        handle.innerMaps = [:]
        for fd in handle.adoptedPrograms.values { Glibc.close(fd) }
        handle.adoptedPrograms = [:]
    }

    func setInnerMap(_ outer: BPFMapID, index: UInt32, maxEntries: UInt32) throws(KernelError) {
        try state.withLock { (handle) throws(KernelError) in
            guard let object = handle.object, let map = bpf_object__find_map_by_name(object, outer.name),
                  let template = handle.innerTemplates[outer.name] else {
                throw KernelError(stage: .attach, errno: .EBADF, operation: "use map \(outer) of \(name)")
            }
            let fd = tp_map_create(template.type, template.keySize, template.valueSize, maxEntries, template.flags)
            guard fd >= 0 else { throw KernelError(stage: .attach, code: -fd, operation: "create a key table of \(maxEntries) entries") }
            var key = index
            var value = fd
            if bpf_map_update_elem(bpf_map__fd(map), &key, &value, 0) != 0 {
                let code = errno
                Glibc.close(fd)
                throw KernelError(stage: .attach, code: code, operation: "put a key table into \(outer)")
            }
            if let old = handle.innerMaps[outer.name]?[index] { Glibc.close(old) }
            handle.innerMaps[outer.name, default: [:]][index] = fd
        }
    }

    func removeInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError) {
        try state.withLock { (handle) throws(KernelError) in
            guard let fd = handle.innerMaps[outer.name]?[index] else { return }
            guard let object = handle.object, let map = bpf_object__find_map_by_name(object, outer.name) else { return }
            var key = index
            if bpf_map_delete_elem(bpf_map__fd(map), &key) != 0 && errno != ENOENT {
                throw KernelError(stage: .attach, errno: .current, operation: "take a key table out of \(outer)")
            }
            Glibc.close(fd)
            handle.innerMaps[outer.name]?[index] = nil
        }
    }

    func readInnerMap(_ outer: BPFMapID, index: UInt32) throws(KernelError) -> [MapEntry] {
        try state.withLock { (handle) throws(KernelError) -> [MapEntry] in
            guard let fd = handle.innerMaps[outer.name]?[index] else { return [] }
            guard let template = handle.innerTemplates[outer.name] else { return [] }
            var info = tp_map_info()
            guard tp_map_get_info(fd, &info) == 0 else { throw KernelError(stage: .read, errno: .current, operation: "read a key table") }
            let layout = MapReader.Layout(fd: fd, keySize: Int(info.key_size), valueSize: Int(info.value_size), maxEntries: Int(info.max_entries),
                                          perCPU: template.type == BPF_MAP_TYPE_PERCPU_HASH)
            if let entries = try MapReader.readBatched(layout, name: "\(outer.name)[\(index)]") { return entries }
            return try MapReader.readKeyByKey(layout, name: "\(outer.name)[\(index)]")
        }
    }

    deinit {
        state.withLock { Self.free(&$0) }
    }

    func close() {
        state.withLock { Self.free(&$0) }
    }

    private func withProgram<T>(_ program: BPFProgramID, stage: KernelStage, _ body: (OpaquePointer) throws(KernelError) -> T) throws(KernelError) -> T {
        try state.withLock { (handle) throws(KernelError) -> T in
            guard let object = handle.object else {
                throw KernelError(stage: stage, errno: .EBADF, operation: "use closed BPF object \(name)")
            }
            guard let prog = bpf_object__find_program_by_name(object, program.name) else {
                preconditionFailure("BPF object \(name) has no program named \(program).")
            }
            return try body(prog)
        }
    }

    func attach(program: BPFProgramID, to point: AttachPoint) throws(KernelError) -> any AttachedLink {
        try withProgram(program, stage: .attach) { (prog) throws(KernelError) -> any AttachedLink in
            var perfFD: Int32 = -1
            let (link, log): (OpaquePointer?, String) = LibBPFLog.capturing {
                switch point {
                case .loadTimeTarget:
                    return tp_attach_trace(prog)
                case .kprobe(let function, let retprobe):
                    return tp_attach_kprobe(prog, function, retprobe)
                case .kprobeMulti(let pattern, let retprobe):
                    return tp_attach_kprobe_multi(prog, pattern, retprobe)
                case .tracepoint(let category, let name):
                    return tp_attach_tracepoint(prog, category, name)
                case .rawTracepoint(let name):
                    return tp_attach_raw_tracepoint(prog, name)
                case .uprobe(let binary, let symbol, let pid, let retprobe):
                    return tp_attach_uprobe(prog, pid ?? -1, binary, symbol, retprobe)
                case .cpuClock(let period):
                    let fd = tp_perf_event_open_cpu_clock(period)
                    if fd < 0 { errno = -fd; return nil }
                    perfFD = fd
                    return tp_attach_perf_event(prog, fd)
                case .cpuSampler(let cpu, let hz):
                    let fd = tp_perf_event_open_cpu_sampler(cpu, hz)
                    if fd < 0 { errno = -fd; return nil }
                    perfFD = fd
                    return tp_attach_perf_event(prog, fd)
                }
            }
            guard let link else {
                // The attach failed: the perf event is still ours to close.
                let code = errno
                if perfFD >= 0 { Glibc.close(perfFD) }
                throw KernelError(stage: .attach, code: code, operation: "attach \(program) to \(point.summary)", detail: log)
            }
            // Attached: the libbpf link owns the perf event now and closes it when it is
            // destroyed; closing it here too would close whatever fd reuses the number.
            return LibBPFLink(link: link)
        }
    }

    func readMap(_ mapID: BPFMapID) throws(KernelError) -> [MapEntry] {
        try state.withLock { (handle) throws(KernelError) -> [MapEntry] in
            guard let object = handle.object, let map = bpf_object__find_map_by_name(object, mapID.name) else {
                throw KernelError(stage: .read, errno: .EBADF, operation: "read map \(mapID) of \(name)")
            }
            return try MapReader.readAll(map, name: mapID.name)
        }
    }

    /// Runs `body` with the map's layout, under the object's lock.
    private func withMap<T>(_ mapID: BPFMapID, stage: KernelStage,
                            _ body: (MapReader.Layout) throws(KernelError) -> T) throws(KernelError) -> T {
        try state.withLock { (handle) throws(KernelError) -> T in
            guard let object = handle.object, let map = bpf_object__find_map_by_name(object, mapID.name) else {
                throw KernelError(stage: stage, errno: .EBADF, operation: "use map \(mapID) of \(name)")
            }
            return try body(MapReader.layout(of: map))
        }
    }

    /// Runs `body` with the fd of map `mapID`, or of the inner map at `index` of it, under
    /// the object's lock (so the fd cannot be closed meanwhile).
    func withMapFD<T>(_ mapID: BPFMapID, index: UInt32?, _ body: (Int32) throws(KernelError) -> T) throws(KernelError) -> T {
        try state.withLock { (handle) throws(KernelError) -> T in
            if let index {
                guard let fd = handle.innerMaps[mapID.name]?[index] else {
                    throw KernelError(stage: .attach, errno: .ENOENT, operation: "use map \(mapID)[\(index)] of \(name)")
                }
                return try body(fd)
            }
            guard let object = handle.object, let map = bpf_object__find_map_by_name(object, mapID.name) else {
                throw KernelError(stage: .attach, errno: .EBADF, operation: "use map \(mapID) of \(name)")
            }
            return try body(bpf_map__fd(map))
        }
    }

    func readArrayValues(map mapName: BPFMapID, first: UInt32, count: Int, valueSize: Int) throws(KernelError) -> [UInt8] {
        try withMap(mapName, stage: .read) { (layout) throws(KernelError) -> [UInt8] in
            precondition(!layout.perCPU && layout.valueSize == valueSize && layout.keySize == 4,
                         "map \(mapName): not a plain array of \(valueSize)-byte values")
            return try MapReader.readArrayValues(layout, first: first, count: count, name: mapName.name)
        }
    }

    func lookup(map mapName: BPFMapID, key: [UInt8]) throws(KernelError) -> [[UInt8]]? {
        try withMap(mapName, stage: .read) { (layout) throws(KernelError) -> [[UInt8]]? in
            precondition(key.count == layout.keySize, "map \(mapName): key of \(key.count) bytes, expected \(layout.keySize)")
            var value = [UInt8](repeating: 0, count: layout.stride * layout.cpus)
            if bpf_map_lookup_elem(layout.fd, key, &value) != 0 {
                if errno == ENOENT { return nil }
                throw KernelError(stage: .read, errno: .current, operation: "read map \(mapName)")
            }
            return (0..<layout.cpus).map { cpu in
                Array(value[(cpu * layout.stride)..<(cpu * layout.stride + layout.valueSize)])
            }
        }
    }

    func update(map mapName: BPFMapID, key: [UInt8], value: [UInt8]) throws(KernelError) {
        try withMap(mapName, stage: .attach) { (layout) throws(KernelError) in
            precondition(key.count == layout.keySize && value.count == layout.valueSize,
                         "map \(mapName): key/value of \(key.count)/\(value.count) bytes, expected \(layout.keySize)/\(layout.valueSize)")
            var all = [UInt8](repeating: 0, count: layout.stride * layout.cpus)
            for cpu in 0..<layout.cpus { all.replaceSubrange((cpu * layout.stride)..<(cpu * layout.stride + value.count), with: value) }
            if bpf_map_update_elem(layout.fd, key, all, 0) != 0 {
                throw KernelError(stage: .attach, errno: .current, operation: "update map \(mapName)")
            }
        }
    }

    func programStats() -> [ProgramStats] {
        state.withLock { handle in
            guard let object = handle.object else { return [] }
            var stats: [ProgramStats] = []
            for name in programNames {
                guard let prog = bpf_object__find_program_by_name(object, name) else { continue }
                let own = bpf_program__fd(prog)
                let fd = own >= 0 ? own : handle.adoptedPrograms[name] ?? -1
                guard fd >= 0 else { continue }
                var info = tp_prog_info()
                if tp_prog_get_info(fd, &info) == 0 {
                    stats.append(ProgramStats(name: name, id: info.id, runTimeNanoseconds: info.run_time_ns, runCount: info.run_cnt))
                }
            }
            return stats
        }
    }
}

/// A libbpf link (which owns the perf event fd of a perf-event attachment: libbpf closes it
/// when the link is destroyed). Sendable because it is only touched under the owning link's Mutex.
struct LinkHandle: ~Copyable, @unchecked Sendable {
    var link: OpaquePointer?
}

final class LibBPFLink: AttachedLink {
    let state: Mutex<LinkHandle>

    init(link: OpaquePointer) {
        state = Mutex(LinkHandle(link: link))
    }

    func close() {
        state.withLock { h in
            if let link = h.link { tp_link_destroy(link) }
            h.link = nil
        }
    }

    deinit { close() }
}

extension AttachPoint {
    var summary: String {
        switch self {
        case .loadTimeTarget: "its load-time target"
        case .kprobe(let f, let r): "\(r ? "kretprobe" : "kprobe") \(f)"
        case .kprobeMulti(let p, let r): "\(r ? "kretprobe.multi" : "kprobe.multi") \(p)"
        case .tracepoint(let c, let n): "tracepoint \(c):\(n)"
        case .rawTracepoint(let n): "raw tracepoint \(n)"
        case .uprobe(let b, let s, _, let r): "\(r ? "uretprobe" : "uprobe") \(b):\(s)"
        case .cpuClock(let p): "cpu-clock perf event (\(p) ns)"
        case .cpuSampler(let cpu, let hz): "cpu-clock sampler on CPU \(cpu) at \(hz) Hz"
        }
    }
}
