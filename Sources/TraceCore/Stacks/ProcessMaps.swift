/// One executable mapping of a process, from /proc/PID/maps.
struct Mapping: Sendable, Hashable {
    enum Kind: Sendable, Hashable {
        /// A file; the path as maps shows it (it may end in " (deleted)").
        case file(String)
        case vdso
        case anonymous
        /// Another kernel-named area (`[stack]`, `[vsyscall]`, `[uprobes]`).
        case special(String)
    }

    var start: UInt64
    var end: UInt64
    /// The file offset of `start`.
    var offset: UInt64
    var device: UInt64
    var inode: UInt64
    var kind: Kind

    /// The name frames in this mapping carry as their module.
    var module: String {
        switch kind {
        case .file(let path): path
        case .vdso: "[vdso]"
        case .anonymous: "[anon]"
        case .special(let name): name
        }
    }

    /// The `start-end` name of this mapping under /proc/PID/map_files.
    var mapFilesName: String { String(start, radix: 16) + "-" + String(end, radix: 16) }
}

enum ProcessMaps {
    /// The executable mappings in maps `text`, sorted by start address. Lines that do not
    /// parse are left out.
    static func parse(_ text: [UInt8]) -> [Mapping] {
        var mappings: [Mapping] = []
        text.withUnsafeBufferPointer { bytes in
            let n = bytes.count
            var i = 0
            while i < n {
                var lineEnd = i
                while lineEnd < n, bytes[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
                defer { i = lineEnd + 1 }
                var p = i
                func hex() -> UInt64? {
                    var value: UInt64 = 0
                    let first = p
                    while p < lineEnd, let digit = hexDigit(bytes[p]) {
                        value = value &<< 4 | UInt64(digit)
                        p += 1
                    }
                    return p > first ? value : nil
                }
                func skip(_ byte: UInt8) -> Bool {
                    guard p < lineEnd, bytes[p] == byte else { return false }
                    p += 1
                    return true
                }
                func spaces() { while p < lineEnd, bytes[p] == UInt8(ascii: " ") { p += 1 } }
                guard let start = hex(), skip(UInt8(ascii: "-")), let end = hex(), skip(UInt8(ascii: " ")),
                      p + 4 <= lineEnd else { continue }
                let executable = bytes[p + 2] == UInt8(ascii: "x")
                p += 4
                spaces()
                guard executable, let offset = hex() else { continue }
                spaces()
                guard let major = hex(), skip(UInt8(ascii: ":")), let minor = hex() else { continue }
                spaces()
                guard let inode = decimal(bytes, &p, lineEnd) else { continue }
                spaces()
                let path = String(decoding: UnsafeBufferPointer(rebasing: bytes[p..<lineEnd]), as: UTF8.self)
                let kind: Mapping.Kind
                if path.isEmpty || path.hasPrefix("[anon") {
                    kind = .anonymous
                } else if path == "[vdso]" {
                    kind = .vdso
                } else if path.hasPrefix("[") {
                    kind = .special(path)
                } else {
                    kind = .file(path)
                }
                mappings.append(Mapping(start: start, end: end, offset: offset, device: major << 20 | minor, inode: inode, kind: kind))
            }
        }
        mappings.sort { $0.start < $1.start }
        return mappings
    }

    /// The index of the mapping holding `address` in sorted `mappings`.
    static func index(of address: UInt64, in mappings: [Mapping]) -> Int? {
        var low = 0
        var high = mappings.count
        while low < high {
            let mid = (low + high) >> 1
            if mappings[mid].start <= address { low = mid + 1 } else { high = mid }
        }
        guard low > 0, address < mappings[low - 1].end else { return nil }
        return low - 1
    }

    private static func decimal(_ bytes: UnsafeBufferPointer<UInt8>, _ p: inout Int, _ end: Int) -> UInt64? {
        var value: UInt64 = 0
        let first = p
        while p < end, bytes[p] >= UInt8(ascii: "0"), bytes[p] <= UInt8(ascii: "9") {
            value = value &* 10 &+ UInt64(bytes[p] - UInt8(ascii: "0"))
            p += 1
        }
        return p > first ? value : nil
    }

    private static func hexDigit(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
