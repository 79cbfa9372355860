import Foundation
import Glibc
import Testing
@testable import TraceCore

/// Crafted ELF files: any process can map one executable and be sampled, so the parser
/// must neither trap, nor hang, nor take memory out of proportion to the file.
extension StacksTests {
    @Suite("Stacks: hostile ELF files") struct ELFHostileTests {
        /// An ELF64 header, one PT_LOAD, a symbol table of `symbols` entries whose names all
        /// point at one long string, and `symtabHeaders` section headers naming that table.
        static func crafted(vaddr: UInt64, entsize: UInt64, symtabHeaders: Int, symbols: Int, nameBytes: Int) -> [UInt8] {
            var out = [UInt8](repeating: 0, count: 64)
            func put<T: FixedWidthInteger>(_ v: T, at: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { out[at + i] = b } } }
            func append<T: FixedWidthInteger>(_ v: T) { withUnsafeBytes(of: v.littleEndian) { out += $0 } }
            out[0] = 0x7F; out[1] = 0x45; out[2] = 0x4C; out[3] = 0x46; out[4] = 2; out[5] = 1
            // Program header at 64: PT_LOAD at file offset 0, 4 KiB, at `vaddr`.
            put(UInt64(64), at: 0x20); put(UInt16(56), at: 0x36); put(UInt16(1), at: 0x38)
            append(UInt32(1)); append(UInt32(5)); append(UInt64(0)); append(vaddr); append(vaddr); append(UInt64(4096)); append(UInt64(4096)); append(UInt64(4096))
            // Strings: NUL, then one long name.
            let strings = out.count
            out += [0] + [UInt8](repeating: UInt8(ascii: "f"), count: nameBytes) + [0]
            let stringsSize = out.count - strings
            // Symbols: FUNC, defined, all named at offset 1.
            let table = out.count
            for i in 0..<symbols {
                append(UInt32(1)); out += [0x12, 0]; append(UInt16(1)); append(UInt64(0x1000 + 16 * i)); append(UInt64(16))
            }
            let tableSize = out.count - table
            // Section headers: 0 null, 1 the strings, then `symtabHeaders` symtabs linking to 1.
            let sh = out.count
            put(UInt64(sh), at: 0x28); put(UInt16(64), at: 0x3A); put(UInt16(2 + symtabHeaders), at: 0x3C)
            out += [UInt8](repeating: 0, count: 64)
            func section(type: UInt32, offset: Int, size: Int, link: UInt32, entsize: UInt64) {
                append(UInt32(0)); append(type); append(UInt64(0)); append(UInt64(0)); append(UInt64(offset)); append(UInt64(size))
                append(link); append(UInt32(0)); append(UInt64(0)); append(entsize)
            }
            section(type: 3, offset: strings, size: stringsSize, link: 0, entsize: 0)
            for _ in 0..<symtabHeaders { section(type: 2, offset: table, size: tableSize, link: 1, entsize: entsize) }
            return out
        }

        static func parse(_ bytes: [UInt8]) -> ELFImage? {
            bytes.withUnsafeBytes { ELFImage.parse($0) }
        }

        @Test("An entsize of 2^64-1, a segment at the top of the address space: no trap, and addresses that would wrap are not translated")
        func hugeFields() throws {
            let image = try #require(Self.parse(Self.crafted(vaddr: 0xffff_ffff_ffff_f000, entsize: .max, symtabHeaders: 1, symbols: 4, nameBytes: 8)))
            #expect(image.segments.isEmpty, "a PT_LOAD whose end wraps is dropped")
            #expect(image.vaddr(fileOffset: 0x800) == nil)
            #expect(image.symbols.count == 4, "a nonsensical entsize is read as 24")
        }

        @Test("A thousand section headers naming one table, ten thousand symbols naming one 1 MiB string: one table read, names cut at 1 KiB")
        func amplification() throws {
            let bytes = Self.crafted(vaddr: 0x1000, entsize: 24, symtabHeaders: 1000, symbols: 10_000, nameBytes: 1 << 20)
            let image = try #require(Self.parse(bytes))
            #expect(image.symbols.count == 10_000)
            #expect(image.estimatedBytes < 16 << 20, "kept \(image.estimatedBytes) bytes for a \(bytes.count)-byte file")
            let index = try #require(image.symbolIndex(vaddr: 0x1000))
            #expect(image.symbols.name(at: index).utf8.count == ELFImage.maxNameBytes)
        }

        @Test("A FIFO where a mapped file was is not opened for reading (no hang), and a file of another inode is refused")
        func notARegularFile() throws {
            let dir = NSTemporaryDirectory() + "tp-elf-\(getpid())"
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: dir) }
            #expect(mkfifo(dir + "/fifo", 0o600) == 0)
            #expect(ELFImage.load(path: dir + "/fifo") == nil)
            var info = stat()
            #expect(stat("/bin/ls", &info) == 0)
            #expect(ELFImage.load(path: "/bin/ls", inode: UInt64(info.st_ino)) != nil)
            #expect(ELFImage.load(path: "/bin/ls", inode: UInt64(info.st_ino) &+ 1) == nil)
        }

        @Test("A name of 100 KiB is not handed to the demanglers")
        func longNames() {
            let long = "_Z" + String(repeating: "N3foo", count: 20_000) + "E"
            #expect(Demangler.demangle(long) == long)
        }
    }
}
