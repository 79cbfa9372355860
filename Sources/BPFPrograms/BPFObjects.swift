import Foundation

/// The BPF objects compiled from `bpf/*.bpf.c` at build time, by name (the file stem).
public enum BPFObjects {
    /// The ELF bytes of the object compiled from `bpf/<name>.bpf.c`.
    ///
    /// A missing name is a programming error: the set of objects is fixed at build time.
    public static func bytes(_ name: String) -> [UInt8] {
        let image = image(name)
        return [UInt8](UnsafeRawBufferPointer(start: image.base, count: image.count))
    }

    /// The same bytes, decoded once per process and never freed: every load of the object
    /// reads them in place (no per-load decoding or copy), and libbpf may keep pointers
    /// into them for as long as it likes.
    public static func image(_ name: String) -> Image {
        guard let image = images[name] else {
            preconditionFailure("No BPF object named \(name) was built from bpf/\(name).bpf.c.")
        }
        return image
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
