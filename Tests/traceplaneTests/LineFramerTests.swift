import Testing
@testable import traceplane

@Suite("LineFramer: lines out of chunks")
struct LineFramerTests {
    func text(_ lines: [[UInt8]]) -> [String] { lines.map { String(decoding: $0, as: UTF8.self) } }

    @Test("Two lines cut at every byte boundary come out whole, once each, in order")
    func everySplit() throws {
        let stream = Array("{\"event\":\"call\",\"seq\":1}\r\n{\"event\":\"gap\",\"missed\":2}\n".utf8)
        for cut in 0...stream.count {
            var framer = LineFramer()
            let lines = try framer.lines(in: stream[..<cut]) + framer.lines(in: stream[cut...])
            #expect(text(lines) == [#"{"event":"call","seq":1}"#, #"{"event":"gap","missed":2}"#], "cut at \(cut)")
            #expect(framer.pendingBytes == 0)
        }
    }

    @Test("Byte-by-byte chunks give the same lines as one chunk")
    func byteByByte() throws {
        let stream = Array("a\nbb\r\n\nccc\n".utf8)
        var framer = LineFramer()
        var lines: [[UInt8]] = []
        for byte in stream { lines += try framer.lines(in: [byte]) }
        #expect(text(lines) == ["a", "bb", "ccc"])
    }

    @Test("A line is held until its newline arrives, and counted as pending meanwhile")
    func held() throws {
        var framer = LineFramer()
        #expect(try framer.lines(in: Array("{\"event\":".utf8)).isEmpty)
        #expect(framer.pendingBytes == 9)
        #expect(text(try framer.lines(in: Array("\"end\"}\n{\"ev".utf8))) == [#"{"event":"end"}"#])
        #expect(framer.pendingBytes == 4)
    }

    @Test("Empty lines and bare CRLFs are skipped; a CR inside a line is kept")
    func blankLines() throws {
        var framer = LineFramer()
        #expect(text(try framer.lines(in: Array("\n\r\n\n a\rb \r\n".utf8))) == [" a\rb "])
    }

    @Test("A line longer than maxLine is refused, whether or not its newline came")
    func overlong() throws {
        var framer = LineFramer(maxLine: 8)
        #expect(text(try framer.lines(in: Array("12345678\r\n".utf8))) == ["12345678"])
        #expect(throws: LineFramer.Overlong(maxLine: 8)) { try framer.lines(in: Array("123456789\n".utf8)) }
        var unterminated = LineFramer(maxLine: 8)
        #expect(try unterminated.lines(in: Array("12345678\r".utf8)).isEmpty)
        #expect(throws: LineFramer.Overlong(maxLine: 8)) { try unterminated.lines(in: Array("x".utf8)) }
    }
}
