import Foundation
import Testing
@testable import TraceCore

/// `FlameGraph`: the folded text and the merged tree.
@Suite("FlameGraph")
struct FlameGraphTests {
    typealias Sample = FlameGraph.Sample

    // MARK: folded

    @Test("Folded: one line per stack, equal stacks merged, sorted by the bytes of the stack text, unsafe characters replaced")
    func folded() {
        let text = FlameGraph.folded([
            Sample(frames: ["main", "read;write", "x"], count: 4),
            Sample(frames: ["main", ""], count: 1),
            Sample(frames: ["b\nc", "d\te"], count: 2),
            Sample(frames: [], count: 1),
            Sample(frames: ["a", "b", "c"], count: 5),
            Sample(frames: ["z"], count: 0),
            Sample(frames: ["a", "b"], count: 2),
            Sample(frames: ["a", "b", "c"], count: 1),
            Sample(frames: ["main", "read:write", "x"], count: 1),
            Sample(frames: ["B"], count: 7),
        ])
        #expect(text == """
            B 7
            [unknown] 1
            a;b 2
            a;b;c 6
            b c;d e 2
            main;[unknown] 1
            main;read:write;x 5

            """)
        #expect(FlameGraph.folded([]) == "")
    }

    @Test("Folded: counts that would overflow saturate")
    func foldedSaturates() {
        #expect(FlameGraph.folded([Sample(frames: ["a"], count: .max), Sample(frames: ["a"], count: 2)]) == "a \(UInt64.max)\n")
    }

    // MARK: tree

    @Test("Tree: totals and self counts per frame, children by total descending")
    func tree() {
        let root = FlameGraph.tree([
            Sample(frames: ["a", "b", "c"], count: 5),
            Sample(frames: ["x", "y"], count: 3),
            Sample(frames: ["a", "b"], count: 2),
        ])
        typealias Node = FlameGraph.Node
        #expect(root == Node(name: "all", selfCount: 0, total: 10, children: [
            Node(name: "a", selfCount: 0, total: 7, children: [
                Node(name: "b", selfCount: 2, total: 7, children: [Node(name: "c", selfCount: 5, total: 5)]),
            ]),
            Node(name: "x", selfCount: 0, total: 3, children: [Node(name: "y", selfCount: 3, total: 3)]),
        ]))
    }

    @Test("Tree: equal totals are ordered by name; empty names and empty stacks are [unknown]; names are kept as they are")
    func treeTies() {
        let root = FlameGraph.tree([
            Sample(frames: ["q"], count: 3), Sample(frames: ["p;1"], count: 3), Sample(frames: [], count: 1),
            Sample(frames: ["q", ""], count: 1), Sample(frames: ["r"], count: 0),
        ])
        #expect(root.children.map(\.name) == ["q", "p;1", "[unknown]"])
        #expect(root.children.map(\.total) == [4, 3, 1])
        #expect(root.children[0].selfCount == 3 && root.children[0].children.map(\.name) == ["[unknown]"])
        #expect(FlameGraph.tree([]) == FlameGraph.Node(name: "all", selfCount: 0, total: 0))
    }

    @Test("Tree JSON: the keys are name, self, total and children, and it decodes back")
    func treeJSON() throws {
        let root = FlameGraph.tree([Sample(frames: ["p"], count: 3)])
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        let json = String(decoding: try encoder.encode(root), as: UTF8.self)
        #expect(json == #"{"children":[{"children":[],"name":"p","self":3,"total":3}],"name":"all","self":0,"total":3}"#)
        #expect(try JSONDecoder().decode(FlameGraph.Node.self, from: Data(json.utf8)) == root)
    }
}
