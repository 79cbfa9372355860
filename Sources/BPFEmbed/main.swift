import Foundation

// Usage: BPFEmbed OUTPUT.swift name=object.o ...
//
// Writes one Swift file that holds each compiled BPF object as a base64 literal, and, read
// from the object's own ELF symbol table, its typed bindings: one constant per program
// (with its SEC name), per map and per read-only global (with its size). Code outside
// BPFPrograms can only name what an object really holds, so a misspelt program, map or
// global fails the build instead of a load at run time (the role of a libbpf skeleton).

func fail(_ message: String, status: Int32 = 1) -> Never {
    FileHandle.standardError.write(Data("BPFEmbed: \(message)\n".utf8))
    exit(status)
}

/// The symbols of a relocatable ELF64 little-endian BPF object that bindings are made of.
struct ObjectSymbols {
    struct Program { var name: String; var section: String }
    struct Global { var name: String; var size: Int }
    var programs: [Program] = []
    var maps: [String] = []
    var globals: [Global] = []

    init(elf bytes: [UInt8], path: String) {
        func u16(_ at: Int) -> Int { Int(bytes[at]) | Int(bytes[at + 1]) << 8 }
        func u32(_ at: Int) -> Int { u16(at) | u16(at + 2) << 16 }
        func u64(_ at: Int) -> Int { u32(at) | u32(at + 4) << 32 }
        guard bytes.count >= 64, bytes[0..<4] == [0x7F, 0x45, 0x4C, 0x46], bytes[4] == 2, bytes[5] == 1 else {
            fail("\(path) is not a little-endian ELF64 object")
        }
        let shoff = u64(0x28), shentsize = u16(0x3A), shnum = u16(0x3C), shstrndx = u16(0x3E)
        guard shentsize == 64, shoff + shnum * 64 <= bytes.count, shstrndx < shnum else { fail("\(path): bad section table") }
        struct Section { var name: Int; var type: Int; var flags: Int; var offset: Int; var size: Int; var link: Int }
        let sections = (0..<shnum).map { i -> Section in
            let at = shoff + i * 64
            return Section(name: u32(at), type: u32(at + 4), flags: u64(at + 8), offset: u64(at + 24), size: u64(at + 32), link: u32(at + 40))
        }
        func string(_ table: Section, _ offset: Int) -> String {
            var end = table.offset + offset
            let start = end
            while end < table.offset + table.size, bytes[end] != 0 { end += 1 }
            return String(decoding: bytes[start..<end], as: UTF8.self)
        }
        let names = sections.map { string(sections[shstrndx], $0.name) }
        guard let symtab = sections.firstIndex(where: { $0.type == 2 }) else { fail("\(path) has no symbol table") }
        let table = sections[symtab], strings = sections[table.link]
        for at in stride(from: table.offset + 24, to: table.offset + table.size, by: 24) {  // entry 0 is null
            let name = string(strings, u32(at))
            let info = Int(bytes[at + 4]), index = u16(at + 6), size = u64(at + 16)
            let bind = info >> 4, type = info & 0xF
            guard bind == 1, index > 0, index < sections.count, !name.isEmpty else { continue }  // global, defined
            let section = names[index]
            if type == 2, sections[index].flags & 0x4 != 0, section != ".text" {  // FUNC in a program section
                programs.append(Program(name: name, section: section))
            } else if type == 1, section == ".maps" {
                maps.append(name)
            } else if type == 1, section.hasPrefix(".rodata") {
                globals.append(Global(name: name, size: size))
            }
        }
        programs.sort { $0.name < $1.name }
        maps.sort()
        globals.sort { $0.name < $1.name }
    }
}

/// `lat_fentry` → `latFentry`; `syscall_hub` → `SyscallHub` with `upper`.
func camel(_ snake: String, upper: Bool = false) -> String {
    let parts = snake.split(separator: "_").map(String.init)
    var out = ""
    for (i, part) in parts.enumerated() {
        out += (i == 0 && !upper) ? part : part.prefix(1).uppercased() + part.dropFirst()
    }
    return out
}

func literal(_ s: String) -> String {
    "\"" + s.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"") + "\""
}

let args = CommandLine.arguments.dropFirst()
guard let output = args.first else { fail("usage: BPFEmbed OUTPUT.swift name=path ...", status: 2) }
var images = ""
var bindings = ""
for pair in args.dropFirst() {
    guard let eq = pair.firstIndex(of: "=") else { fail("expected name=path, got \(pair)", status: 2) }
    let name = String(pair[..<eq])
    let path = String(pair[pair.index(after: eq)...])
    guard let data = FileManager.default.contents(atPath: path) else { fail("cannot read \(path)") }
    images += "    \(literal(name)): \"\(data.base64EncodedString())\",\n"
    let symbols = ObjectSymbols(elf: [UInt8](data), path: path)
    let type = camel(name, upper: true) + "BPF"
    bindings += """

        /// What `bpf/\(name).bpf.c` holds, read from its compiled object.
        public enum \(type) {
            public static let object = BPFObjectID(name: \(literal(name)))

            public enum Programs {

        """
    for p in symbols.programs {
        bindings += "        /// `SEC(\"\(p.section)\")`\n"
        bindings += "        public static let \(camel(p.name)) = BPFProgramID(object: \(type).object, name: \(literal(p.name)), section: \(literal(p.section)))\n"
    }
    bindings += "        public static let all: [BPFProgramID] = [\(symbols.programs.map { camel($0.name) }.joined(separator: ", "))]\n    }\n\n"
    bindings += "    public enum Maps {\n"
    for m in symbols.maps {
        bindings += "        public static let \(camel(m)) = BPFMapID(object: \(type).object, name: \(literal(m)))\n"
    }
    bindings += "    }\n\n    public enum Globals {\n"
    for g in symbols.globals {
        bindings += "        /// A `const volatile` of \(g.size == 1 ? "1 byte" : "\(g.size) bytes").\n"
        bindings += "        public static let \(camel(g.name)) = BPFGlobalID(object: \(type).object, name: \(literal(g.name)), size: \(g.size))\n"
    }
    bindings += "    }\n}\n"
}
let text = """
    // Generated by BPFEmbed from bpf/*.bpf.c at build time. Do not edit.

    let embeddedBPFObjects: [String: String] = [
    \(images)]

    \(bindings)
    """
do {
    try Data(text.utf8).write(to: URL(fileURLWithPath: output), options: .atomic)
} catch {
    fail("cannot write \(output): \(error)")
}
