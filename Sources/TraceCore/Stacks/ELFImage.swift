import Glibc

/// What symbolization needs of one ELF64 little-endian file: its loadable segments, its
/// GNU build id, and its function symbols (.symtab and .dynsym) as a sorted table.
final class ELFImage: Sendable {
    /// One PT_LOAD program header.
    struct Segment: Sendable, Hashable {
        var fileOffset: UInt64
        var fileSize: UInt64
        var vaddr: UInt64
    }

    let segments: [Segment]
    /// The NT_GNU_BUILD_ID note's bytes; nil when the file has none.
    let buildID: [UInt8]?
    let symbols: SymbolTable

    init(segments: [Segment], buildID: [UInt8]?, symbols: SymbolTable) {
        self.segments = segments
        self.buildID = buildID
        self.symbols = symbols
    }

    /// The build id as lowercase hex, the way `readelf -n` prints it.
    var buildIDHex: String? {
        buildID.map { bytes in bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined() }
    }

    /// What the image occupies in memory, for the cache's bound.
    var estimatedBytes: Int { symbols.estimatedBytes + segments.count * 24 + (buildID?.count ?? 0) + 128 }

    /// The virtual address (as the file's symbols use it) of a file offset; nil when no
    /// PT_LOAD segment holds that offset.
    func vaddr(fileOffset: UInt64) -> UInt64? {
        for segment in segments where fileOffset >= segment.fileOffset && fileOffset - segment.fileOffset < segment.fileSize {
            return fileOffset - segment.fileOffset + segment.vaddr
        }
        return nil
    }

    /// The function containing `vaddr`: its table index, or nil when `vaddr` is before
    /// every function or past the end of the preceding one (when its size is known).
    func symbolIndex(vaddr: UInt64) -> Int? {
        guard let index = symbols.index(containing: vaddr) else { return nil }
        let size = symbols.size(at: index)
        if size != 0, vaddr - symbols.addresses[index] >= size { return nil }
        return index
    }

    /// Reads the file at `path` (mapped read-only for the parse, unmapped after). Returns
    /// nil when it cannot be opened or is not an ELF64 little-endian file.
    static func load(path: String) -> (ELFImage, FileIdentity)? {
        let fd = path.withCString { open($0, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & 0o170000 == 0o100000, info.st_size >= 64 else { return nil }
        let size = Int(info.st_size)
        guard let base = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), base != UnsafeMutableRawPointer(bitPattern: -1) else {
            return nil
        }
        defer { munmap(base, size) }
        guard let image = parse(UnsafeRawBufferPointer(start: base, count: size)) else { return nil }
        return (image, FileIdentity(info))
    }

    private static let functionType: UInt8 = 2
    private static let ifuncType: UInt8 = 10

    /// Parses an ELF64 little-endian image; every offset is checked against the buffer.
    static func parse(_ file: UnsafeRawBufferPointer) -> ELFImage? {
        let reader = Reader(bytes: file)
        guard file.count >= 64, file[0] == 0x7F, file[1] == UInt8(ascii: "E"), file[2] == UInt8(ascii: "L"),
              file[3] == UInt8(ascii: "F"), file[4] == 2, file[5] == 1 else { return nil }
        let phoff = reader.u64(0x20), shoff = reader.u64(0x28)
        let phentsize = Int(reader.u16(0x36)), phnum = Int(reader.u16(0x38))
        let shentsize = Int(reader.u16(0x3A))
        var shnum = Int(reader.u16(0x3C))

        var segments: [Segment] = []
        var buildID: [UInt8]?
        if phentsize >= 56, let ph = reader.offset(phoff) {
            for i in 0..<phnum {
                let at = ph + i * phentsize
                guard reader.has(at, 56) else { break }
                let type = reader.u32(at)
                let offset = reader.u64(at + 8), vaddr = reader.u64(at + 16), filesz = reader.u64(at + 32)
                if type == 1 {
                    segments.append(Segment(fileOffset: offset, fileSize: filesz, vaddr: vaddr))
                } else if type == 4, buildID == nil {
                    buildID = reader.buildID(noteAt: offset, size: filesz)
                }
            }
        }

        struct Section { var type: UInt32; var name: UInt32; var offset: UInt64; var size: UInt64; var link: Int; var entsize: UInt64 }
        var sections: [Section] = []
        if shentsize >= 64, shoff != 0, let sh = reader.offset(shoff), reader.has(sh, 64) {
            if shnum == 0 { shnum = Int(truncatingIfNeeded: min(reader.u64(sh + 32), 1 << 20)) }
            sections.reserveCapacity(min(shnum, 1 << 16))
            for i in 0..<shnum {
                let at = sh + i * shentsize
                guard reader.has(at, 64) else { break }
                sections.append(Section(type: reader.u32(at + 4), name: reader.u32(at), offset: reader.u64(at + 24),
                                        size: reader.u64(at + 32), link: Int(reader.u32(at + 40)), entsize: reader.u64(at + 56)))
            }
        }
        if buildID == nil {
            for section in sections where section.type == 7 {
                if let id = reader.buildID(noteAt: section.offset, size: section.size) {
                    buildID = id
                    break
                }
            }
        }

        let tables = sections.filter { $0.type == 2 || $0.type == 11 }
        let estimated = tables.reduce(0) { $0 + Int(truncatingIfNeeded: min($1.size / 24, 1 << 24)) }
        var builder = SymbolTableBuilder(withSizes: true, withModules: false, expectedCount: estimated, expectedNameBytes: estimated * 24)
        for table in tables.sorted(by: { $0.type < $1.type }) {
            guard table.link < sections.count, let symbols = reader.offset(table.offset), reader.has(symbols, table.size) else { continue }
            let strings = sections[table.link]
            guard let stringBase = reader.offset(strings.offset), reader.has(stringBase, strings.size) else { continue }
            let stringEnd = stringBase + Int(strings.size)
            let entsize = table.entsize >= 24 ? Int(table.entsize) : 24
            let count = Int(table.size) / entsize
            for i in 0..<count {
                let at = symbols + i * entsize
                let info = file[at + 4]
                let type = info & 0xF
                guard type == functionType || type == ifuncType else { continue }
                let value = reader.u64(at + 8)
                guard value != 0, reader.u16(at + 6) != 0 else { continue }
                let nameAt = stringBase + Int(reader.u32(at))
                guard nameAt < stringEnd else { continue }
                var nameEnd = nameAt
                while nameEnd < stringEnd, file[nameEnd] != 0 { nameEnd += 1 }
                guard nameEnd > nameAt else { continue }
                let name = UnsafeRawBufferPointer(rebasing: file[nameAt..<nameEnd])
                let binding = info >> 4
                let bindingRank: UInt8 = binding == 1 ? 0 : binding == 2 ? 1 : 2
                builder.append(address: value, size: reader.u64(at + 16), name: name,
                               rank: bindingRank << 2 | SymbolTableBuilder.underscores(name))
            }
        }
        return ELFImage(segments: segments, buildID: buildID, symbols: builder.build())
    }

    /// Bounds-checked little-endian reads.
    private struct Reader {
        let bytes: UnsafeRawBufferPointer

        func has(_ offset: Int, _ count: Int) -> Bool { offset >= 0 && count >= 0 && offset <= bytes.count - count }
        func has(_ offset: Int, _ count: UInt64) -> Bool { count <= UInt64(Int.max) && has(offset, Int(count)) }
        func offset(_ value: UInt64) -> Int? { value < UInt64(bytes.count) ? Int(value) : nil }
        func u16(_ at: Int) -> UInt16 { UInt16(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt16.self)) }
        func u32(_ at: Int) -> UInt32 { UInt32(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt32.self)) }
        func u64(_ at: Int) -> UInt64 { UInt64(littleEndian: bytes.loadUnaligned(fromByteOffset: at, as: UInt64.self)) }

        /// The descriptor of the first NT_GNU_BUILD_ID note ("GNU", type 3) in a note area.
        func buildID(noteAt offset: UInt64, size: UInt64) -> [UInt8]? {
            guard let start = self.offset(offset), has(start, size) else { return nil }
            let end = start + Int(size)
            var at = start
            while at + 12 <= end {
                let namesz = Int(u32(at)), descsz = Int(u32(at + 4)), type = u32(at + 8)
                let name = at + 12
                let desc = name + ((namesz + 3) & ~3)
                let next = desc + ((descsz + 3) & ~3)
                guard desc + descsz <= end else { return nil }
                if type == 3, namesz == 4, bytes[name] == UInt8(ascii: "G"), bytes[name + 1] == UInt8(ascii: "N"),
                   bytes[name + 2] == UInt8(ascii: "U"), bytes[name + 3] == 0, descsz > 0 {
                    return Array(UnsafeRawBufferPointer(rebasing: bytes[desc..<desc + descsz]))
                }
                at = next
            }
            return nil
        }
    }
}

/// Which file an image came from when it has no build id: device, inode, size and
/// modification time.
struct FileIdentity: Hashable, Sendable {
    var device: UInt64
    var inode: UInt64
    var size: Int64
    var mtimeSeconds: Int64
    var mtimeNanoseconds: Int64

    init(_ info: stat) {
        device = UInt64(info.st_dev)
        inode = UInt64(info.st_ino)
        size = Int64(info.st_size)
        mtimeSeconds = Int64(info.st_mtim.tv_sec)
        mtimeNanoseconds = Int64(info.st_mtim.tv_nsec)
    }

    /// The identity of the file `path` leads to (following links); nil when it cannot be
    /// stat'ed.
    static func of(path: String) -> FileIdentity? {
        var info = stat()
        guard path.withCString({ stat($0, &info) }) == 0 else { return nil }
        return FileIdentity(info)
    }
}
