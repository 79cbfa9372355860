import Testing
@testable import traceplane

@Suite("OrderedJSON: the events' JSON, member order and exact numbers kept")
struct OrderedJSONTests {
    func parse(_ text: String) throws -> OrderedJSON { try OrderedJSON.parse(Array(text.utf8)) }

    @Test("Members keep their order; numbers keep their text, 64-bit unsigned and negative exactly")
    func orderAndNumbers() throws {
        let value = try parse(#" {"z":18446744073709551615, "a":-9223372036854775808,"m":[1.5e3,true,false,null],"o":{}} "#)
        guard case .object(let members) = value else { Issue.record("not an object: \(value)"); return }
        #expect(members.map(\.name) == ["z", "a", "m", "o"])
        #expect(value["z"]?.uint64 == .max && value["z"]?.int64 == nil)
        #expect(value["a"]?.int64 == .min)
        #expect(value["m"] == .array([.number("1.5e3"), .bool(true), .bool(false), .null]))
        #expect(value.text == #"{"z":18446744073709551615,"a":-9223372036854775808,"m":[1.5e3,true,false,null],"o":{}}"#)
    }

    @Test("String escapes decode, surrogate pairs included; a lone surrogate becomes U+FFFD")
    func escapes() throws {
        #expect(try parse(#""a\"b\\c\/d\b\f\n\r\t\u00e9\ud83d\ude00""#) == .string("a\"b\\c/d\u{8}\u{c}\n\r\té😀"))
        #expect(try parse(#""\ud800x""#) == .string("\u{FFFD}x"))
        #expect(OrderedJSON.string("q\"\u{1}").text == #""q\"\u0001""#)
    }

    @Test("Malformed documents are refused where they go wrong", arguments: [
        ("", "unexpected end at byte 0"), ("{", "expected a member name at byte 1"), (#"{"a" 1}"#, "expected ':' at byte 5"),
        (#"{"a":1,}"#, "expected a member name at byte 7"), ("[1 2]", "expected ',' or ']' at byte 3"), ("01", "not a JSON value at byte 0"),
        ("1.", "expected digits after '.' at byte 2"), ("1e", "expected digits in the exponent at byte 2"), ("{} x", "trailing bytes after the value at byte 3"),
        ("\"a\u{1}\"", "control character in a string at byte 3"), (#""\x""#, "unknown escape at byte 3"), (#""\u12""#, #"expected four hex digits after \u at byte 3"#),
        ("\"open", "unterminated string at byte 5"), ("nul", "not a JSON value at byte 0"), ("-", "not a JSON value at byte 0"),
    ])
    func malformed(text: String, error: String) {
        #expect {
            try parse(text)
        } throws: { thrown in
            "\(thrown)" == error
        }
    }

    @Test("Nesting deeper than maxDepth is refused, not recursed into")
    func depth() throws {
        let ok = String(repeating: "[", count: OrderedJSON.maxDepth) + String(repeating: "]", count: OrderedJSON.maxDepth)
        #expect(throws: Never.self) { try parse(ok) }
        let deep = String(repeating: "[", count: 100_000)
        #expect(throws: OrderedJSON.ParseError.self) { try parse(deep) }
    }
}
