import Foundation
import Testing
@testable import TraceAPI
@testable import TraceCore

@Suite("Key table series (traceplane_probe_key_*)")
struct KeySeriesTests {
    typealias Entry = KeyedAggregate.Entry

    /// Buckets holding `slots[i]` values in slot i of `histogram`.
    static func buckets(_ slots: [Int: UInt64], _ histogram: AggregatePlan.Histogram = .log2) -> [KeyedAggregate.Bucket] {
        slots.map { slot, count in
            let b = histogram.bounds(slot)
            return KeyedAggregate.Bucket(lower: b.lower, upper: b.upper, count: count)
        }.sorted { $0.lower < $1.lower }
    }

    static func entry(_ key: [KeyedAggregate.KeyValue], calls: UInt64, errors: UInt64 = 0, sum: Int64 = 0,
                      slots: [Int: UInt64] = [:], histogram: AggregatePlan.Histogram = .log2) -> Entry {
        let b = buckets(slots, histogram)
        return Entry(key: key, calls: calls, errors: errors, count: b.reduce(0) { $0 + $1.count }, sum: sum, buckets: b)
    }

    /// A probe on `syscall:read` (or a tracepoint) whose key table is `table`.
    static func probe(_ table: KeyedAggregate, name: String = "reads", tracepoint: Bool = false) -> MetricsSnapshot.ProbeSeries {
        var probe = tracepoint
            ? MetricsSnapshotTests.probe(name, target: "tracepoint:sched:sched_switch", mechanism: "raw_tracepoint", countsOnly: true)
            : MetricsSnapshotTests.probe(name)
        probe.metrics.aggregate = table
        return probe
    }

    static func render(_ probes: [MetricsSnapshot.ProbeSeries], maxSeries: Int = 500) throws -> (String, ParsedExposition) {
        try MetricsSnapshotTests.render(MetricsSnapshot(probes: probes, build: MetricsSnapshotTests.build, maxSeriesPerProbe: maxSeries))
    }

    /// The sample lines of the key families, in order.
    static func keyLines(_ text: String) -> [String] {
        text.split(separator: "\n").map(String.init).filter {
            $0.hasPrefix("traceplane_probe_key_") || $0.hasPrefix("traceplane_probe_dropped_keys_total")
        }
    }

    static let identity = #"probe="reads",target="syscall:read",mechanism="tp_btf""#

    @Test("A latency key table renders exactly: one label per key, le in seconds over the probe's slot range, cumulative counts")
    func latencyRendering() throws {
        let table = KeyedAggregate(by: ["comm", "arg:fd"], value: "latency", histogram: .log2, droppedKeys: 3, entries: [
            Self.entry([.string("nginx"), .signed(7)], calls: 10, errors: 2, sum: 400, slots: [3: 4, 5: 6]),
            Self.entry([.string("curl"), .signed(3)], calls: 5, sum: 100, slots: [4: 5]),
        ])
        let (text, parsed) = try Self.render([Self.probe(table)])
        let nginx = Self.identity + #",comm="nginx",arg_fd="7""#
        let curl = Self.identity + #",comm="curl",arg_fd="3""#
        #expect(Self.keyLines(text) == [
            "traceplane_probe_key_calls_total{\(nginx)} 10",
            "traceplane_probe_key_calls_total{\(curl)} 5",
            "traceplane_probe_key_errors_total{\(nginx)} 2",
            "traceplane_probe_key_errors_total{\(curl)} 0",
            #"traceplane_probe_key_value_bucket{\#(nginx),le="0.000000015"} 4"#,
            #"traceplane_probe_key_value_bucket{\#(nginx),le="0.000000031"} 4"#,
            #"traceplane_probe_key_value_bucket{\#(nginx),le="0.000000063"} 10"#,
            #"traceplane_probe_key_value_bucket{\#(nginx),le="+Inf"} 10"#,
            "traceplane_probe_key_value_sum{\(nginx)} 0.0000004",
            "traceplane_probe_key_value_count{\(nginx)} 10",
            #"traceplane_probe_key_value_bucket{\#(curl),le="0.000000015"} 0"#,
            #"traceplane_probe_key_value_bucket{\#(curl),le="0.000000031"} 5"#,
            #"traceplane_probe_key_value_bucket{\#(curl),le="0.000000063"} 5"#,
            #"traceplane_probe_key_value_bucket{\#(curl),le="+Inf"} 5"#,
            "traceplane_probe_key_value_sum{\(curl)} 0.0000001",
            "traceplane_probe_key_value_count{\(curl)} 5",
            "traceplane_probe_dropped_keys_total{\(Self.identity)} 3",
        ])
        #expect(parsed.family("traceplane_probe_key_calls_total")?.type == "counter")
        #expect(parsed.family("traceplane_probe_key_errors_total")?.type == "counter")
        #expect(parsed.family("traceplane_probe_key_value")?.type == "histogram")
        #expect(parsed.family("traceplane_probe_dropped_keys_total")?.type == "counter")
    }

    @Test("A raw value keeps its unit; the negative-values slot is le=\"-1\", below slot 0")
    func rawValueWithNegativeSlot() throws {
        let table = KeyedAggregate(by: ["errno"], value: "ret", histogram: .log2, droppedKeys: 0, entries: [
            Self.entry([.errno("ok")], calls: 4, sum: 13, slots: [0: 1, 2: 3]),
            Self.entry([.errno("EBADF")], calls: 3, errors: 3, sum: -27, slots: [64: 3]),
        ])
        let (_, parsed) = try Self.render([Self.probe(table)])
        let ok = parsed.samples("traceplane_probe_key_value_bucket", matching: ["errno": "ok"])
        #expect(ok.map { $0.labels["le"]! } == ["-1", "1", "3", "7", "+Inf"])
        #expect(ok.map(\.value) == ["0", "1", "1", "4", "4"])
        let bad = parsed.samples("traceplane_probe_key_value_bucket", matching: ["errno": "EBADF"])
        #expect(bad.map(\.value) == ["3", "3", "3", "3", "3"])
        #expect(parsed.samples("traceplane_probe_key_value_sum").map(\.value) == ["13", "-27"])
        #expect(parsed.samples("traceplane_probe_key_value_count").map(\.value) == ["4", "3"])
    }

    @Test("A linear histogram exports every slot: below min as min-1, and the slot at or above max only in +Inf")
    func linearSlots() throws {
        let linear = AggregatePlan.Histogram(linear: true, min: 0, step: 256, slots: 6)
        let table = KeyedAggregate(by: ["comm"], value: "arg:count", histogram: linear, droppedKeys: 0, entries: [
            Self.entry([.string("dd")], calls: 3, sum: 5_000, slots: [1: 1, 5: 2], histogram: linear),
        ])
        let (_, parsed) = try Self.render([Self.probe(table)])
        let buckets = parsed.samples("traceplane_probe_key_value_bucket")
        #expect(buckets.map { $0.labels["le"]! } == ["-1", "255", "511", "767", "1023", "+Inf"])
        #expect(buckets.map(\.value) == ["0", "1", "1", "1", "1", "3"])
        #expect(parsed.samples("traceplane_probe_key_value_sum").map(\.value) == ["5000"])
    }

    /// Keys p0…p9 with 100, 90, …, 10 calls, i errors, latencies in slots 10 and 11.
    static let tenKeys: KeyedAggregate = {
        var entries: [Entry] = []
        for i in 0..<10 {
            let calls = UInt64(100 - 10 * i), slots: [Int: UInt64] = [10: UInt64(i + 1), 11: 1]
            entries.append(Self.entry([.string("p\(i)")], calls: calls, errors: UInt64(i), sum: Int64(1_000 * (i + 1)), slots: slots))
        }
        return KeyedAggregate(by: ["comm"], value: "latency", histogram: .log2, droppedKeys: 0, entries: entries)
    }()

    @Test("Past the budget, the top keys are kept so that they and one other=\"true\" group fit, with exact sums")
    func foldPastBudget() throws {
        // A key: calls, errors, 2 finite buckets, +Inf, _sum, _count = 7 series; 21 fit 3 groups.
        #expect(KeySeries.seriesPerKey(bounds: 2, histogram: true, errors: true) == 7)
        let (text, parsed) = try Self.render([Self.probe(Self.tenKeys)], maxSeries: 21)
        #expect(Self.keyLines(text).filter { !$0.hasPrefix("traceplane_probe_dropped_keys_total") }.count == 21)
        let calls = parsed.samples("traceplane_probe_key_calls_total")
        #expect(calls.map { $0.labels["comm"]! } == ["p0", "p1", ""])
        #expect(calls.map(\.value) == ["100", "90", "360"])
        #expect(calls.map { $0.labels["other"] } == [nil, nil, "true"])
        let other = ["probe": "reads", "target": "syscall:read", "mechanism": "tp_btf", "comm": "", "other": "true"]
        #expect(calls.last?.labels == other)
        #expect(parsed.samples("traceplane_probe_key_errors_total", matching: other).map(\.value) == ["44"])
        // Folded keys p2…p9: slot 10 holds 3+4+…+10 = 52, slot 11 holds 8.
        let buckets = parsed.samples("traceplane_probe_key_value_bucket", matching: other)
        #expect(buckets.map { $0.labels["le"]! } == ["0.000002047", "0.000004095", "+Inf"])
        #expect(buckets.map(\.value) == ["52", "60", "60"])
        #expect(parsed.samples("traceplane_probe_key_value_sum", matching: other).map(\.value) == ["0.000052"])
        #expect(parsed.samples("traceplane_probe_key_value_count", matching: other).map(\.value) == ["60"])
        // The kept keys are untouched.
        #expect(parsed.samples("traceplane_probe_key_value_bucket", matching: ["comm": "p1"]).map(\.value) == ["2", "3", "3"])
    }

    @Test("The number of kept keys follows the budget; when every key fits there is no fold",
          arguments: [(27, 2, true), (28, 3, true), (69, 8, true), (70, 10, false), (1_000, 10, false)])
    func keptKeys(budget: Int, kept: Int, folded: Bool) throws {
        let (_, parsed) = try Self.render([Self.probe(Self.tenKeys)], maxSeries: budget)
        let calls = parsed.samples("traceplane_probe_key_calls_total")
        #expect(calls.filter { $0.labels["other"] == nil }.map { $0.labels["comm"]! } == (0..<kept).map { "p\($0)" })
        #expect(calls.contains { $0.labels["other"] == "true" } == folded)
        #expect(calls.map { UInt64($0.value)! }.reduce(0, +) == 550, "the series add up to the whole table")
    }

    @Test("A budget below one group still exports one: the fold of every key, or a probe's only key as it is")
    func budgetBelowOneGroup() throws {
        let (_, parsed) = try Self.render([Self.probe(Self.tenKeys)], maxSeries: 5)
        #expect(parsed.samples("traceplane_probe_key_calls_total").map(\.labels) == [
            ["probe": "reads", "target": "syscall:read", "mechanism": "tp_btf", "comm": "", "other": "true"],
        ])
        let unkeyed = KeyedAggregate(by: [], value: "ret", histogram: .log2, droppedKeys: 0, entries: [
            Self.entry([], calls: 9, sum: 90, slots: [1: 2, 3: 3, 5: 4]),
        ])
        let (text, single) = try Self.render([Self.probe(unkeyed)], maxSeries: 1)
        #expect(single.samples("traceplane_probe_key_calls_total").map(\.labels) == [
            ["probe": "reads", "target": "syscall:read", "mechanism": "tp_btf"],
        ])
        #expect(text.contains(#"traceplane_probe_key_value_bucket{\#(Self.identity),le="63"} 9"#))
    }

    @Test("A tracepoint key table has calls only, and no errors: a key of value none costs 1 series")
    func tracepointCounts() throws {
        let table = KeyedAggregate(by: ["cpu"], value: "none", histogram: nil, droppedKeys: 0,
                                   entries: (0..<5).map { Self.entry([.unsigned(UInt64($0))], calls: UInt64(50 - $0)) })
        let (text, parsed) = try Self.render([Self.probe(table, name: "switches", tracepoint: true)], maxSeries: 3)
        #expect(parsed.samples("traceplane_probe_key_calls_total").map { "\($0.labels["cpu"]!)=\($0.value)" } == ["0=50", "1=49", "=141"])
        #expect(parsed.samples("traceplane_probe_key_errors_total").isEmpty)
        #expect(!text.contains("traceplane_probe_key_value_"))
        #expect(parsed.samples("traceplane_probe_dropped_keys_total").map(\.value) == ["0"])
    }

    @Test("A key string with a double quote, a backslash and a newline is escaped and reads back unchanged")
    func keyEscaping() throws {
        let hostile = "a\"b\\c\nd"
        let table = KeyedAggregate(by: ["arg:filename"], value: "none", histogram: nil, droppedKeys: 0, entries: [
            Self.entry([.string(hostile)], calls: 1),
        ])
        let (text, parsed) = try Self.render([Self.probe(table)])
        #expect(Self.keyLines(text).first == #"traceplane_probe_key_calls_total{\#(Self.identity),arg_filename="a\"b\\c\nd"} 1"#)
        #expect(parsed.samples("traceplane_probe_key_calls_total").first?.labels["arg_filename"] == hostile)
    }

    @Test("Keys whose labels read the same (lossily decoded bytes) are one series, never two with the same labels")
    func equalLabelsMerge() throws {
        let table = KeyedAggregate(by: ["comm"], value: "ret", histogram: .log2, droppedKeys: 0, entries: [
            Self.entry([.string("x")], calls: 4, sum: 4, slots: [1: 4]),
            Self.entry([.string("\u{FFFD}")], calls: 3, sum: 3, slots: [0: 3]),
            Self.entry([.string("\u{FFFD}")], calls: 2, sum: 8, slots: [2: 2]),
        ])
        let (_, parsed) = try Self.render([Self.probe(table)])
        #expect(parsed.samples("traceplane_probe_key_calls_total").map { "\($0.labels["comm"]!)=\($0.value)" } == ["\u{FFFD}=5", "x=4"])
        #expect(parsed.samples("traceplane_probe_key_value_bucket", matching: ["comm": "\u{FFFD}"]).map(\.value) == ["3", "3", "5", "5"])
        #expect(parsed.samples("traceplane_probe_key_value_sum", matching: ["comm": "\u{FFFD}"]).map(\.value) == ["11"])
    }

    @Test("A key name becomes a label name with every character outside [a-zA-Z0-9_] as _",
          arguments: [("arg:fd", "arg_fd"), ("field:prev_state", "field_prev_state"), ("comm", "comm"), ("arg0", "arg0"), ("cgroup", "cgroup")])
    func labelNames(key: String, label: String) {
        #expect(KeySeries.labelName(key) == label)
        #expect(ExpositionWriter.isLabelName(label))
    }

    @Test("promtool check metrics accepts key tables of every shape: folded, negative slots, hostile strings, linear, counts only")
    func promtoolAccepts() throws {
        guard let promtool = ["/usr/bin/promtool", "/usr/local/bin/promtool"].first(where: FileManager.default.isExecutableFile) else {
            Issue.record("promtool is not installed: install the Debian package `prometheus` (scripts/install-deps.sh lists it)")
            return
        }
        let linear = AggregatePlan.Histogram(linear: true, min: -512, step: 256, slots: 6)
        let raw = KeyedAggregate(by: ["errno", "arg:fd"], value: "ret", histogram: .log2, droppedKeys: 2, entries: [
            Self.entry([.errno("ok"), .signed(3)], calls: 4, sum: 13, slots: [0: 1, 2: 3]),
            Self.entry([.errno("EBADF"), .signed(-1)], calls: 3, errors: 3, sum: -27, slots: [64: 3]),
            Self.entry([.string("a\"b\\c\nd\u{FFFD}"), .signed(9)], calls: 2, sum: .max, slots: [62: 2]),
        ])
        let counted = KeyedAggregate(by: ["field:prev_state"], value: "none", histogram: nil, droppedKeys: 0,
                                     entries: (0..<5).map { Self.entry([.unsigned(UInt64($0))], calls: UInt64(50 - $0)) })
        let probes = [
            Self.probe(Self.tenKeys, name: "latency"), Self.probe(raw, name: "raw"),
            Self.probe(KeyedAggregate(by: ["comm"], value: "arg:count", histogram: linear, droppedKeys: 0, entries: [
                Self.entry([.string("dd")], calls: 3, sum: 5_000, slots: [0: 1, 5: 2], histogram: linear),
            ]), name: "linear"),
            Self.probe(counted, name: "switches", tracepoint: true),
        ]
        var writer = ExpositionWriter()
        MetricsSnapshot(probes: probes, build: MetricsSnapshotTests.build, maxSeriesPerProbe: 21).render(into: &writer, scrapeStarted: .now)
        #expect(Self.keyLines(String(decoding: writer.bytes, as: UTF8.self)).contains { $0.contains(#"other="true""#) })

        let process = Process()
        process.executableURL = URL(fileURLWithPath: promtool)
        process.arguments = ["check", "metrics"]
        let input = Pipe(), output = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = output
        try process.run()
        input.fileHandleForWriting.write(Data(writer.bytes))
        try input.fileHandleForWriting.close()
        let report = String(decoding: output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus == 0 && report.isEmpty, "promtool check metrics: exit \(process.terminationStatus)\n\(report)")
    }

    @Test("Probes without a key table have no key series; the key families still have HELP and TYPE")
    func unkeyedProbe() throws {
        let (text, parsed) = try MetricsSnapshotTests.render(MetricsSnapshot(probes: [MetricsSnapshotTests.probe("plain", calls: 3)],
                                                                              build: MetricsSnapshotTests.build))
        #expect(Self.keyLines(text).isEmpty)
        for family in ["traceplane_probe_key_calls_total", "traceplane_probe_key_errors_total", "traceplane_probe_key_value",
                       "traceplane_probe_dropped_keys_total"] {
            #expect(parsed.family(family) != nil, "\(family) has no HELP and TYPE")
        }
    }

    @Test("A cgroup key carries container_id and pod_uid, and each kept cgroup gets one traceplane_cgroup_info series")
    func cgroupLabels() throws {
        let uid = "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f", id = String(repeating: "a1", count: 32)
        let pod = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uid.replacingOccurrences(of: "-", with: "_")).slice/cri-containerd-\(id).scope"
        let service = "/system.slice/nginx.service"
        let table = KeyedAggregate(by: ["cgroup"], value: "none", histogram: nil, droppedKeys: 0, entries: [
            Self.entry([.cgroup(id: 7, path: pod, container: CgroupIdentity.parse(pod), removed: false)], calls: 30),
            Self.entry([.cgroup(id: 8, path: service, container: CgroupIdentity.parse(service), removed: true)], calls: 20),
            Self.entry([.cgroup(id: 9, path: nil, container: nil, removed: false)], calls: 10),
        ])
        let (text, _) = try Self.render([Self.probe(table)])
        #expect(Self.keyLines(text).prefix(3) == [
            "traceplane_probe_key_calls_total{\(Self.identity),cgroup=\"\(pod)\",container_id=\"\(id)\",pod_uid=\"\(uid)\"} 30",
            "traceplane_probe_key_calls_total{\(Self.identity),cgroup=\"\(service)\",container_id=\"\",pod_uid=\"\"} 20",
            "traceplane_probe_key_calls_total{\(Self.identity),cgroup=\"cgroup-id:9\",container_id=\"\",pod_uid=\"\"} 10",
        ])
        let info = text.split(separator: "\n").filter { $0.hasPrefix("traceplane_cgroup_info{") }
        #expect(info == [
            "traceplane_cgroup_info{cgroup=\"\(pod)\",container_id=\"\(id)\",pod_uid=\"\(uid)\",qos=\"burstable\",runtime=\"containerd\",unit=\"cri-containerd-\(id).scope\"} 1",
            "traceplane_cgroup_info{cgroup=\"\(service)\",container_id=\"\",pod_uid=\"\",qos=\"\",runtime=\"\",unit=\"nginx.service\"} 1",
        ])
    }
}
