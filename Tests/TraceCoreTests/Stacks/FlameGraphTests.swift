import Foundation
import Testing
@testable import TraceCore
#if canImport(FoundationXML)
import FoundationXML
#endif

/// `FlameGraph`: the folded text, the merged tree, and the SVG, which must stay well-formed
/// XML with hostile frame names and draw a flame graph in a real browser.
@Suite("FlameGraph")
struct FlameGraphTests {
    typealias Sample = FlameGraph.Sample

    static let hostile = ["<script>alert(1)</script>", #"a"b'c"#, "x&y", "]]>"]

    /// About thirty stacks of a small server, with the hostile names in stacks wide enough for a full label.
    static let server: [Sample] = {
        let syscall = ["entry_SYSCALL_64", "do_syscall_64"]
        var samples: [Sample] = []
        let handlers = ["handle_get", "handle_post", "handle_delete", "handle_head", "serve_static"]
        let leaves = ["parse_headers", "json_decode", "hash_lookup", "memcpy", "malloc", "free"]
        for (h, handler) in handlers.enumerated() {
            for (l, leaf) in leaves.enumerated() where (h + l) % 2 == 0 || h == 0 {
                samples.append(Sample(frames: ["server", "main", "event_loop", handler, leaf], count: UInt64(40 + 13 * h + 7 * l)))
            }
            samples.append(Sample(frames: ["server", "main", "event_loop", handler, "write"] + syscall + ["ksys_write", "vfs_write"],
                                  count: UInt64(60 + 20 * h)))
        }
        samples.append(Sample(frames: ["server", "main", "event_loop", "epoll_wait"] + syscall + ["do_epoll_wait"], count: 300))
        samples.append(Sample(frames: ["server", "main", "load_config", "yaml_parse"], count: 35))
        for (name, count) in zip(hostile, [600, 200, 210, 220] as [UInt64]) {
            samples.append(Sample(frames: ["server", "main", "plugins", name, "plugin_step"], count: count))
        }
        samples.append(Sample(frames: ["server", "gc_thread", "mark", "sweep"], count: 120))
        return samples
    }()

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

    // MARK: SVG

    @Test("SVG: hostile names, title and subtitle are escaped, parse back to the originals, and add no script element")
    func hostileNames() throws {
        let title = #"<b>&"title'</b>"#, subtitle = "]]><script>alert(2)</script>"
        let svg = FlameGraph.svg(Self.server, title: title, subtitle: subtitle)
        for name in Self.hostile + [title, subtitle] where name != "]]>" {
            #expect(!svg.contains(name), "\(name) appears unescaped")
        }
        #expect(svg.components(separatedBy: "]]>").count == 2, "only the script's CDATA may end with ]]>")

        let document = try XMLDocumentElements(svg)
        #expect(document.elements.filter { $0.name == "script" }.count == 1)
        let texts = document.elements.map(\.text)
        let titled = texts.contains(title) && texts.contains(subtitle)
        #expect(titled, "the title or subtitle does not read as given")
        let names = Set(document.elements.compactMap { $0.attributes["data-name"] })
        let tooltips = document.elements.filter { $0.name == "title" }.map(\.text)
        for name in Self.hostile {
            let named = names.contains(name), tooltip = tooltips.contains { $0.hasPrefix("\(name) (") }, labelled = texts.contains(name)
            #expect(named, "no frame is named \(name)")
            #expect(tooltip, "no tooltip names \(name)")
            #expect(labelled, "no label reads \(name)")
        }
    }

    @Test("SVG: tooltips give the samples and share; the root is the widest frame and the bottom row")
    func frames() throws {
        let svg = FlameGraph.svg([Sample(frames: ["a", "b"], count: 3), Sample(frames: ["a"], count: 1)], title: "t")
        let groups = try XMLDocumentElements(svg).frames()
        #expect(groups.map(\.tooltip) == ["all (4 samples, 100%)", "a (4 samples, 100%)", "b (3 samples, 75%)"])
        #expect(groups.map(\.y) == groups.map(\.y).sorted(by: >))
        #expect(groups[0].x == 10 && groups[0].width == 1180)
        #expect(groups[2].width == 885)
        let one = try XMLDocumentElements(FlameGraph.svg([Sample(frames: ["a"], count: 1)], title: "t")).frames()
        #expect(one.last?.tooltip == "a (1 sample, 100%)")
    }

    @Test("SVG: characters XML 1.0 forbids are dropped; tab, newline and CR survive as character references")
    func forbiddenCharacters() throws {
        let name = "a\u{1}b\u{FFFE}c\td\ne\rf"
        let svg = FlameGraph.svg([Sample(frames: [name], count: 1)], title: "t\u{0}")
        #expect(!svg.unicodeScalars.contains { $0.value < 0x20 && $0 != "\n" } && !svg.unicodeScalars.contains("\u{FFFE}"))
        let document = try XMLDocumentElements(svg)
        #expect(document.elements.contains { $0.attributes["data-name"] == "abc\td\ne\rf" })
        #expect(document.elements.contains { $0.name == "text" && $0.text == "t" })
    }

    @Test("SVG: frames narrower than 0.1 px are left out and the subtitle says how many")
    func omitted() throws {
        let samples = [Sample(frames: ["big"], count: 10_000_000), Sample(frames: ["tiny", "tinier"], count: 1)]
        let document = try XMLDocumentElements(FlameGraph.svg(samples, title: "t", subtitle: "host a"))
        #expect(document.frames().map(\.name) == ["all", "big"])
        #expect(document.elements.contains { $0.text == "host a — 2 frames narrower than 0.1 px omitted" })
        let whole = try XMLDocumentElements(FlameGraph.svg([Sample(frames: ["a"], count: 1)], title: "t"))
        #expect(!whole.elements.contains { $0.text.contains("omitted") })
    }

    @Test("SVG labels are cut with .. to the characters that fit, or left empty")
    func labels() {
        #expect(FlameGraphSVG.label("abcdefghij", width: 100) == "abcdefghij")
        #expect(FlameGraphSVG.label("abcdefghij", width: 50) == "abcd..")
        #expect(FlameGraphSVG.label("abcdefghij", width: 20) == "")
    }

    @Test("SVG colours are warm (red ≥ green ≥ blue) and the same for the same name in every graph")
    func colours() throws {
        let fills = try XMLDocumentElements(FlameGraph.svg(Self.server, title: "t")).frames().map { ($0.name, $0.fill) }
        for (_, fill) in fills {
            let channels = fill.dropFirst(4).dropLast().split(separator: ",").compactMap { Int($0) }
            #expect(channels.count == 3 && channels[0] >= channels[1] && channels[1] >= channels[2], "\(fill) is not warm")
        }
        #expect(Set(fills.map(\.1)).count > 10)
        let again = try XMLDocumentElements(FlameGraph.svg([Sample(frames: ["main", "malloc"], count: 1)], title: "u")).frames()
        #expect(again.map(\.fill) == [FlameGraphSVG.colour("all"), FlameGraphSVG.colour("main"), FlameGraphSVG.colour("malloc")])
        #expect(FlameGraphSVG.colour("malloc") == "rgb(242,154,63)", "the colour of a name must not change between runs")
    }

    @Test("SVG without samples is a valid document that says no samples")
    func empty() throws {
        let document = try XMLDocumentElements(FlameGraph.svg([], title: "nothing"))
        #expect(document.elements.first?.name == "svg")
        #expect(document.elements.contains { $0.text == "no samples" })
        #expect(document.frames().isEmpty)
    }

    // MARK: browser

    @Test("Chromium draws the flame graph (not a blank page) and runs no script from frame names")
    func browser() throws {
        guard let chromium = Self.chromium() else {
            Issue.record("chromium is not installed: run scripts/install-deps.sh (it installs the Debian package `chromium`)")
            return
        }
        let kept = ProcessInfo.processInfo.environment["FLAMEGRAPH_SCREENSHOT_DIR"]
        let directory = kept.map { URL(fileURLWithPath: $0, isDirectory: true) }
            ?? FileManager.default.temporaryDirectory.appendingPathComponent("flamegraph-\(UUID().uuidString)", isDirectory: true)
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { if kept == nil { try? FileManager.default.removeItem(at: directory) } }
        let svg = directory.appendingPathComponent("flamegraph.svg"), png = directory.appendingPathComponent("flamegraph.png")
        try FlameGraph.svg(Self.server, title: "server: on-CPU stacks", subtitle: "host a, 30 s").write(to: svg, atomically: true, encoding: .utf8)

        let script = Self.repositoryRoot.appendingPathComponent("tests/stacks/screenshot.py").path
        let shot = try Self.run("/usr/bin/env", ["python3", script, svg.path, png.path])
        #expect(shot.status == 0, "screenshot.py exited \(shot.status): \(shot.output) \(shot.errors)")
        let report = try JSONSerialization.jsonObject(with: Data(shot.output.utf8)) as? [String: Any]
        let fraction = report?["non_background_fraction"] as? Double ?? 0
        #expect(fraction > 0.05, "the screenshot is mostly background: \(shot.output)")

        let dump = try Self.run("/usr/bin/timeout", ["120", chromium, "--headless", "--no-sandbox", "--disable-gpu",
                                                     "--user-data-dir=\(directory.appendingPathComponent("profile").path)",
                                                     "--dump-dom", svg.absoluteString])
        #expect(dump.status == 0, "chromium --dump-dom exited \(dump.status): \(dump.errors.suffix(2000))")
        #expect(dump.output.contains("<svg") && dump.output.contains("&lt;script&gt;alert(1)&lt;/script&gt;"),
                "the dumped DOM lacks the graph or the escaped name:\n\(dump.output.prefix(2000))")
        #expect(!dump.output.contains("<script>alert"), "a frame name became a script element")
        #expect(dump.output.components(separatedBy: "<script").count == 2, "the DOM has a script element the generator did not write")
    }

    static let repositoryRoot = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    static func chromium() -> String? {
        let path = ProcessInfo.processInfo.environment["PATH"] ?? ""
        let directories = path.split(separator: ":").map(String.init) + ["/usr/bin"]
        for name in ["chromium", "chromium-browser"] {
            for directory in directories where FileManager.default.isExecutableFile(atPath: "\(directory)/\(name)") {
                return "\(directory)/\(name)"
            }
        }
        return nil
    }

    static func run(_ executable: String, _ arguments: [String]) throws -> (status: Int32, output: String, errors: String) {
        let errorsFile = FileManager.default.temporaryDirectory.appendingPathComponent("flamegraph-stderr-\(UUID().uuidString)")
        guard FileManager.default.createFile(atPath: errorsFile.path, contents: nil) else {
            throw Failure(description: "cannot create \(errorsFile.path)")
        }
        defer { try? FileManager.default.removeItem(at: errorsFile) }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        let output = Pipe()
        process.standardOutput = output
        process.standardError = try FileHandle(forWritingTo: errorsFile)
        try process.run()
        let text = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        let errors = (try? String(contentsOf: errorsFile, encoding: .utf8)) ?? ""
        return (process.terminationStatus, text, errors)
    }
}

private struct Failure: Error, CustomStringConvertible {
    var description: String
}

/// Every element of an XML document with its attributes and its own text (CDATA included),
/// as `XMLParser` reads them: parsing fails for a document that is not well-formed.
struct XMLDocumentElements {
    struct Element {
        var name: String
        var attributes: [String: String]
        var text = ""
    }

    /// A frame's `<g>`, `<title>`, `<rect>` and `<text>` read together.
    struct Frame {
        var name: String
        var tooltip: String
        var x: Double, y: Double, width: Double
        var fill: String
    }

    private final class Collector: NSObject, XMLParserDelegate {
        var elements: [Element] = []
        var open: [Int] = []

        func parser(_ parser: XMLParser, didStartElement elementName: String, namespaceURI: String?,
                    qualifiedName: String?, attributes: [String: String] = [:]) {
            open.append(elements.count)
            elements.append(Element(name: elementName, attributes: attributes))
        }

        func parser(_ parser: XMLParser, didEndElement elementName: String, namespaceURI: String?, qualifiedName: String?) {
            open.removeLast()
        }

        func parser(_ parser: XMLParser, foundCharacters string: String) {
            if let at = open.last { elements[at].text += string }
        }

        func parser(_ parser: XMLParser, foundCDATA block: Data) {
            if let at = open.last { elements[at].text += String(decoding: block, as: UTF8.self) }
        }
    }

    let elements: [Element]

    init(_ text: String) throws {
        let parser = XMLParser(data: Data(text.utf8))
        let collector = Collector()
        parser.delegate = collector
        guard parser.parse() else {
            throw Failure(description: "not well-formed XML: \(parser.parserError.map { "\($0)" } ?? "unknown error")")
        }
        elements = collector.elements
    }

    func frames() -> [Frame] {
        var frames: [Frame] = []
        for (at, element) in elements.enumerated() where element.name == "g" && element.attributes["class"] == "f" {
            let rect = elements[at + 2].attributes
            frames.append(Frame(name: element.attributes["data-name"] ?? "", tooltip: elements[at + 1].text,
                                x: Double(rect["x"] ?? "") ?? -1, y: Double(rect["y"] ?? "") ?? -1,
                                width: Double(rect["width"] ?? "") ?? -1, fill: rect["fill"] ?? ""))
        }
        return frames
    }
}
