import Foundation

/// An embedded BPF object, compiled from `bpf/<name>.bpf.c` at build time.
///
/// Only the generated bindings (`LatencyBPF.object`, `SyscallHubBPF.object`, …) make these:
/// every object, program, map and global that code outside this module can name exists in
/// the compiled objects.
public struct BPFObjectID: Hashable, Sendable, CustomStringConvertible {
    public let name: String
    init(name: String) { self.name = name }
    public var description: String { name }
}

/// A program of an embedded object (a function in a `SEC(...)` section).
public struct BPFProgramID: Hashable, Sendable, CustomStringConvertible {
    public let object: BPFObjectID
    public let name: String
    /// The program's `SEC()` name, e.g. `fentry` or `tp_btf/sys_enter`.
    public let section: String
    init(object: BPFObjectID, name: String, section: String) {
        self.object = object
        self.name = name
        self.section = section
    }
    public var description: String { name }
}

/// A BTF-defined map of an embedded object (a variable in `.maps`).
public struct BPFMapID: Hashable, Sendable, CustomStringConvertible {
    public let object: BPFObjectID
    public let name: String
    init(object: BPFObjectID, name: String) {
        self.object = object
        self.name = name
    }
    public var description: String { name }
}

/// A `const volatile` global of an embedded object, set before load (`.rodata`).
public struct BPFGlobalID: Hashable, Sendable, CustomStringConvertible {
    public let object: BPFObjectID
    public let name: String
    /// Its size in bytes, from the object's symbol table.
    public let size: Int
    init(object: BPFObjectID, name: String, size: Int) {
        self.object = object
        self.name = name
        self.size = size
    }
    public var description: String { name }
}

/// The compiled objects' bytes.
public enum BPFObjects {
    /// The ELF bytes of `object`, decoded once per process and never freed: every load of
    /// the object reads them in place (no per-load decoding or copy), and libbpf may keep
    /// pointers into them for as long as it likes.
    public static func image(_ object: BPFObjectID) -> Image {
        guard let image = images[object.name] else {
            preconditionFailure("No BPF object named \(object.name) was embedded from bpf/\(object.name).bpf.c.")
        }
        return image
    }

    /// The same bytes, copied.
    public static func bytes(_ object: BPFObjectID) -> [UInt8] {
        let image = image(object)
        return [UInt8](UnsafeRawBufferPointer(start: image.base, count: image.count))
    }

    /// Immutable bytes that live as long as the process.
    public struct Image: @unchecked Sendable {
        // Written once, before publication through the `images` global; never mutated or freed.
        public let base: UnsafeRawPointer
        public let count: Int
    }

    private static let images: [String: Image] = embeddedBPFObjects.compactMapValues { encoded in
        guard let data = Data(base64Encoded: encoded) else { return nil }
        let storage = UnsafeMutableRawBufferPointer.allocate(byteCount: max(data.count, 1), alignment: 8)
        _ = data.copyBytes(to: storage.bindMemory(to: UInt8.self))
        return Image(base: UnsafeRawPointer(storage.baseAddress!), count: data.count)
    }

    /// Names of every embedded object.
    public static var names: [String] { embeddedBPFObjects.keys.sorted() }
}
