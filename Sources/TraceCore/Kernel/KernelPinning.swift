import BPFPrograms
import CLibBPF
import Glibc
import Synchronization

/// Pinning: kernel objects named in a bpffs directory outlive the agent (`serve --pin-dir`).
///
/// The layout of one pinned object's directory: `map_<name>` for every map of the object,
/// `prog_<name>` for every program it loaded, `link_<n>` for its n-th link (in the order of
/// the recipe's attachments). Names come from the object itself, so a map added to a BPF
/// file is pinned (and adopted) without this code changing. bpffs refuses names with a dot
/// (EPERM: dots are reserved for the kernel's own files), so a dot in a name (libbpf's
/// internal maps, `latency.rodata`) is written `+`; see ``PinName``.
public protocol PinnableBackend: KernelBackend {
    /// Opens the embedded object `object` again over the maps pinned in `directory` (every
    /// map reused from its pin, none created, internal maps not written again, no program
    /// loaded) and takes `links` pinned links and the pins of `programs`. The object's
    /// counters continue where they are: nothing is detached or attached.
    ///
    /// - Throws: ``KernelError`` with stage `.open` when a pin is missing or unusable.
    func adopt(_ object: BPFObjectID, programs: [String], links: Int, from directory: String) throws(KernelError)
        -> (object: any LoadedObject, links: [any AttachedLink])
}

extension LoadedObject {
    /// Pins every map and loaded program of the object in `directory` (which exists).
    public func pin(in directory: String) throws(KernelError) {
        guard let object = self as? LibBPFObject else {
            throw KernelError(stage: .attach, errno: .EOPNOTSUPP, operation: "pin a BPF object in \(directory)")
        }
        try object.pinAll(in: directory)
    }
}

extension AttachedLink {
    /// Pins the link at `path`: it stays attached when the agent exits.
    public func pin(at path: String) throws(KernelError) {
        guard let pinnable = self as? any PinnableLink else {
            throw KernelError(stage: .attach, errno: .EOPNOTSUPP, operation: "pin a link at \(path)")
        }
        try pinnable.pinLink(at: path)
    }

    /// Lets go of the link without detaching it (its pin keeps it attached); a link that is
    /// not pinned is closed (and so detached).
    public func release() {
        if let pinnable = self as? any PinnableLink { pinnable.releaseLink() } else { close() }
    }
}

/// A link that can be pinned and let go of without detaching.
protocol PinnableLink: AttachedLink {
    func pinLink(at path: String) throws(KernelError)
    func releaseLink()
}

extension LibBPFBackend: PinnableBackend {
    public func adopt(_ object: BPFObjectID, programs: [String], links: Int, from directory: String) throws(KernelError)
        -> (object: any LoadedObject, links: [any AttachedLink]) {
        let adopted = try LibBPFObject.adopt(object, programs: programs, from: directory)
        var opened: [any AttachedLink] = []
        let programIDs = Set(adopted.programIDs())
        for index in 0..<links {
            let path = "\(directory)/\(PinName.link(index))"
            let fd = bpf_obj_get(path)
            guard fd >= 0 else {
                let error = KernelError(stage: .open, errno: .current, operation: "open pinned link \(path)")
                for link in opened { link.release() }
                adopted.close()
                throw error
            }
            let link = PinnedLink(fd: fd)
            opened.append(link)
            // Attached to one of the object's programs: a link whose program is gone (or
            // another's) would count nothing for this probe.
            guard let prog = link.programID, programIDs.contains(prog) else {
                for link in opened { link.release() }
                adopted.close()
                throw KernelError(stage: .open, errno: .ENOENT, operation: "check pinned link \(path)",
                                  detail: "it is not attached to a program of the pinned object")
            }
        }
        return (adopted, opened)
    }
}

extension LibBPFObject {
    func pinAll(in directory: String) throws(KernelError) {
        try state.withLock { (handle) throws(KernelError) in
            guard let object = handle.object else {
                throw KernelError(stage: .attach, errno: .EBADF, operation: "pin closed BPF object \(name)")
            }
            var map = bpf_object__next_map(object, nil)
            while let m = map {
                let path = "\(directory)/\(PinName.map(String(cString: bpf_map__name(m))))"
                let rc = bpf_map__pin(m, path)
                if rc != 0 { throw KernelError(stage: .attach, code: -rc, operation: "pin map at \(path)") }
                map = bpf_object__next_map(object, m)
            }
            var prog = bpf_object__next_program(object, nil)
            while let p = prog {
                if bpf_program__fd(p) >= 0 {
                    let path = "\(directory)/\(PinName.program(String(cString: bpf_program__name(p))))"
                    let rc = bpf_program__pin(p, path)
                    if rc != 0 { throw KernelError(stage: .attach, code: -rc, operation: "pin program at \(path)") }
                }
                prog = bpf_object__next_program(object, p)
            }
        }
    }

    /// The kernel ids of the object's programs (loaded or adopted).
    func programIDs() -> [UInt32] { programStats().map(\.id) }

    /// The embedded object opened over the maps pinned in `directory`.
    ///
    /// libbpf creates no map that has a preset fd (`bpf_map__reuse_fd`), and writes the
    /// initial values of `.rodata`/`.data`/`.bss` only into maps it creates
    /// (`bpf_object__create_maps`: `populate_internal_map` is in the branch that creates),
    /// so the programs' settings and counters stay as the kernel holds them. No program is
    /// autoloaded: the pinned programs keep running, and their pins give their run times.
    static func adopt(_ id: BPFObjectID, programs: [String], from directory: String) throws(KernelError) -> LibBPFObject {
        let image = BPFObjects.image(id)
        guard let object = tp_object_open_mem(image.base, image.count, id.name) else {
            throw KernelError(stage: .open, errno: .current, operation: "open BPF object \(id)")
        }
        var handle = ObjectHandle(object: object)
        do throws(KernelError) {
            var prog = bpf_object__next_program(object, nil)
            while let p = prog {
                bpf_program__set_autoload(p, false)
                prog = bpf_object__next_program(object, p)
            }
            var map = bpf_object__next_map(object, nil)
            while let m = map {
                let name = String(cString: bpf_map__name(m))
                if let t = bpf_map__inner_map(m) {
                    handle.innerTemplates[name] = InnerTemplate(
                        type: bpf_map__type(t), keySize: bpf_map__key_size(t), valueSize: bpf_map__value_size(t), flags: bpf_map__map_flags(t))
                }
                let path = "\(directory)/\(PinName.map(name))"
                let fd = bpf_obj_get(path)
                guard fd >= 0 else { throw KernelError(stage: .open, errno: .current, operation: "open pinned map \(path)") }
                let rc = bpf_map__reuse_fd(m, fd)
                Glibc.close(fd)
                if rc != 0 { throw KernelError(stage: .open, code: -rc, operation: "reuse pinned map \(path)") }
                map = bpf_object__next_map(object, m)
            }
            let (rc, log) = LibBPFLog.capturing { tp_object_load(object) }
            if rc != 0 { throw KernelError(stage: .load, code: -rc, operation: "open \(id) over its pinned maps", detail: log) }
            // The inner maps the outer maps hold (a slot's key table or ring buffer).
            map = bpf_object__next_map(object, nil)
            while let m = map {
                let name = String(cString: bpf_map__name(m))
                if handle.innerTemplates[name] != nil {
                    let outer = bpf_map__fd(m)
                    for index in 0..<bpf_map__max_entries(m) {
                        var key = index
                        var innerID: UInt32 = 0
                        guard bpf_map_lookup_elem(outer, &key, &innerID) == 0, innerID != 0 else { continue }
                        let fd = bpf_map_get_fd_by_id(innerID)
                        guard fd >= 0 else { throw KernelError(stage: .open, errno: .current, operation: "open inner map \(name)[\(index)]") }
                        handle.innerMaps[name, default: [:]][index] = fd
                    }
                }
                map = bpf_object__next_map(object, m)
            }
            for program in programs {
                let path = "\(directory)/\(PinName.program(program))"
                let fd = bpf_obj_get(path)
                guard fd >= 0 else { throw KernelError(stage: .open, errno: .current, operation: "open pinned program \(path)") }
                handle.adoptedPrograms[program] = fd
            }
        } catch {
            free(&handle)
            throw error
        }
        return LibBPFObject(adopted: handle, name: id.name, programNames: programs)
    }
}

extension LibBPFLink: PinnableLink {
    func pinLink(at path: String) throws(KernelError) {
        try state.withLock { (h) throws(KernelError) in
            guard let link = h.link else { throw KernelError(stage: .attach, errno: .EBADF, operation: "pin a closed link at \(path)") }
            let rc = bpf_link__pin(link, path)
            if rc != 0 { throw KernelError(stage: .attach, code: -rc, operation: "pin link at \(path)") }
        }
    }

    /// libbpf's destroy of a perf-event link first disables the perf event (which would
    /// stop a pinned tracepoint from counting): a disconnected link is only freed. Its link
    /// fd is closed here; the perf event fd of a perf-event link stays open until the
    /// process exits (the pinned link holds the perf event anyway).
    func releaseLink() {
        state.withLock { h in
            guard let link = h.link else { return }
            let fd = bpf_link__fd(link)
            bpf_link__disconnect(link)
            tp_link_destroy(link)
            if fd >= 0 { Glibc.close(fd) }
            h.link = nil
        }
    }
}

/// A link opened from its pin: closing the fd after the pin is removed detaches it.
final class PinnedLink: PinnableLink {
    private let fd: Mutex<Int32>

    init(fd: Int32) { self.fd = Mutex(fd) }

    /// The program the link runs, from the kernel's link info.
    var programID: UInt32? {
        fd.withLock { fd in
            var info = bpf_link_info()
            var length = UInt32(MemoryLayout<bpf_link_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &length) == 0 else { return nil }
            return info.prog_id
        }
    }

    func pinLink(at path: String) throws(KernelError) {
        try fd.withLock { (fd) throws(KernelError) in
            if bpf_obj_pin(fd, path) != 0 && errno != EEXIST {
                throw KernelError(stage: .attach, errno: .current, operation: "pin link at \(path)")
            }
        }
    }

    func releaseLink() { close() }

    func close() {
        fd.withLock { fd in
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }

    deinit { close() }
}

/// Names on bpffs, which refuses a dot anywhere in a name. `+` stands for a dot: neither
/// probe names nor C identifiers contain one, so the mapping is one to one.
public enum PinName {
    public static func escaped(_ name: String) -> String { name.replacingOccurrences(of: ".", with: "+") }
    public static func unescaped(_ name: String) -> String { name.replacingOccurrences(of: "+", with: ".") }
    static func map(_ name: String) -> String { "map_" + escaped(name) }
    static func program(_ name: String) -> String { "prog_" + escaped(name) }
    static func link(_ index: Int) -> String { "link_\(index)" }
}
