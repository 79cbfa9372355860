import Foundation
import Synchronization

/// What a target offers to keys and values: its arguments (names, C types) and, for a
/// tracepoint, the fields of its record. Read from the kernel: a syscall's tracepoint
/// format (`syscalls/sys_enter_X/format`), a function's BTF prototype, a tracepoint's format.
public struct TargetSchema: Sendable, Hashable {
    public struct Argument: Sendable, Hashable {
        public enum Shape: Sendable, Hashable {
            /// An integer of `size` bytes (8 for pointers that are not strings).
            case integer(size: Int, signed: Bool)
            /// A pointer to a NUL-terminated string; `user`: in user memory.
            case string(user: Bool)
            /// Cannot be read from one register (why).
            case unreadable(String)
        }
        public var name: String
        public var index: Int
        public var type: String
        public var shape: Shape
        public init(name: String, index: Int, type: String, shape: Shape) {
            self.name = name
            self.index = index
            self.type = type
            self.shape = shape
        }
    }

    public struct Field: Sendable, Hashable {
        public enum Shape: Sendable, Hashable {
            case integer(size: Int, signed: Bool)
            /// `char name[N]`.
            case chars(Int)
            /// `__data_loc char[]`: a string stored after the record.
            case dataLocation
            case unreadable(String)
        }
        public var name: String
        public var offset: Int
        public var type: String
        public var shape: Shape
        public init(name: String, offset: Int, type: String, shape: Shape) {
            self.name = name
            self.offset = offset
            self.type = type
            self.shape = shape
        }
    }

    /// Nil when the names are not known (a uprobe; a syscall without its tracepoint format).
    public var arguments: [Argument]?
    /// Nil for targets that are not tracepoints.
    public var fields: [Field]?
    /// Where the names came from, for error messages.
    public var source: String
    /// The return value: nil when unknown (its whole register is used), `.unreadable` for
    /// a function that returns void.
    public var returns: Argument.Shape?

    public init(arguments: [Argument]?, fields: [Field]?, source: String, returns: Argument.Shape? = nil) {
        self.arguments = arguments
        self.fields = fields
        self.source = source
        self.returns = returns
    }
}

/// Reads target schemas from tracefs and vmlinux BTF, caching each (they do not change
/// while the kernel runs; a tracepoint of a module loaded later is read on its first miss).
public final class TargetSchemaReader: Sendable {
    let tracefs: String
    let btfPath: String
    private let cache = Mutex<[ProbeTarget: TargetSchema]>([:])

    public init(tracefs: String = "/sys/kernel/tracing", btfPath: String = VmlinuxBTF.defaultPath) {
        self.tracefs = tracefs
        self.btfPath = btfPath
    }

    /// Whether tracefs is mounted where the formats are read from.
    var tracefsMounted: Bool { LinuxHost.fsMagic(tracefs) == LinuxHost.tracefsMagic }

    /// Schemas kept at most; past it the cache starts over (clients can name any target).
    static let cacheLimit = 512

    public func schema(for target: ProbeTarget) -> TargetSchema? {
        if let hit = cache.withLock({ $0[target] }) { return hit }
        guard let read = read(target) else { return nil }
        // Misses too (a function without a BTF prototype costs a parse of vmlinux BTF to
        // find out); a tracepoint without a format is not cached (nil), it may come later,
        // and neither is a syscall format missing because tracefs is not mounted (it will be
        // readable again once it is).
        if read.arguments == nil, target.type == .syscall, !tracefsMounted { return read }
        cache.withLock { c in
            if c.count >= Self.cacheLimit { c.removeAll(keepingCapacity: true) }
            c[target] = read
        }
        return read
    }

    private func read(_ target: ProbeTarget) -> TargetSchema? {
        switch target.type {
        case .profile:
            return TargetSchema(arguments: nil, fields: nil, source: "a profile samples the CPUs: it has no arguments or fields")
        case .syscall:
            let name = target.name ?? ""
            let path = "\(tracefs)/events/syscalls/sys_enter_\(name)/format"
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else {
                if !tracefsMounted {
                    return TargetSchema(arguments: nil, fields: nil, source: "tracefs is not mounted at \(tracefs), so the tracepoint format of syscall \(name) cannot be read (POST /v1/capabilities/refresh mounts it again)")
                }
                return TargetSchema(arguments: nil, fields: nil, source: "no tracepoint format for syscall \(name) (\(path))")
            }
            let fields = Self.parseFormat(text).filter { !$0.name.hasPrefix("common_") && $0.name != "__syscall_nr" }
            let args = fields.enumerated().map { i, f in
                TargetSchema.Argument(name: f.name, index: i, type: f.type, shape: Self.syscallArgumentShape(f.type))
            }
            return TargetSchema(arguments: args, fields: nil, source: "the tracepoint format of syscalls:sys_enter_\(name)")
        case .function:
            let name = target.name ?? ""
            guard let btf = VmlinuxBTF.read(path: btfPath) else {
                return TargetSchema(arguments: nil, fields: nil, source: "no kernel BTF (\(btfPath))")
            }
            guard let prototype = btf.prototype(of: name) else {
                return TargetSchema(arguments: nil, fields: nil, source: "no BTF prototype for \(name)")
            }
            var afterStruct = false
            let args = prototype.parameters.enumerated().map { i, p in
                // A struct by value takes one or two registers: what follows it is not at its index.
                if afterStruct {
                    return TargetSchema.Argument(name: p.name, index: i, type: "after a struct passed by value",
                                                 shape: .unreadable("after a struct passed by value, so its register is not known"))
                }
                if case .other = p.shape { afterStruct = true }
                let shape: TargetSchema.Argument.Shape
                let type: String
                switch p.shape {
                case .integer(let size, let signed): shape = .integer(size: size, signed: signed); type = "\(signed ? "s" : "u")\(size * 8)"
                case .pointer(let toChar, let user):
                    shape = toChar ? .string(user: user) : .integer(size: 8, signed: false)
                    type = toChar ? (user ? "const char __user *" : "const char *") : "pointer"
                case .other(let why): shape = .unreadable(why); type = why
                }
                return TargetSchema.Argument(name: p.name, index: i, type: type, shape: shape)
            }
            let returns: TargetSchema.Argument.Shape = switch prototype.returns {
            case .integer(let size, let signed)?: .integer(size: size, signed: signed)
            case .pointer?: .integer(size: 8, signed: false)
            case .other(let why)?: .unreadable(why)
            case nil: .unreadable("void: the function returns nothing")
            }
            return TargetSchema(arguments: args, fields: nil, source: "the BTF prototype of \(name)", returns: returns)
        case .tracepoint:
            let (category, event) = target.tracepointParts
            let path = "\(tracefs)/events/\(category)/\(event)/format"
            guard let text = try? String(contentsOfFile: path, encoding: .utf8) else { return nil }
            let fields = Self.parseFormat(text).filter { !$0.name.hasPrefix("common_") }
            return TargetSchema(arguments: nil, fields: fields, source: "the format of \(category):\(event)")
        case .uprobe:
            return TargetSchema(arguments: nil, fields: nil, source: "uprobe targets have no argument names")
        }
    }

    /// The fields of a tracefs `format` file.
    static func parseFormat(_ text: String) -> [TargetSchema.Field] {
        var fields: [TargetSchema.Field] = []
        for line in text.split(separator: "\n") {
            let trimmed = line.trimmingCharacters(in: .whitespaces)
            guard trimmed.hasPrefix("field:") else { continue }
            var parts: [String: String] = [:]
            for item in trimmed.split(separator: ";") {
                let kv = item.trimmingCharacters(in: .whitespaces).split(separator: ":", maxSplits: 1).map(String.init)
                if kv.count == 2 { parts[kv[0]] = kv[1] }
            }
            guard let decl = parts["field"], let offset = parts["offset"].flatMap({ Int($0) }),
                  let size = parts["size"].flatMap({ Int($0) }) else { continue }
            let signed = parts["signed"] == "1"
            // `type name`, `type name[N]`, `__data_loc type[] name`.
            var type = decl
            var name = decl
            var array: Int? = nil
            if let bracket = decl.lastIndex(of: "["), decl.hasSuffix("]"), !decl.hasPrefix("__data_loc") {
                array = Int(decl[decl.index(after: bracket)..<decl.index(before: decl.endIndex)])
                let head = decl[..<bracket]
                let space = head.lastIndex(where: { $0 == " " || $0 == "*" }) ?? head.startIndex
                name = String(head[head.index(after: space)...]).trimmingCharacters(in: .whitespaces)
                type = String(head[...space]).trimmingCharacters(in: .whitespaces) + "[\(array.map(String.init) ?? "")]"
            } else if let space = decl.lastIndex(where: { $0 == " " || $0 == "*" }) {
                name = String(decl[decl.index(after: space)...])
                type = String(decl[...space]).trimmingCharacters(in: .whitespaces)
            }
            let shape: TargetSchema.Field.Shape
            if decl.hasPrefix("__data_loc") {
                shape = decl.contains("char[]") ? .dataLocation : .unreadable("a variable-length array that is not a string")
            } else if decl.hasPrefix("__rel_loc") {
                shape = .unreadable("a __rel_loc field, which this agent does not read")
            } else if type.contains("*") {
                // A kernel address: as a key or value it would hand kernel pointers to every
                // reader of the metrics.
                shape = .unreadable("a kernel pointer (\(type))")
            } else if let n = array {
                shape = type.hasPrefix("char") || type.hasPrefix("unsigned char") ? .chars(n)
                    : .unreadable("an array (\(type))")
            } else if [1, 2, 4, 8].contains(size) {
                shape = .integer(size: size, signed: signed)
            } else {
                shape = .unreadable("\(size) bytes, not a number")
            }
            guard ProbeSpec.validIdentifier(name) else { continue }
            fields.append(TargetSchema.Field(name: name, offset: offset, type: type, shape: shape))
        }
        return fields
    }

    /// A syscall argument's shape from its C type in the format (every syscall argument is
    /// a register; the format's `size` is always 8, so the width comes from the type).
    public static func syscallArgumentShape(_ type: String) -> TargetSchema.Argument.Shape {
        let t = type.replacingOccurrences(of: "  ", with: " ")
        if t.contains("*") {
            let base = t.replacingOccurrences(of: " ", with: "")
            return base == "constchar*" ? .string(user: true) : .integer(size: 8, signed: false)
        }
        let words = t.split(separator: " ").map(String.init).filter { $0 != "const" && $0 != "volatile" }
        let unsigned = words.contains("unsigned")
        let core = words.filter { $0 != "unsigned" && $0 != "signed" }
        if core.contains("long") { return .integer(size: 8, signed: !unsigned) }
        if core.contains("short") { return .integer(size: 2, signed: !unsigned) }
        if core.contains("char") { return .integer(size: 1, signed: !unsigned) }
        if core == ["int"] || core.isEmpty { return .integer(size: 4, signed: !unsigned) }
        let known: [String: (Int, Bool)] = [
            "size_t": (8, false), "ssize_t": (8, true), "loff_t": (8, true), "off_t": (8, true), "pid_t": (4, true),
            "uid_t": (4, false), "gid_t": (4, false), "umode_t": (2, false), "mode_t": (4, false), "key_t": (4, true),
            "clockid_t": (4, true), "timer_t": (4, true), "qid_t": (4, false), "rwf_t": (4, true), "key_serial_t": (4, true),
            "u32": (4, false), "__u32": (4, false), "s32": (4, true), "__s32": (4, true), "u64": (8, false), "__u64": (8, false),
            "s64": (8, true), "__s64": (8, true), "u16": (2, false), "u8": (1, false), "aio_context_t": (8, false),
            "old_uid_t": (4, false), "old_gid_t": (4, false), "mqd_t": (4, true), "__kernel_old_time_t": (8, true),
        ]
        if let (size, signed) = core.last.flatMap({ known[$0] }) { return .integer(size: size, signed: signed) }
        return .integer(size: 8, signed: false)
    }
}
