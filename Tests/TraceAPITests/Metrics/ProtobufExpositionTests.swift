import Foundation
import Testing
@testable import TraceAPI
@testable import TraceCore

/// The protobuf exposition, decoded by an independent decoder: `protoc --decode` (Debian's
/// protobuf-compiler) with `tests/prometheus/metrics.proto`, written from the published
/// field numbers. protoc's text output is read back into a tree and compared with what the
/// text format says for the same snapshot.
@Suite("Protobuf exposition (decoded by protoc)")
struct ProtobufExpositionTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()
    static let proto = root.appendingPathComponent("tests/prometheus/metrics.proto").path

    /// A node of protoc's text format: scalar fields as strings, messages as nodes.
    final class Node {
        var scalars: [String: [String]] = [:]
        var messages: [String: [Node]] = [:]
        func scalar(_ name: String) -> String? { scalars[name]?.first }
        func all(_ name: String) -> [Node] { messages[name] ?? [] }
        func one(_ name: String) -> Node? { messages[name]?.first }
        /// The metric's labels, `le` and friends included.
        var labels: [String: String] {
            Dictionary(all("label").map { ($0.scalar("name") ?? "", $0.scalar("value") ?? "") }, uniquingKeysWith: { a, _ in a })
        }
    }

    /// Parses protoc's text format (`name: value`, `name {`, `}`).
    static func parse(_ text: String) throws -> Node {
        let root = Node()
        var stack = [root]
        for raw in text.split(separator: "\n") {
            let line = raw.trimmingCharacters(in: .whitespaces)
            if line == "}" {
                stack.removeLast()
            } else if line.hasSuffix(" {") {
                let node = Node()
                stack.last!.messages[String(line.dropLast(2)), default: []].append(node)
                stack.append(node)
            } else if let colon = line.firstIndex(of: ":") {
                var value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespaces)
                if value.hasPrefix("\""), value.hasSuffix("\""), value.count >= 2 { value = unescape(String(value.dropFirst().dropLast())) }
                stack.last!.scalars[String(line[..<colon]), default: []].append(value)
            } else {
                Issue.record("protoc printed a line this parser does not know: \(line)")
            }
        }
        try #require(stack.count == 1, "unbalanced braces in protoc's output")
        return root
    }

    /// A string as protoc prints it: C escapes, octal for bytes outside printable ASCII.
    static func unescape(_ text: String) -> String {
        var out: [UInt8] = []
        let bytes = Array(text.utf8)
        var i = 0
        while i < bytes.count {
            guard bytes[i] == UInt8(ascii: "\\"), i + 1 < bytes.count else { out.append(bytes[i]); i += 1; continue }
            let next = bytes[i + 1]
            if (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(next) {
                var value = 0, n = 0
                while n < 3, i + 1 + n < bytes.count, (UInt8(ascii: "0")...UInt8(ascii: "7")).contains(bytes[i + 1 + n]) {
                    value = value * 8 + Int(bytes[i + 1 + n] - UInt8(ascii: "0"))
                    n += 1
                }
                out.append(UInt8(value & 0xff))
                i += 1 + n
                continue
            }
            switch next {
            case UInt8(ascii: "n"): out.append(10)
            case UInt8(ascii: "t"): out.append(9)
            case UInt8(ascii: "r"): out.append(13)
            default: out.append(next)
            }
            i += 2
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// Splits length-delimited messages (a varint length, then the message).
    static func split(_ bytes: [UInt8]) throws -> [[UInt8]] {
        var messages: [[UInt8]] = []
        var i = 0
        while i < bytes.count {
            var length = 0, shift = 0
            while true {
                try #require(i < bytes.count, "a truncated length")
                let byte = bytes[i]
                i += 1
                length |= Int(byte & 0x7f) << shift
                shift += 7
                if byte & 0x80 == 0 { break }
            }
            try #require(i + length <= bytes.count, "a message runs past the end")
            messages.append(Array(bytes[i..<i + length]))
            i += length
        }
        return messages
    }

    /// Each family decoded by protoc, by name.
    static func decode(_ bytes: [UInt8]) throws -> [(name: String, family: Node)] {
        try split(bytes).map { message in
            let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tp-proto-\(UUID().uuidString)")
            try Data(message).write(to: dir)
            defer { try? FileManager.default.removeItem(at: dir) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: "/usr/bin/protoc")
            process.arguments = ["--proto_path=\((proto as NSString).deletingLastPathComponent)", "--decode=io.prometheus.client.MetricFamily", proto]
            process.standardInput = try FileHandle(forReadingFrom: dir)
            let out = Pipe(), err = Pipe()
            process.standardOutput = out
            process.standardError = err
            try process.run()
            let text = String(decoding: out.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            let errors = String(decoding: err.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            process.waitUntilExit()
            try #require(process.terminationStatus == 0, "protoc --decode failed: \(errors)")
            let family = try parse(text)
            return (family.scalar("name") ?? "", family)
        }
    }

    static func snapshot() -> MetricsSnapshot {
        // Slots 0, 1, 10 and 14: zero bucket, then native buckets 2, 11 and 15.
        let latency = MetricsSnapshotTests.probe("reads", slots: [0: 3, 1: 5, 10: 7, 14: 2], sumNanoseconds: 50_123, calls: 17, errors: 1,
                                                 runTime: 999, runCount: 17)
        let keys = KeyedAggregate(by: ["comm", "arg:fd"], value: "latency", histogram: .log2, droppedKeys: 3, entries: [
            KeySeriesTests.entry([.string("nginx"), .signed(7)], calls: 10, errors: 2, sum: 400, slots: [3: 4, 5: 6]),
            KeySeriesTests.entry([.string("cu\"rl\\x"), .signed(3)], calls: 5, sum: 100, slots: [4: 5]),
        ])
        let rets = KeyedAggregate(by: ["errno"], value: "ret", histogram: .log2, droppedKeys: 0, entries: [
            KeySeriesTests.entry([.errno("EBADF")], calls: 3, errors: 3, sum: -27, slots: [AggregatePlan.Histogram.log2.slots - 1: 3]),
        ])
        let linear = AggregatePlan.Histogram(linear: true, min: 0, step: 10, slots: 6)
        let sizes = KeyedAggregate(by: ["comm"], value: "arg:count", histogram: linear, droppedKeys: 0, entries: [
            KeySeriesTests.entry([.string("dd")], calls: 4, sum: 60, slots: [1: 1, 2: 3], histogram: linear),
        ])
        return MetricsSnapshot(probes: [latency, KeySeriesTests.probe(keys, name: "keyed"), KeySeriesTests.probe(rets, name: "errs"),
                                        KeySeriesTests.probe(sizes, name: "sizes"),
                                        MetricsSnapshotTests.probe("switches", target: "tracepoint:sched:sched_switch",
                                                                   mechanism: "raw_tracepoint", calls: 42, countsOnly: true)],
                               build: MetricsSnapshotTests.build)
    }

    /// The family a text sample belongs to (a histogram's `_bucket`, `_sum`, `_count`).
    static func family(of sample: String, in text: ParsedExposition) -> String {
        for suffix in ["_bucket", "_sum", "_count"] where sample.hasSuffix(suffix) {
            let base = String(sample.dropLast(suffix.count))
            if text.family(base)?.type == "histogram" { return base }
        }
        return sample
    }

    static func both() throws -> (text: ParsedExposition, families: [(name: String, family: Node)]) {
        let snapshot = snapshot()
        var text = ExpositionWriter()
        snapshot.render(into: &text, scrapeStarted: .now)
        var protobuf = ProtobufExpositionWriter()
        snapshot.render(into: &protobuf, scrapeStarted: .now)
        return (try ParsedExposition(String(decoding: text.bytes, as: UTF8.self)), try decode(protobuf.finish()))
    }

    @Test("protoc decodes every family; names, types and help match the text format's, plus the two native families")
    func familiesMatchTheText() throws {
        let (text, families) = try Self.both()
        let names = families.map(\.name)
        #expect(Set(names).count == names.count, "a family twice: \(names)")
        let textTypes = Dictionary(text.families.map { ($0.name, $0.type) }, uniquingKeysWith: { a, _ in a })
        let nonEmpty = Set(text.samples.map { Self.family(of: $0.name, in: text) })
        #expect(Set(names) == nonEmpty.union(["traceplane_probe_latency_nanoseconds", "traceplane_probe_key_value_native"]),
                "protobuf \(Set(names).symmetricDifference(nonEmpty))")
        for (name, family) in families {
            let type = family.scalar("type") ?? "COUNTER"
            if let textType = textTypes[name] {
                #expect(type.lowercased() == textType, "\(name): \(type) in protobuf, \(textType) in text")
            } else {
                #expect(type == "HISTOGRAM")
            }
            #expect(!(family.scalar("help") ?? "").isEmpty, "\(name) has no help")
        }
    }

    @Test("Counters and gauges carry the text format's values and labels (escaped label values read back intact)")
    func scalarsMatchTheText() throws {
        let (text, families) = try Self.both()
        var compared = 0
        for (name, family) in families where family.scalar("type") != "HISTOGRAM" && name != "traceplane_scrape_duration_seconds" {
            for metric in family.all("metric") {
                let value = (metric.one("counter") ?? metric.one("gauge") ?? metric.one("untyped"))?.scalar("value")
                let labels = metric.labels.filter { !$0.value.isEmpty }
                let matches = text.samples.filter { $0.name == name && $0.labels.filter { !$0.value.isEmpty } == labels }
                #expect(matches.count == 1, "\(name)\(labels): \(matches.count) text samples")
                if let sample = matches.first, let value, let number = Double(value) {
                    #expect(number == Double(sample.value), "\(name)\(labels): \(number) in protobuf, \(sample.value) in text")
                    compared += 1
                }
            }
        }
        #expect(compared > 20, "only \(compared) values compared")
        let calls = try #require(families.first { $0.name == "traceplane_probe_key_calls_total" }?.family)
        #expect(calls.all("metric").contains { $0.labels["comm"] == "cu\"rl\\x" }, "the escaped comm did not come back")
    }

    @Test("The latency histogram is native, schema 0: slot 0 is the zero bucket, slot s bucket s+1, spans split at gaps over two, deltas exact")
    func nativeLatency() throws {
        let (_, families) = try Self.both()
        let family = try #require(families.first { $0.name == "traceplane_probe_latency_nanoseconds" }?.family)
        let metrics = family.all("metric")
        // Tracepoint probes have no latency: only the four probes on syscall:read.
        #expect(metrics.count == 4)
        let reads = try #require(metrics.first { $0.labels["probe"] == "reads" }?.one("histogram"))
        #expect(reads.scalar("sample_count") == "17")
        #expect(reads.scalar("sample_sum") == "50123")
        #expect(reads.scalar("schema") == nil, "schema 0 is the default")
        #expect(reads.scalar("zero_threshold") == "1")
        #expect(reads.scalar("zero_count") == "3")
        #expect(reads.all("bucket").isEmpty, "no classic buckets in the native family")
        let spans = reads.all("positive_span").map { (Int($0.scalar("offset") ?? "0")!, Int($0.scalar("length") ?? "0")!) }
        // Buckets 2, 11 and 15: gaps of 8 and 3 empty buckets, so three spans.
        #expect(spans.map(\.0) == [2, 8, 3] && spans.map(\.1) == [1, 1, 1], "\(spans)")
        #expect(reads.scalars["positive_delta"] == ["5", "2", "-5"])
        // Decoding the spans and deltas back gives the kernel's slots.
        var index = 0, count = 0
        var decoded: [Int: Int] = [:]
        var deltas = (reads.scalars["positive_delta"] ?? []).map { Int($0)! }.makeIterator()
        for (offset, length) in spans {
            index += offset
            for _ in 0..<length {
                count += deltas.next()!
                decoded[index - 1] = count
                index += 1
            }
        }
        #expect(decoded == [1: 5, 10: 7, 14: 2])
    }

    @Test("A classic histogram in protobuf holds the text format's finite buckets; +Inf is sample_count")
    func classicLatency() throws {
        let (text, families) = try Self.both()
        let family = try #require(families.first { $0.name == "traceplane_probe_latency_seconds" }?.family)
        let reads = try #require(family.all("metric").first { $0.labels["probe"] == "reads" }?.one("histogram"))
        let buckets = reads.all("bucket").map { (Double($0.scalar("upper_bound") ?? "")!, Double($0.scalar("cumulative_count") ?? "0")!) }
        let textBuckets = text.samples.filter { $0.name == "traceplane_probe_latency_seconds_bucket" && $0.labels["probe"] == "reads" }
        #expect(buckets.count == textBuckets.count - 1, "the text format has \(textBuckets.count) buckets with +Inf")
        for (bound, count) in buckets {
            let match = textBuckets.first { Double($0.labels["le"] ?? "") == bound }
            #expect(match.flatMap { Double($0.value) } == count, "le \(bound): \(count) in protobuf, \(String(describing: match?.value)) in text")
        }
        #expect(reads.scalar("sample_count") == "17")
        #expect(Double(reads.scalar("sample_sum") ?? "") == 0.000050123)
    }

    @Test("Key histograms: log2 without negatives are native (kernel unit), negatives and linear stay classic, as in the text format")
    func keyHistograms() throws {
        let (text, families) = try Self.both()
        let native = try #require(families.first { $0.name == "traceplane_probe_key_value_native" }?.family)
        let keyed = native.all("metric")
        #expect(Set(keyed.map { $0.labels["probe"] ?? "" }) == ["keyed"])
        let nginx = try #require(keyed.first { $0.labels["comm"] == "nginx" }?.one("histogram"))
        // Slots 3 and 5: buckets 4 and 6, one span (a gap of one), deltas 4, -4, 6.
        #expect(nginx.all("positive_span").map { $0.scalar("offset") } == ["4"])
        #expect(nginx.all("positive_span").map { $0.scalar("length") } == ["3"])
        #expect(nginx.scalars["positive_delta"] == ["4", "-4", "6"])
        #expect(nginx.scalar("sample_count") == "10" && nginx.scalar("sample_sum") == "400")
        #expect(nginx.one("histogram") == nil && keyed.first { $0.labels["comm"] == "nginx" }?.labels["arg_fd"] == "7")
        let classic = try #require(families.first { $0.name == "traceplane_probe_key_value" }?.family)
        #expect(Set(classic.all("metric").map { $0.labels["probe"] ?? "" }) == ["errs", "sizes"])
        let dd = try #require(classic.all("metric").first { $0.labels["comm"] == "dd" }?.one("histogram"))
        let textDD = text.samples.filter { $0.name == "traceplane_probe_key_value_bucket" && $0.labels["comm"] == "dd" && $0.labels["le"] != "+Inf" }
        #expect(dd.all("bucket").count == textDD.count)
        #expect(dd.all("bucket").map { Double($0.scalar("cumulative_count") ?? "")! } == textDD.map { Double($0.value)! })
    }

    @Test("Wire primitives: varints, zigzag")
    func wire() {
        var bytes: [UInt8] = []
        ProtobufExpositionWriter.appendVarint(300, to: &bytes)
        #expect(bytes == [0xac, 0x02])
        bytes = []
        ProtobufExpositionWriter.appendVarint(UInt64.max, to: &bytes)
        #expect(bytes.count == 10 && bytes.last == 1)
        #expect(ProtobufExpositionWriter.zigzag(0) == 0 && ProtobufExpositionWriter.zigzag(-1) == 1 && ProtobufExpositionWriter.zigzag(1) == 2)
        #expect(ProtobufExpositionWriter.zigzag(Int64.min) == UInt64.max)
    }

    @Test("Accept: protobuf when Prometheus prefers it, text for everyone else")
    func negotiation() {
        let prometheus = "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.7,text/plain;version=0.0.4;q=0.3,*/*;q=0.2"
        #expect(PrometheusExporter.format(accept: prometheus) == .protobuf)
        #expect(PrometheusExporter.format(accept: nil) == .text)
        #expect(PrometheusExporter.format(accept: "*/*") == .text)
        #expect(PrometheusExporter.format(accept: "text/plain;version=0.0.4;q=0.5,*/*;q=0.1") == .text)
        #expect(PrometheusExporter.format(accept: "application/openmetrics-text;version=1.0.0,text/plain;q=0.5") == .text)
        // Not the delimited MetricFamily stream: not ours.
        #expect(PrometheusExporter.format(accept: "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=text") == .text)
        #expect(PrometheusExporter.format(accept: "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited") == .protobuf)
        #expect(PrometheusExporter.format(accept: "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=0.5,text/plain") == .text)
        #expect(PrometheusExporter.format(accept: "application/vnd.google.protobuf;proto=io.prometheus.client.MetricFamily;encoding=delimited;q=bad") == .text)
    }
}
