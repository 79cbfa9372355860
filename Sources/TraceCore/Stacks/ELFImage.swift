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
            return (fileOffset - segment.fileOffset) &+ segment.vaddr
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

    /// Bounds on what one file may make the parser read and keep: a crafted file (any
    /// process can map one executable and be sampled) must not exhaust the agent.
    static let maxTableBytes: UInt64 = 256 << 20   /// one symbol or string table
    static let maxSymbols = 4 << 20                 /// function symbols kept from one file
    static let maxNameBytes = 1024                  /// a longer name is cut there
    static let maxTotalNameBytes = 256 << 20
    static let maxHeaders = 1 << 16                 /// program or section headers read

    /// Reads the ELF file at `path`. The file is read with pread (never mapped: a file
    /// truncated under the parse would raise SIGBUS), opened non-blocking (a FIFO put where
    /// the file was must not hang the reader) and only when it is a regular file whose
    /// inode is `inode`, when given (the file the mapping has, not another at that path).
    /// Returns nil when it cannot be opened or is not an ELF64 little-endian file.
    static func load(path: String, inode: UInt64? = nil, device: (major: UInt32, minor: UInt32)? = nil) -> (ELFImage, FileIdentity)? {
        let fd = path.withCString { open($0, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY) }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var info = stat()
        guard fstat(fd, &info) == 0, info.st_mode & 0o170000 == 0o100000, info.st_size >= 64 else { return nil }
        if let inode, UInt64(info.st_ino) != inode { return nil }
        if let device, Self.major(UInt64(info.st_dev)) != device.major || Self.minor(UInt64(info.st_dev)) != device.minor { return nil }
        let size = UInt64(info.st_size)
        let source = Source { offset, count in
            guard count <= maxTableBytes, offset <= size, count <= size - offset else { return nil }
            var bytes = [UInt8](repeating: 0, count: Int(count))
            var done = 0
            while done < bytes.count {
                let n = bytes.withUnsafeMutableBytes { pread(fd, $0.baseAddress! + done, $0.count - done, off_t(offset) + off_t(done)) }
                if n < 0, errno == EINTR { continue }
                guard n > 0 else { return nil }
                done += n
            }
            return bytes
        }
        guard let image = parse(source) else { return nil }
        return (image, FileIdentity(info))
    }

    /// glibc's `dev_t` encoding (`gnu_dev_major`, `gnu_dev_minor`, macros Swift cannot call).
    static func major(_ dev: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: ((dev >> 8) & 0xfff) | ((dev >> 32) & ~UInt64(0xfff))) }
    static func minor(_ dev: UInt64) -> UInt32 { UInt32(truncatingIfNeeded: (dev & 0xff) | ((dev >> 12) & ~UInt64(0xff))) }

    /// Parses an ELF64 little-endian image held in memory (the vDSO).
    static func parse(_ file: UnsafeRawBufferPointer) -> ELFImage? {
        let size = UInt64(file.count)
        return parse(Source { offset, count in
            guard count <= maxTableBytes, offset <= size, count <= size - offset else { return nil }
            return Array(UnsafeRawBufferPointer(rebasing: file[Int(offset)..<Int(offset + count)]))
        })
    }

    /// Where the parser reads ranges of the file from: `count` bytes at `offset`, nil when
    /// the range is not in the file or beyond ``maxTableBytes``.
    struct Source {
        let read: (_ offset: UInt64, _ count: UInt64) -> [UInt8]?
        init(_ read: @escaping (_ offset: UInt64, _ count: UInt64) -> [UInt8]?) { self.read = read }
        func callAsFunction(_ offset: UInt64, _ count: UInt64) -> Chunk? { read(offset, count).map(Chunk.init) }
    }

    private static let functionType: UInt8 = 2
    private static let ifuncType: UInt8 = 10

    /// Parses an ELF64 little-endian image, reading only its headers, notes and symbol and
    /// string tables; every offset is checked against what was read.
    static func parse(_ source: Source) -> ELFImage? {
        guard let header = source(0, 64), header.bytes[0] == 0x7F, header.bytes[1] == UInt8(ascii: "E"),
              header.bytes[2] == UInt8(ascii: "L"), header.bytes[3] == UInt8(ascii: "F"), header.bytes[4] == 2, header.bytes[5] == 1 else { return nil }
        let phoff = header.u64(0x20), shoff = header.u64(0x28)
        let phentsize = UInt64(header.u16(0x36)), phnum = UInt64(header.u16(0x38))
        let shentsize = UInt64(header.u16(0x3A))
        var shnum = UInt64(header.u16(0x3C))

        var segments: [Segment] = []
        var buildID: [UInt8]?
        if phentsize >= 56, phnum > 0, let ph = source(phoff, phentsize * min(phnum, UInt64(maxHeaders))) {
            for i in 0..<Int(min(phnum, UInt64(maxHeaders))) {
                let at = i * Int(phentsize)
                guard ph.has(at, 56) else { break }
                let type = ph.u32(at)
                let offset = ph.u64(at + 8), vaddr = ph.u64(at + 16), filesz = ph.u64(at + 32)
                if type == 1 {
                    // A segment whose addresses would wrap is no segment.
                    guard vaddr.addingReportingOverflow(filesz).overflow == false,
                          offset.addingReportingOverflow(filesz).overflow == false else { continue }
                    segments.append(Segment(fileOffset: offset, fileSize: filesz, vaddr: vaddr))
                } else if type == 4, buildID == nil, let note = source(offset, min(filesz, 1 << 16)) {
                    buildID = note.buildID()
                }
            }
        }

        struct Section { var type: UInt32; var offset: UInt64; var size: UInt64; var link: Int; var entsize: UInt64 }
        var sections: [Section] = []
        if shentsize >= 64, shoff != 0, let first = source(shoff, 64) {
            if shnum == 0 { shnum = min(first.u64(32), UInt64(maxHeaders)) }
            shnum = min(shnum, UInt64(maxHeaders))
            if let sh = source(shoff, shentsize * shnum) {
                sections.reserveCapacity(Int(shnum))
                for i in 0..<Int(shnum) {
                    let at = i * Int(shentsize)
                    guard sh.has(at, 64) else { break }
                    sections.append(Section(type: sh.u32(at + 4), offset: sh.u64(at + 24), size: sh.u64(at + 32),
                                            link: Int(sh.u32(at + 40)), entsize: sh.u64(at + 56)))
                }
            }
        }
        if buildID == nil {
            for section in sections where section.type == 7 {
                if let note = source(section.offset, min(section.size, 1 << 16)), let id = note.buildID() {
                    buildID = id
                    break
                }
            }
        }

        // At most one .symtab (type 2) and one .dynsym (11), each read with its string table.
        var chosen: [(Chunk, entsize: Int, strings: Chunk)] = []
        for type in [UInt32(2), 11] {
            guard let table = sections.first(where: { $0.type == type }), table.link < sections.count,
                  let symbols = source(table.offset, table.size), let strings = source(sections[table.link].offset, sections[table.link].size) else { continue }
            let entsize = (24...4096).contains(table.entsize) ? Int(table.entsize) : 24
            chosen.append((symbols, entsize, strings))
        }
        let estimated = min(chosen.reduce(0) { $0 + $1.0.bytes.count / $1.entsize }, maxSymbols)
        var builder = SymbolTableBuilder(withSizes: true, withModules: false, expectedCount: estimated, expectedNameBytes: min(estimated * 24, maxTotalNameBytes))
        var kept = 0, nameBytes = 0
        tables: for (symbols, entsize, strings) in chosen {
            let count = symbols.bytes.count / entsize
            for i in 0..<count {
                guard kept < maxSymbols, nameBytes < maxTotalNameBytes else { break tables }
                let at = i * entsize
                let info = symbols.bytes[at + 4]
                let type = info & 0xF
                guard type == functionType || type == ifuncType else { continue }
                let value = symbols.u64(at + 8)
                guard value != 0, symbols.u16(at + 6) != 0 else { continue }
                let nameAt = Int(symbols.u32(at))
                guard nameAt < strings.bytes.count else { continue }
                let limit = min(strings.bytes.count, nameAt + maxNameBytes)
                var nameEnd = nameAt
                while nameEnd < limit, strings.bytes[nameEnd] != 0 { nameEnd += 1 }
                guard nameEnd > nameAt else { continue }
                strings.bytes.withUnsafeBytes { raw in
                    let name = UnsafeRawBufferPointer(rebasing: raw[nameAt..<nameEnd])
                    let binding = info >> 4
                    let bindingRank: UInt8 = binding == 1 ? 0 : binding == 2 ? 1 : 2
                    builder.append(address: value, size: symbols.u64(at + 16), name: name,
                                   rank: bindingRank << 2 | SymbolTableBuilder.underscores(name))
                }
                kept += 1
                nameBytes += nameEnd - nameAt
            }
        }
        return ELFImage(segments: segments, buildID: buildID, symbols: builder.build())
    }

    /// A range of the file, read: bounds-checked little-endian reads within it.
    struct Chunk {
        let bytes: [UInt8]

        func has(_ offset: Int, _ count: Int) -> Bool { offset >= 0 && count >= 0 && offset <= bytes.count - count }
        func u16(_ at: Int) -> UInt16 { bytes.withUnsafeBytes { UInt16(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt16.self)) } }
        func u32(_ at: Int) -> UInt32 { bytes.withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt32.self)) } }
        func u64(_ at: Int) -> UInt64 { bytes.withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(fromByteOffset: at, as: UInt64.self)) } }

        /// The descriptor of the first NT_GNU_BUILD_ID note ("GNU", type 3) in this note area.
        func buildID() -> [UInt8]? {
            let end = bytes.count
            var at = 0
            while at + 12 <= end {
                let namesz = Int(u32(at)), descsz = Int(u32(at + 4)), type = u32(at + 8)
                let name = at + 12
                let desc = name + ((namesz + 3) & ~3)
                let next = desc + ((descsz + 3) & ~3)
                guard desc + descsz <= end else { return nil }
                if type == 3, namesz == 4, bytes[name] == UInt8(ascii: "G"), bytes[name + 1] == UInt8(ascii: "N"),
                   bytes[name + 2] == UInt8(ascii: "U"), bytes[name + 3] == 0, descsz > 0 {
                    return Array(bytes[desc..<desc + descsz])
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
