/// Output formats for counted, already-symbolized stacks: flamegraph.pl's folded text, a
/// JSON-ready tree, and a self-contained SVG flame graph (``svg(_:title:subtitle:width:)``).
///
/// All three read the samples the same way:
/// - a sample whose count is 0 is ignored;
/// - an empty frame name is shown as `[unknown]`, and so is a sample without frames (as one
///   `[unknown]` frame), so that its count is never lost;
/// - counts that would overflow `UInt64` saturate at `UInt64.max`.
public enum FlameGraph {
    /// The name shown for an empty frame name and for a stack without frames.
    public static let unknownFrame = "[unknown]"

    /// One counted stack.
    public struct Sample: Sendable, Hashable {
        /// Frames root first (outermost caller first), e.g.
        /// `["myprog", "main", "a", "b", "c", "entry_SYSCALL_64", "do_syscall_64"]`.
        public var frames: [String]
        /// How many times the stack was seen.
        public var count: UInt64

        /// A stack seen `count` times, frames root first.
        public init(frames: [String], count: UInt64) {
            self.frames = frames
            self.count = count
        }
    }

    /// One frame of the merged call tree: every stack that passes through the same frames
    /// from the root counts towards the same node.
    public struct Node: Sendable, Hashable, Codable {
        /// The frame's name (`all` for the root).
        public var name: String
        /// Samples whose stack ends at this frame. Encoded as `"self"`; the Swift name differs
        /// because `node.self` already means the node itself.
        public var selfCount: UInt64
        /// Samples whose stack passes through this frame: `selfCount` plus the children's totals.
        public var total: UInt64
        /// Callees, by `total` descending, then by name (UTF-8 byte order).
        public var children: [Node]

        /// A node as given; ``FlameGraph/tree(_:)`` keeps `total` equal to `selfCount` plus the
        /// children's totals, this initializer does not check it.
        public init(name: String, selfCount: UInt64, total: UInt64, children: [Node] = []) {
            self.name = name
            self.selfCount = selfCount
            self.total = total
            self.children = children
        }

        enum CodingKeys: String, CodingKey {
            case name
            case selfCount = "self"
            case total
            case children
        }
    }

    /// flamegraph.pl's folded format: one line `f1;f2;f3 count\n` per distinct stack, root
    /// frame first, lines sorted by the stack text (UTF-8 byte order, as `LC_ALL=C sort`).
    ///
    /// Frame names are made safe for the format: `;` (which would split the frame) becomes
    /// `:`, and every control character (Unicode category Cc, which includes tab, CR and
    /// newline) and the line and paragraph separators U+2028/U+2029 become a space. Stacks
    /// that read the same afterwards are one line with their counts added.
    public static func folded(_ samples: [Sample]) -> String {
        var counts: [String: UInt64] = [:]
        for sample in samples where sample.count > 0 {
            let line = frames(of: sample).map(foldedFrame).joined(separator: ";")
            counts[line, default: 0] = saturatingAdd(counts[line, default: 0], sample.count)
        }
        var text = ""
        for (line, count) in counts.sorted(by: { utf8Less($0.key, $1.key) }) {
            text += line
            text += " "
            text += String(count)
            text += "\n"
        }
        return text
    }

    /// The merged call tree under a root named `all` whose `total` is the sum of all counts.
    /// Names are kept as they are (only empty ones become ``unknownFrame``).
    public static func tree(_ samples: [Sample]) -> Node {
        var trie = Trie()
        for sample in samples where sample.count > 0 {
            trie.add(frames(of: sample), count: sample.count)
        }
        return trie.node(0, name: "all") { a, b in
            a.total != b.total ? a.total > b.total : utf8Less(a.name, b.name)
        }
    }

    static func frames(of sample: Sample) -> [String] {
        sample.frames.isEmpty ? [unknownFrame] : sample.frames.map { $0.isEmpty ? unknownFrame : $0 }
    }

    static func foldedFrame(_ name: String) -> String {
        // Symbol names are nearly always printable ASCII with no `;`: kept as they are, with
        // one pass over the bytes (a Unicode property lookup per character cost a scrape of
        // 10,000 stacks 1.75 s).
        if name.utf8.allSatisfy({ $0 >= 0x20 && $0 < 0x7f && $0 != UInt8(ascii: ";") }) { return name }
        var out = String.UnicodeScalarView()
        for scalar in name.unicodeScalars {
            switch scalar {
            case ";": out.append(":")
            case "\u{2028}", "\u{2029}": out.append(" ")
            case _ where scalar.properties.generalCategory == .control: out.append(" ")
            default: out.append(scalar)
            }
        }
        return String(out)
    }

    static func utf8Less(_ a: String, _ b: String) -> Bool {
        a.utf8.lexicographicallyPrecedes(b.utf8)
    }

    static func saturatingAdd(_ a: UInt64, _ b: UInt64) -> UInt64 {
        let (sum, overflow) = a.addingReportingOverflow(b)
        return overflow ? .max : sum
    }

    /// A prefix tree of frames kept in flat arrays (index 0 is the root).
    struct Trie {
        var selfCounts: [UInt64] = [0]
        var totals: [UInt64] = [0]
        var children: [[String: Int]] = [[:]]

        mutating func add(_ frames: [String], count: UInt64) {
            var at = 0
            totals[0] = saturatingAdd(totals[0], count)
            for frame in frames {
                let next: Int
                if let known = children[at][frame] {
                    next = known
                } else {
                    next = selfCounts.count
                    selfCounts.append(0)
                    totals.append(0)
                    children.append([:])
                    children[at][frame] = next
                }
                totals[next] = saturatingAdd(totals[next], count)
                at = next
            }
            selfCounts[at] = saturatingAdd(selfCounts[at], count)
        }

        func node(_ index: Int, name: String, by order: (Node, Node) -> Bool) -> Node {
            let kids = children[index].map { node($0.value, name: $0.key, by: order) }.sorted(by: order)
            return Node(name: name, selfCount: selfCounts[index], total: totals[index], children: kids)
        }
    }
}
