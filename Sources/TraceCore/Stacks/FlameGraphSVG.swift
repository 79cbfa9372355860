extension FlameGraph {
    /// A self-contained, zoomable SVG flame graph: the root (`all`) is the bottom row, each
    /// callee sits above its caller, and a frame's width is its share of the samples.
    /// Siblings are ordered by name, so a graph's layout does not move when counts change.
    ///
    /// The document has no external references: generic font families only, an inline
    /// `<style>` and one inline `<script>`. Clicking a frame zooms to it (its width fills the
    /// graph, its ancestors stay, everything else hides); clicking the root or "Reset Zoom"
    /// resets. "Search" (or Ctrl-F, or `/`) highlights frames whose name matches a regular
    /// expression and shows the share of samples they cover. Every frame has a tooltip
    /// `name (N samples, P%)`. The script reads names from the frames' attributes and writes
    /// them only as text, never as markup.
    ///
    /// Frames narrower than 0.1 px are left out (the subtitle says how many); labels are cut
    /// with `..` to the width a monospace character is estimated to take. Colours come from
    /// a hash of the name (FNV-1a), so a function has the same warm colour in every graph.
    /// All user text (frame names, title, subtitle) is XML-escaped, and characters that
    /// XML 1.0 does not allow (control characters other than tab, newline and carriage
    /// return; U+FFFE and U+FFFF) are dropped. Without samples, the document says "no samples".
    ///
    /// - Precondition: `width` is at least 200.
    public static func svg(_ samples: [Sample], title: String, subtitle: String? = nil, width: Int = 1200) -> String {
        precondition(width >= 200, "A flame graph needs a width of at least 200 px to lay out its header and frames; got \(width).")
        var layout = FlameGraphSVG(width: width)
        let root = tree(samples)
        if root.total > 0 { layout.place(root) }
        return layout.document(title: title, subtitle: subtitle, total: root.total)
    }
}

/// Frames placed in rows, then written out as one SVG document.
struct FlameGraphSVG {
    static let pad = 10.0
    static let rowHeight = 16.0
    static let fontSize = 12.0
    /// The advance of one monospace character at ``fontSize`` (0.6 em).
    static let charWidth = 7.2
    static let minWidth = 0.1
    static let top = 62.0
    static let bottom = 30.0

    struct Frame {
        var name: String
        var start: UInt64
        var count: UInt64
        var depth: Int
    }

    let width: Int
    var frames: [Frame] = []
    var omitted = 0
    var depth = 0

    init(width: Int) { self.width = width }

    var graphWidth: Double { Double(width) - 2 * Self.pad }

    mutating func place(_ root: FlameGraph.Node) {
        let scale = graphWidth / Double(root.total)
        var stack: [(node: FlameGraph.Node, start: UInt64, depth: Int)] = [(root, 0, 0)]
        while let (node, start, level) = stack.popLast() {
            if Double(node.total) * scale < Self.minWidth {
                omitted += Self.size(node)
                continue
            }
            frames.append(Frame(name: node.name, start: start, count: node.total, depth: level))
            depth = max(depth, level)
            var offset = start
            var placed: [(node: FlameGraph.Node, start: UInt64, depth: Int)] = []
            for child in node.children.sorted(by: { FlameGraph.utf8Less($0.name, $1.name) }) {
                placed.append((child, offset, level + 1))
                offset = FlameGraph.saturatingAdd(offset, child.total)
            }
            stack.append(contentsOf: placed.reversed())
        }
    }

    static func size(_ node: FlameGraph.Node) -> Int {
        node.children.reduce(1) { $0 + size($1) }
    }

    func document(title: String, subtitle: String?, total: UInt64) -> String {
        let rows = frames.isEmpty ? 1 : depth + 1
        let height = Self.top + Double(rows) * Self.rowHeight + Self.bottom
        let mid = Self.number(Double(width) / 2)
        var note = subtitle ?? ""
        if omitted > 0 {
            let omission = "\(omitted) frame\(omitted == 1 ? "" : "s") narrower than 0.1 px omitted"
            note = note.isEmpty ? omission : "\(note) — \(omission)"
        }

        var svg = """
            <?xml version="1.0" encoding="UTF-8" standalone="no"?>
            <svg xmlns="http://www.w3.org/2000/svg" version="1.1" width="\(width)" height="\(Self.number(height))" \
            viewBox="0 0 \(width) \(Self.number(height))" font-family="monospace" font-size="\(Self.number(Self.fontSize))">

            """
        svg += "<style>\(Self.style)</style>\n"
        svg += ##"<rect x="0" y="0" width="100%" height="100%" fill="#fbf8f1"/>"## + "\n"
        svg += #"<text x="\#(mid)" y="24" text-anchor="middle" font-family="sans-serif" font-size="17">\#(Self.xml(title))</text>"# + "\n"
        if !note.isEmpty {
            svg += ##"<text x="\##(mid)" y="44" text-anchor="middle" font-family="sans-serif" fill="#555">\##(Self.xml(note))</text>"## + "\n"
        }
        guard !frames.isEmpty else {
            let y = Self.number(Self.top + Self.rowHeight * 0.75)
            svg += ##"<text x="\##(mid)" y="\##(y)" text-anchor="middle" font-family="sans-serif" fill="#555">no samples</text>"## + "\n"
            return svg + "</svg>\n"
        }
        svg += #"<text id="reset" class="button" x="\#(Self.number(Self.pad))" y="24" display="none">Reset Zoom</text>"# + "\n"
        svg += #"<text id="search" class="button" x="\#(Self.number(Double(width) - Self.pad))" y="24" text-anchor="end">Search</text>"# + "\n"
        let baseline = Self.number(height - 10)
        svg += #"<text id="details" x="\#(Self.number(Self.pad))" y="\#(baseline)"> </text>"# + "\n"
        svg += #"<text id="matched" x="\#(Self.number(Double(width) - Self.pad))" y="\#(baseline)" text-anchor="end"> </text>"# + "\n"

        let rootY = height - Self.bottom - Self.rowHeight
        let scale = graphWidth / Double(total)
        svg += #"<g id="frames">"# + "\n"
        for frame in frames {
            let x = Self.pad + Double(frame.start) * scale
            let w = Double(frame.count) * scale
            let y = rootY - Double(frame.depth) * Self.rowHeight
            let name = Self.xml(frame.name)
            let samples = "\(frame.count) sample\(frame.count == 1 ? "" : "s")"
            let percent = Self.number(Double(frame.count) / Double(total) * 100)
            svg += #"<g class="f" data-name="\#(name)" data-s="\#(frame.start)" data-n="\#(frame.count)" data-d="\#(frame.depth)">"#
            svg += "<title>\(name) (\(samples), \(percent)%)</title>"
            svg += #"<rect x="\#(Self.number(x))" y="\#(Self.number(y))" width="\#(Self.number(w))" height="\#(Self.number(Self.rowHeight - 1))" rx="2" fill="\#(Self.colour(frame.name))"/>"#
            svg += #"<text x="\#(Self.number(x + 3))" y="\#(Self.number(y + Self.fontSize))">\#(Self.xml(Self.label(frame.name, width: w)))</text>"#
            svg += "</g>\n"
        }
        svg += "</g>\n"
        svg += "<script type=\"text/javascript\"><![CDATA[\(Self.script)]]></script>\n"
        return svg + "</svg>\n"
    }

    /// The name cut to the characters that fit in `width` (Unicode scalars, as the script counts).
    static func label(_ name: String, width: Double) -> String {
        let fits = Int(((width - 6) / charWidth).rounded(.down))
        let scalars = name.unicodeScalars
        if scalars.count <= fits { return name }
        if fits < 3 { return "" }
        return String(String.UnicodeScalarView(scalars.prefix(fits - 2))) + ".."
    }

    /// Text for an XML attribute or element: the five special characters as entities, tab,
    /// newline and CR as character references (so parsers keep them), and characters XML 1.0
    /// forbids dropped.
    static func xml(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for scalar in text.unicodeScalars {
            switch scalar {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&apos;"
            case "\t": out += "&#9;"
            case "\n": out += "&#10;"
            case "\r": out += "&#13;"
            case _ where scalar.value < 0x20 || scalar.value == 0xFFFE || scalar.value == 0xFFFF: continue
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out
    }

    /// A non-negative number with at most two decimals, no exponent and no locale.
    static func number(_ value: Double) -> String {
        let hundredths = UInt64((max(value, 0) * 100).rounded())
        let whole = hundredths / 100, fraction = hundredths % 100
        if fraction == 0 { return String(whole) }
        if fraction % 10 == 0 { return "\(whole).\(fraction / 10)" }
        return "\(whole).\(fraction < 10 ? "0" : "")\(fraction)"
    }

    /// A warm colour (hue 0–50°: red to amber) picked by the FNV-1a hash of the name's UTF-8.
    static func colour(_ name: String) -> String {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for byte in name.utf8 {
            hash = (hash ^ UInt64(byte)) &* 0x0000_0100_0000_01b3
        }
        func unit(_ shift: UInt64) -> Double { Double((hash >> shift) & 0xffff) / 65535 }
        let hue = 50 * unit(0)
        let saturation = 0.75 + 0.2 * unit(16)
        let lightness = 0.55 + 0.13 * unit(32)
        let chroma = (1 - abs(2 * lightness - 1)) * saturation
        let second = chroma * (1 - abs((hue / 60).truncatingRemainder(dividingBy: 2) - 1))
        let base = lightness - chroma / 2
        func byte(_ v: Double) -> Int { Int(((v + base) * 255).rounded()) }
        return "rgb(\(byte(chroma)),\(byte(second)),\(byte(0)))"
    }

    static let style = """
        .f { cursor: pointer; }
        .f:hover rect { stroke: #222; stroke-width: 0.6; }
        .f text { pointer-events: none; fill: #000; }
        .f.a rect { opacity: 0.55; }
        .f.m rect { fill: rgb(200,60,230); }
        .button { cursor: pointer; fill: #333; text-decoration: underline; }
        #details, #matched { fill: #333; }
        """

    /// Reads everything it needs from the document; sets names only through `textContent`.
    static let script = """

        (function () {
          'use strict';
          var charWidth = \(FlameGraphSVG.number(FlameGraphSVG.charWidth));
          var frames = Array.prototype.slice.call(document.querySelectorAll('g.f'));
          var reset = document.getElementById('reset');
          var searchButton = document.getElementById('search');
          var details = document.getElementById('details');
          var matched = document.getElementById('matched');
          var root = null;
          frames.forEach(function (g) { if (g.getAttribute('data-d') === '0') { root = g; } });
          if (!root) { return; }
          var left = Number(root.querySelector('rect').getAttribute('x'));
          var span = Number(root.querySelector('rect').getAttribute('width'));
          var total = Number(root.getAttribute('data-n'));
          var term = '';

          function num(g, key) { return Number(g.getAttribute(key)); }

          function fit(name, width) {
            var chars = Array.from(name);
            var fits = Math.floor((width - 6) / charWidth);
            if (chars.length <= fits) { return name; }
            if (fits < 3) { return ''; }
            return chars.slice(0, fits - 2).join('') + '..';
          }

          function place(g, x, width) {
            var rect = g.querySelector('rect');
            var text = g.querySelector('text');
            rect.setAttribute('x', x.toFixed(2));
            rect.setAttribute('width', width.toFixed(2));
            text.setAttribute('x', (x + 3).toFixed(2));
            text.textContent = fit(g.getAttribute('data-name'), width);
            g.removeAttribute('display');
          }

          function zoom(target) {
            var s = num(target, 'data-s'), n = num(target, 'data-n'), d = num(target, 'data-d');
            frames.forEach(function (g) {
              var gs = num(g, 'data-s'), gn = num(g, 'data-n'), gd = num(g, 'data-d');
              g.classList.remove('a');
              if (gd <= d && gs <= s && gs + gn >= s + n) {
                place(g, left, span);
                if (gd < d) { g.classList.add('a'); }
              } else if (gd > d && gs >= s && gs + gn <= s + n) {
                place(g, left + (gs - s) / n * span, gn / n * span);
              } else {
                g.setAttribute('display', 'none');
              }
            });
            if (d > 0) { reset.removeAttribute('display'); } else { reset.setAttribute('display', 'none'); }
          }

          function highlight(pattern) {
            var test = null;
            if (pattern) {
              try {
                var re = new RegExp(pattern);
                test = function (name) { return re.test(name); };
              } catch (e) {
                test = function (name) { return name.indexOf(pattern) >= 0; };
              }
            }
            var spans = [];
            frames.forEach(function (g) {
              if (test && test(g.getAttribute('data-name'))) {
                g.classList.add('m');
                spans.push([num(g, 'data-s'), num(g, 'data-s') + num(g, 'data-n')]);
              } else {
                g.classList.remove('m');
              }
            });
            spans.sort(function (a, b) { return a[0] - b[0]; });
            var covered = 0, end = -1;
            spans.forEach(function (r) {
              if (r[0] >= end) { covered += r[1] - r[0]; end = r[1]; }
              else if (r[1] > end) { covered += r[1] - end; end = r[1]; }
            });
            term = pattern || '';
            matched.textContent = test ? 'Matched: ' + (covered / total * 100).toFixed(2) + '%' : ' ';
            searchButton.textContent = test ? 'Clear Search' : 'Search';
          }

          function search() {
            if (term) { highlight(''); return; }
            var pattern = window.prompt('Highlight frames matching (regular expression):', '');
            if (pattern !== null) { highlight(pattern); }
          }

          document.documentElement.addEventListener('click', function (event) {
            var g = event.target.closest ? event.target.closest('g.f') : null;
            if (g) { zoom(g); }
            else if (event.target === reset) { zoom(root); }
            else if (event.target === searchButton) { search(); }
          });
          document.documentElement.addEventListener('mouseover', function (event) {
            var g = event.target.closest ? event.target.closest('g.f') : null;
            details.textContent = g ? g.querySelector('title').textContent : ' ';
          });
          window.addEventListener('keydown', function (event) {
            if (((event.ctrlKey || event.metaKey) && event.key === 'f') || event.key === '/') {
              event.preventDefault();
              term = '';
              search();
            } else if (event.key === 'Escape') {
              highlight('');
            }
          });
        })();

        """
}
