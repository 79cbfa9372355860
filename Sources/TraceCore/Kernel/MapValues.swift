@_exported import BPFPrograms
import CBPFLayouts

/// Typed map values: the structs of `bpf/include/traceplane/*.h`, imported from C, read and
/// written whole. The layout is declared once, in the header both sides compile.
extension Array where Element == UInt8 {
    /// The bytes as one `T` (the value must be exactly `T`'s size).
    func load<T: BitwiseCopyable>(as type: T.Type) -> T {
        precondition(count == MemoryLayout<T>.size, "a map value of \(count) bytes read as \(T.self) (\(MemoryLayout<T>.size) bytes)")
        return withUnsafeBytes { $0.loadUnaligned(as: T.self) }
    }

    /// Back-to-back `T`s.
    func loadAll<T: BitwiseCopyable>(as type: T.Type) -> [T] {
        let size = MemoryLayout<T>.size
        precondition(count % size == 0, "\(count) bytes are not a whole number of \(T.self) (\(size) bytes)")
        return withUnsafeBytes { raw in (0..<(count / size)).map { raw.loadUnaligned(fromByteOffset: $0 * size, as: T.self) } }
    }

    /// The bytes of `value`, as a map key or value.
    static func bytes<T: BitwiseCopyable>(of value: T) -> [UInt8] {
        Swift.withUnsafeBytes(of: value) { [UInt8]($0) }
    }
}

extension LoadedObject {
    /// One key of a map whose keys are `u32` (arrays), one value per CPU for per-CPU maps.
    func lookup<Value: BitwiseCopyable>(_ map: BPFMapID, index: UInt32, as type: Value.Type) throws(KernelError) -> [Value]? {
        try lookup(map: map, key: .bytes(of: index.littleEndian))?.map { $0.load(as: Value.self) }
    }

    /// Sets one key of a map whose keys are `u32`.
    func update<Value: BitwiseCopyable>(_ map: BPFMapID, index: UInt32, to value: Value) throws(KernelError) {
        try update(map: map, key: .bytes(of: index.littleEndian), value: .bytes(of: value))
    }

    /// Entries `first ..< first + count` of a plain array map of `Value`s.
    func arrayValues<Value: BitwiseCopyable>(_ map: BPFMapID, first: UInt32, count: Int, as type: Value.Type) throws(KernelError) -> [Value] {
        try readArrayValues(map: map, first: first, count: count, valueSize: MemoryLayout<Value>.size).loadAll(as: Value.self)
    }
}

/// A C `char[N]` imported as a tuple, as a String (up to the first NUL).
func cString<T>(_ tuple: T) -> String {
    withUnsafeBytes(of: tuple) { raw in String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self) }
}

/// Fills a C `char[N]` tuple from `text`, NUL-terminated within its size.
func setCString<T>(_ tuple: inout T, _ text: String) {
    withUnsafeMutableBytes(of: &tuple) { raw in
        raw.initializeMemory(as: UInt8.self, repeating: 0)
        for (i, byte) in text.utf8.prefix(raw.count - 1).enumerated() { raw[i] = byte }
    }
}
