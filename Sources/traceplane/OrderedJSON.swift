/// A JSON value that keeps an object's members in the order they were written and a
/// number as its text. `probe events` needs both: an event's `key` lists the probe's keys
/// in `aggregate.by` order (Foundation's decoders keep no order), and ids such as
/// `cgroup_id` are 64-bit unsigned (no detour through Double).
indirect enum OrderedJSON: Sendable, Equatable {
    case null
    case bool(Bool)
    /// The number as written, e.g. `-11` or `2.5e3`.
    case number(String)
    case string(String)
    case array([OrderedJSON])
    case object([Member])

    struct Member: Sendable, Equatable {
        var name: String
        var value: OrderedJSON
    }

    /// A malformed document, with the byte offset where reading stopped.
    struct ParseError: Error, Equatable, CustomStringConvertible {
        var offset: Int
        var reason: String
        var description: String { "\(reason) at byte \(offset)" }
    }

    /// Nesting deeper than this is refused (the agent's lines nest two levels).
    static let maxDepth = 32

    /// Parses one complete JSON text (RFC 8259; whitespace around it is allowed).
    /// - Throws: ``ParseError`` for anything else, trailing bytes included.
    static func parse(_ bytes: some Collection<UInt8>) throws(ParseError) -> OrderedJSON {
        var parser = Parser(bytes: Array(bytes))
        parser.skipSpace()
        let value = try parser.value(depth: 0)
        parser.skipSpace()
        guard parser.at == parser.bytes.count else { throw parser.error("trailing bytes after the value") }
        return value
    }

    /// The value of member `name` (the first one, should a name repeat); nil for a
    /// missing member or a value that is not an object.
    subscript(name: String) -> OrderedJSON? {
        guard case .object(let members) = self else { return nil }
        return members.first { $0.name == name }?.value
    }

    var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    /// The number as a signed 64-bit integer, if it is one exactly.
    var int64: Int64? {
        if case .number(let text) = self { return Int64(text) }
        return nil
    }

    /// The number as an unsigned 64-bit integer, if it is one exactly.
    var uint64: UInt64? {
        if case .number(let text) = self { return UInt64(text) }
        return nil
    }

    /// Compact JSON text of the value.
    var text: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .number(let n): return n
        case .string(let s): return Self.quoted(s)
        case .array(let values): return "[" + values.map(\.text).joined(separator: ",") + "]"
        case .object(let members): return "{" + members.map { Self.quoted($0.name) + ":" + $0.value.text }.joined(separator: ",") + "}"
        }
    }

    /// `s` in double quotes with `"`, `\`, newline, return and tab escaped, and every
    /// other scalar `isEscaped` picks written as `escape` makes it (JSON's `\u00XX` by default).
    static func quoted(_ s: String, escaping isEscaped: (Unicode.Scalar) -> Bool = { $0.value < 0x20 },
                       as escape: (UInt32) -> String = { "\\u" + hex4($0) }) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where isEscaped(scalar): out += escape(scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    static func hex4(_ v: UInt32) -> String {
        let digits = String(v, radix: 16)
        return String(repeating: "0", count: max(0, 4 - digits.count)) + digits
    }

    private struct Parser {
        let bytes: [UInt8]
        var at = 0

        func error(_ reason: String) -> ParseError { ParseError(offset: at, reason: reason) }

        mutating func skipSpace() {
            while at < bytes.count, [0x20, 0x09, 0x0A, 0x0D].contains(bytes[at]) { at += 1 }
        }

        mutating func literal(_ word: String, _ value: OrderedJSON) throws(ParseError) -> OrderedJSON {
            let utf8 = Array(word.utf8)
            guard bytes.count - at >= utf8.count, Array(bytes[at..<at + utf8.count]) == utf8 else { throw error("not a JSON value") }
            at += utf8.count
            return value
        }

        mutating func value(depth: Int) throws(ParseError) -> OrderedJSON {
            guard depth < OrderedJSON.maxDepth else { throw error("nested deeper than \(OrderedJSON.maxDepth)") }
            guard at < bytes.count else { throw error("unexpected end") }
            switch bytes[at] {
            case UInt8(ascii: "{"): return try object(depth: depth)
            case UInt8(ascii: "["): return try array(depth: depth)
            case UInt8(ascii: "\""): return .string(try string())
            case UInt8(ascii: "t"): return try literal("true", .bool(true))
            case UInt8(ascii: "f"): return try literal("false", .bool(false))
            case UInt8(ascii: "n"): return try literal("null", .null)
            default: return try number()
            }
        }

        mutating func expect(_ byte: UInt8, _ what: String) throws(ParseError) {
            skipSpace()
            guard at < bytes.count, bytes[at] == byte else { throw error("expected \(what)") }
            at += 1
        }

        mutating func object(depth: Int) throws(ParseError) -> OrderedJSON {
            at += 1
            var members: [Member] = []
            skipSpace()
            if at < bytes.count, bytes[at] == UInt8(ascii: "}") { at += 1; return .object(members) }
            while true {
                skipSpace()
                guard at < bytes.count, bytes[at] == UInt8(ascii: "\"") else { throw error("expected a member name") }
                let name = try string()
                try expect(UInt8(ascii: ":"), "':'")
                skipSpace()
                members.append(Member(name: name, value: try value(depth: depth + 1)))
                skipSpace()
                guard at < bytes.count else { throw error("unexpected end") }
                if bytes[at] == UInt8(ascii: "}") { at += 1; return .object(members) }
                try expect(UInt8(ascii: ","), "',' or '}'")
            }
        }

        mutating func array(depth: Int) throws(ParseError) -> OrderedJSON {
            at += 1
            var values: [OrderedJSON] = []
            skipSpace()
            if at < bytes.count, bytes[at] == UInt8(ascii: "]") { at += 1; return .array(values) }
            while true {
                skipSpace()
                values.append(try value(depth: depth + 1))
                skipSpace()
                guard at < bytes.count else { throw error("unexpected end") }
                if bytes[at] == UInt8(ascii: "]") { at += 1; return .array(values) }
                try expect(UInt8(ascii: ","), "',' or ']'")
            }
        }

        mutating func hexScalar() throws(ParseError) -> UInt32 {
            guard bytes.count - at >= 4, let v = UInt32(String(decoding: bytes[at..<at + 4], as: UTF8.self), radix: 16) else {
                throw error("expected four hex digits after \\u")
            }
            at += 4
            return v
        }

        mutating func string() throws(ParseError) -> String {
            at += 1
            var out: [UInt8] = []
            while at < bytes.count {
                let b = bytes[at]
                at += 1
                switch b {
                case UInt8(ascii: "\""):
                    return String(decoding: out, as: UTF8.self)
                case UInt8(ascii: "\\"):
                    guard at < bytes.count else { throw error("unexpected end") }
                    let e = bytes[at]
                    at += 1
                    switch e {
                    case UInt8(ascii: "\""), UInt8(ascii: "\\"), UInt8(ascii: "/"): out.append(e)
                    case UInt8(ascii: "b"): out.append(0x08)
                    case UInt8(ascii: "f"): out.append(0x0C)
                    case UInt8(ascii: "n"): out.append(0x0A)
                    case UInt8(ascii: "r"): out.append(0x0D)
                    case UInt8(ascii: "t"): out.append(0x09)
                    case UInt8(ascii: "u"):
                        var v = try hexScalar()
                        if (0xD800..<0xDC00).contains(v), bytes.count - at >= 6, bytes[at] == UInt8(ascii: "\\"), bytes[at + 1] == UInt8(ascii: "u") {
                            let save = at
                            at += 2
                            let low = try hexScalar()
                            if (0xDC00..<0xE000).contains(low) {
                                v = 0x10000 + ((v - 0xD800) << 10) + (low - 0xDC00)
                            } else {
                                at = save
                            }
                        }
                        out.append(contentsOf: String(Unicode.Scalar(v).map(Character.init) ?? "\u{FFFD}").utf8)
                    default:
                        throw error("unknown escape")
                    }
                case 0..<0x20:
                    throw error("control character in a string")
                default:
                    out.append(b)
                }
            }
            throw error("unterminated string")
        }

        mutating func number() throws(ParseError) -> OrderedJSON {
            let start = at
            func digits(_ p: inout Parser) -> Int {
                let from = p.at
                while p.at < p.bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(p.bytes[p.at]) { p.at += 1 }
                return p.at - from
            }
            if at < bytes.count, bytes[at] == UInt8(ascii: "-") { at += 1 }
            let leadingZero = at < bytes.count && bytes[at] == UInt8(ascii: "0")
            let whole = digits(&self)
            guard whole > 0, !(leadingZero && whole > 1) else { at = start; throw error("not a JSON value") }
            if at < bytes.count, bytes[at] == UInt8(ascii: ".") {
                at += 1
                guard digits(&self) > 0 else { throw error("expected digits after '.'") }
            }
            if at < bytes.count, bytes[at] == UInt8(ascii: "e") || bytes[at] == UInt8(ascii: "E") {
                at += 1
                if at < bytes.count, bytes[at] == UInt8(ascii: "+") || bytes[at] == UInt8(ascii: "-") { at += 1 }
                guard digits(&self) > 0 else { throw error("expected digits in the exponent") }
            }
            return .number(String(decoding: bytes[start..<at], as: UTF8.self))
        }
    }
}
