import Foundation

/// The kernel's own type information (`/sys/kernel/btf/vmlinux`), read from the raw BTF
/// format (include/uapi/linux/btf.h) without libbpf: function and typedef names, and
/// member offsets of kernel structs.
///
/// The agent reads it once, at capability probing, for the two `struct task_struct`
/// offsets its BPF programs need (``TaskLayout``); self-tests use the names to predict,
/// independently of the planner, which functions and tracepoints fentry and tp_btf can
/// bind to. It keeps the raw bytes while it lives: hold it briefly.
public struct VmlinuxBTF: Sendable {
    private let bytes: [UInt8]
    /// Byte offset of each type's header, by type id (id 0 is `void`).
    private let typeOffsets: [Int]
    private let stringsStart: Int
    private let stringsEnd: Int

    public static let defaultPath = "/sys/kernel/btf/vmlinux"

    public static func read(path: String = defaultPath) -> VmlinuxBTF? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.readToEnd() else { return nil }
        return VmlinuxBTF(bytes: [UInt8](data))
    }

    enum Kind: UInt32 {
        case int = 1, ptr, array, structure, union, enumeration, fwd, typedef, volatile, const, restrict, function,
             functionProto, variable, dataSection, float, declTag, typeTag, enum64
    }

    /// Parses a little-endian BTF blob; nil when it is not one, or holds a kind this
    /// reader does not know.
    public init?(bytes: [UInt8]) {
        func u32(_ at: Int) -> UInt32 {
            UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
        }
        guard bytes.count >= 24, bytes[0] == 0x9F, bytes[1] == 0xEB else { return nil }
        let headerLength = Int(u32(4))
        let typesStart = headerLength + Int(u32(8)), typesEnd = typesStart + Int(u32(12))
        let stringsStart = headerLength + Int(u32(16)), stringsEnd = stringsStart + Int(u32(20))
        guard typesEnd <= bytes.count, stringsEnd <= bytes.count else { return nil }
        var offsets = [0]
        var at = typesStart
        while at + 12 <= typesEnd {
            offsets.append(at)
            let info = u32(at + 4)
            let vlen = Int(info & 0xFFFF)
            guard let kind = Kind(rawValue: (info >> 24) & 0x1F) else { return nil }
            at += 12
            switch kind {
            case .int, .variable, .declTag: at += 4
            case .array: at += 12
            case .structure, .union, .dataSection, .enum64: at += 12 * vlen
            case .enumeration, .functionProto: at += 8 * vlen
            case .ptr, .fwd, .typedef, .volatile, .const, .restrict, .function, .float, .typeTag: break
            }
        }
        self.bytes = bytes
        typeOffsets = offsets
        self.stringsStart = stringsStart
        self.stringsEnd = stringsEnd
    }

    private func u32(_ at: Int) -> UInt32 {
        UInt32(bytes[at]) | UInt32(bytes[at + 1]) << 8 | UInt32(bytes[at + 2]) << 16 | UInt32(bytes[at + 3]) << 24
    }

    private func string(_ offset: UInt32) -> String {
        var end = stringsStart + Int(offset)
        let start = end
        while end < stringsEnd && bytes[end] != 0 { end += 1 }
        return String(decoding: bytes[start..<end], as: UTF8.self)
    }

    private func kind(_ id: Int) -> Kind? { Kind(rawValue: (u32(typeOffsets[id] + 4) >> 24) & 0x1F) }
    private func name(_ id: Int) -> String { string(u32(typeOffsets[id])) }
    private func vlen(_ id: Int) -> Int { Int(u32(typeOffsets[id] + 4) & 0xFFFF) }

    /// Names of every type of `kind`.
    private func names(of kind: Kind) -> Set<String> {
        var set = Set<String>()
        for id in 1..<typeOffsets.count where self.kind(id) == kind { set.insert(name(id)) }
        return set
    }

    /// Every function name (BTF_KIND_FUNC): what fentry/fexit can bind to.
    public var functions: Set<String> { names(of: .function) }

    /// Every typedef name: `btf_trace_<event>` says tp_btf can bind to `<event>`.
    public var typedefs: Set<String> { names(of: .typedef) }

    /// The byte offset of `member` in struct `name`, looking into anonymous nested
    /// structs and unions; nil when the struct or the member is not there (or is a bitfield).
    public func offset(of member: String, in name: String) -> Int? {
        for id in 1..<typeOffsets.count where kind(id) == .structure && vlen(id) > 0 && self.name(id) == name {
            if let bits = memberBitOffset(member, in: id, depth: 0), bits % 8 == 0 { return bits / 8 }
        }
        return nil
    }

    private func memberBitOffset(_ member: String, in id: Int, depth: Int) -> Int? {
        guard depth < 8 else { return nil }
        let base = typeOffsets[id]
        let bitfieldEncoding = u32(base + 4) >> 31 == 1
        for i in 0..<vlen(id) {
            let at = base + 12 + 12 * i
            let raw = Int(u32(at + 8))
            let bits = bitfieldEncoding ? raw & 0xFF_FFFF : raw
            let memberName = string(u32(at))
            if memberName == member { return bits }
            if memberName.isEmpty, let nested = resolved(Int(u32(at + 4))),
               kind(nested) == .structure || kind(nested) == .union,
               let inner = memberBitOffset(member, in: nested, depth: depth + 1) {
                return bits + inner
            }
        }
        return nil
    }

    /// A parameter of a kernel function, from its BTF prototype.
    public struct Parameter: Sendable, Hashable {
        public enum Shape: Sendable, Hashable {
            /// An integer, enum or bool of `size` bytes.
            case integer(size: Int, signed: Bool)
            /// A pointer; `toChar`: to (const) char, a string; `user`: tagged `__user`.
            case pointer(toChar: Bool, user: Bool)
            /// A struct or union passed by value, or anything else this reader does not
            /// map to an argument register.
            case other(String)
        }
        public var name: String
        public var shape: Shape
    }

    /// A function's prototype: its parameters in order (a variadic `...` left out) and its
    /// return type (nil: void).
    public struct Prototype: Sendable, Hashable {
        public var parameters: [Parameter]
        public var returns: Parameter.Shape?
    }

    /// The prototype of function `function` (BTF_KIND_FUNC), found with one scan of the
    /// types; nil when there is no such function.
    public func prototype(of function: String) -> Prototype? {
        guard let id = (1..<typeOffsets.count).first(where: { kind($0) == .function && name($0) == function }) else { return nil }
        let proto = Int(u32(typeOffsets[id] + 8))
        guard proto > 0, proto < typeOffsets.count, kind(proto) == .functionProto else { return nil }
        var parameters: [Parameter] = []
        for i in 0..<vlen(proto) {
            let at = typeOffsets[proto] + 12 + 8 * i
            let type = Int(u32(at + 4))
            if type == 0 { continue }  // `...`
            parameters.append(Parameter(name: string(u32(at)), shape: shape(of: type)))
        }
        let returns = Int(u32(typeOffsets[proto] + 8))
        return Prototype(parameters: parameters, returns: returns == 0 ? nil : shape(of: returns))
    }

    /// The parameters of function `function`; nil when there is no such function.
    public func parameters(of function: String) -> [Parameter]? { prototype(of: function)?.parameters }

    /// The return type of function `function`: nil when there is no such function, `.some(nil)`
    /// when it returns void.
    public func returnShape(of function: String) -> Parameter.Shape?? { prototype(of: function).map(\.returns) }

    private func shape(of type: Int) -> Parameter.Shape {
        guard let id = resolved(type), let k = kind(id) else { return .other("an unknown type") }
        switch k {
        case .int:
            let encoding = (u32(typeOffsets[id] + 12) >> 24) & 0x0F
            return .integer(size: Int(u32(typeOffsets[id] + 8)), signed: encoding & 1 == 1)
        case .enumeration, .enum64:
            let signed = u32(typeOffsets[id] + 4) >> 31 == 1
            return .integer(size: Int(u32(typeOffsets[id] + 8)), signed: signed)
        case .ptr:
            // A `__user` tag sits between the pointer and what it points to.
            var user = false
            var target = Int(u32(typeOffsets[id] + 8))
            for _ in 0..<16 {
                guard target > 0, target < typeOffsets.count, let tk = kind(target) else { break }
                if tk == .typeTag, name(target) == "user" { user = true }
                guard [.typeTag, .const, .volatile, .restrict, .typedef].contains(tk) else { break }
                target = Int(u32(typeOffsets[target] + 8))
            }
            // `char` itself: `u8`/`unsigned char` buffers are bytes, not strings.
            let toChar = target > 0 && target < typeOffsets.count && kind(target) == .int && u32(typeOffsets[target] + 8) == 1
                && name(target) == "char"
            return .pointer(toChar: toChar, user: user)
        case .structure, .union:
            return .other("a \(k == .structure ? "struct" : "union") passed by value")
        default:
            return .other("a type that is not passed in one register")
        }
    }

    /// Follows typedefs and qualifiers to the underlying type id.
    private func resolved(_ id: Int) -> Int? {
        var id = id
        for _ in 0..<16 {
            guard id > 0, id < typeOffsets.count, let k = kind(id) else { return nil }
            switch k {
            case .typedef, .volatile, .const, .restrict, .typeTag: id = Int(u32(typeOffsets[id] + 8))
            default: return id
            }
        }
        return nil
    }
}

/// Where the BPF programs find the process name: offsets in `struct task_struct`, from the
/// kernel's BTF. Given to every object before load, so no object needs a CO-RE relocation
/// (which makes libbpf parse the whole vmlinux BTF on every load).
public struct TaskLayout: Sendable, Hashable {
    /// Offset of `struct task_struct *group_leader`.
    public var groupLeader: UInt32
    /// Offset of `char comm[16]`.
    public var comm: UInt32

    public init(groupLeader: UInt32, comm: UInt32) {
        self.groupLeader = groupLeader
        self.comm = comm
    }

    /// Reads the offsets from `btf`; nil when either is missing.
    public init?(btf: VmlinuxBTF) {
        guard let leader = btf.offset(of: "group_leader", in: "task_struct"), let comm = btf.offset(of: "comm", in: "task_struct"),
              leader > 0, comm > 0 else { return nil }
        self.init(groupLeader: UInt32(leader), comm: UInt32(comm))
    }
}
