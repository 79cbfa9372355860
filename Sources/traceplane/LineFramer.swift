/// Cuts a byte stream into lines, whatever its chunks: a line split across chunks is
/// held until its newline arrives. `\n` ends a line and a `\r` before it is dropped; empty
/// lines are skipped.
struct LineFramer: Sendable {
    /// The agent's longest line is a few KiB; anything near this is not the events endpoint.
    static let defaultMaxLine = 1 << 20

    /// A line grew past ``maxLine`` bytes without a newline.
    struct Overlong: Error, Equatable, CustomStringConvertible {
        var maxLine: Int
        var description: String { "a line longer than \(maxLine) bytes" }
    }

    let maxLine: Int
    private var partial: [UInt8] = []

    init(maxLine: Int = Self.defaultMaxLine) {
        precondition(maxLine > 0, "LineFramer needs room for at least one byte per line")
        self.maxLine = maxLine
    }

    /// Bytes of a line whose newline has not arrived yet. Non-zero at the end of a
    /// stream means its last line was cut off.
    var pendingBytes: Int { partial.count }

    /// The lines that `chunk` completes, in order, without their line endings.
    /// - Throws: ``Overlong`` when a line exceeds ``maxLine``; the framer is then unusable.
    mutating func lines<C: Collection<UInt8>>(in chunk: C) throws(Overlong) -> [[UInt8]] {
        var lines: [[UInt8]] = []
        var rest = chunk[...]
        while let newline = rest.firstIndex(of: UInt8(ascii: "\n")) {
            partial.append(contentsOf: rest[..<newline])
            guard partial.count <= maxLine + 1 else { throw Overlong(maxLine: maxLine) }
            if partial.last == UInt8(ascii: "\r") { partial.removeLast() }
            guard partial.count <= maxLine else { throw Overlong(maxLine: maxLine) }
            if !partial.isEmpty { lines.append(partial) }
            partial.removeAll(keepingCapacity: true)
            rest = rest[rest.index(after: newline)...]
        }
        partial.append(contentsOf: rest)
        // One byte of slack: it may be the `\r` of a `\r\n` whose `\n` is in the next chunk.
        guard partial.count <= maxLine + 1 else { throw Overlong(maxLine: maxLine) }
        return lines
    }
}
