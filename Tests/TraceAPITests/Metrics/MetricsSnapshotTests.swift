import Foundation
import Testing
@testable import TraceAPI
@testable import TraceCore

@Suite("Agent metrics exposition (MetricsSnapshot.render)")
struct MetricsSnapshotTests {
    static let build = BuildInfo(version: "1.2.3", libbpfVersion: "1.1", swiftVersion: "6.3")

    /// A probe whose kernel histogram holds `slots[i]` calls in log2 slot i.
    static func probe(_ name: String, target: String = "syscall:read", mechanism: String = "tp_btf",
                      slots: [Int: UInt64] = [:], sumNanoseconds: UInt64 = 0, calls: UInt64 = 0, errors: UInt64 = 0,
                      countsOnly: Bool = false, runTime: UInt64 = 0, runCount: UInt64 = 0,
                      labels: [String: String] = [:]) -> MetricsSnapshot.ProbeSeries {
        var counters = ProbeCounters()
        counters.calls = calls
        counters.errors = errors
        counters.buckets = slots.sorted { $0.key < $1.key }.map { slot, count in
            let b = ProbeCounters.bounds(slot: slot)
            return .init(lower: b.lower, upper: b.upper, count: count)
        }
        counters.latencyCount = counters.buckets.reduce(0) { $0 + $1.count }
        counters.latencySumNanoseconds = sumNanoseconds
        counters.runTimeNanoseconds = runTime
        counters.runCount = runCount
        let metrics = ProbeMetrics(name: name, mechanism: Flavour(rawValue: mechanism)!, target: target, since: Date(timeIntervalSince1970: 0),
                                   counters: counters, countsOnly: countsOnly)
        return .init(metrics: metrics, userLabels: labels)
    }

    static func render(_ snapshot: MetricsSnapshot) throws -> (String, ParsedExposition) {
        var writer = ExpositionWriter()
        snapshot.render(into: &writer, scrapeStarted: .now)
        let text = String(decoding: writer.bytes, as: UTF8.self)
        return (text, try ParsedExposition(text))
    }

    static let bucketName = "traceplane_probe_latency_seconds_bucket"

    @Test("Histogram buckets are cumulative and never decrease; +Inf equals _count equals the kernel's total")
    func histogramIsCumulative() throws {
        let slots: [Int: UInt64] = [6: 5, 7: 100, 8: 40, 12: 3, 20: 1]
        let (_, parsed) = try Self.render(MetricsSnapshot(probes: [Self.probe("read-lat", slots: slots, sumNanoseconds: 123_456_789)], build: Self.build))
        let buckets = parsed.samples(Self.bucketName, matching: ["probe": "read-lat"])
        let values = buckets.map { UInt64($0.value)! }
        #expect(values == values.sorted(), "cumulative buckets must not decrease")
        let infinity = try #require(buckets.last)
        #expect(infinity.labels["le"] == "+Inf")
        #expect(infinity.value == "149")
        #expect(parsed.samples("traceplane_probe_latency_seconds_count").map(\.value) == ["149"])
        // Each finite bucket counts every call whose slot upper bound is at most le.
        for sample in buckets.dropLast() {
            let text = try #require(sample.labels["le"])
            let le = try #require(Double(text))
            let expected = slots.filter { Double(ProbeCounters.bounds(slot: $0.key).upper) / 1e9 <= le * (1 + 1e-12) }.values.reduce(0, +)
            #expect(UInt64(sample.value) == expected, "le=\(le)")
        }
        #expect(buckets.first { $0.labels["le"] == "0.000000127" }?.value == "5")   // slot 6: [64, 127] ns
        #expect(buckets.first { $0.labels["le"] == "0.000000255" }?.value == "105") // slot 7: [128, 255] ns
    }

    @Test("_sum is in seconds, exact to the nanosecond")
    func sumInSeconds() throws {
        let (_, parsed) = try Self.render(MetricsSnapshot(probes: [Self.probe("p", slots: [30: 2], sumNanoseconds: 2_147_483_649)], build: Self.build))
        #expect(parsed.samples("traceplane_probe_latency_seconds_sum").map(\.value) == ["2.147483649"])
    }

    @Test("Every latency probe exposes the same fixed, strictly increasing le set, full or empty")
    func fixedBucketSet() throws {
        let (_, parsed) = try Self.render(MetricsSnapshot(probes: [
            Self.probe("empty"), Self.probe("full", slots: Dictionary(uniqueKeysWithValues: (0..<64).map { ($0, UInt64(1)) })),
        ], build: Self.build))
        let empty = parsed.samples(Self.bucketName, matching: ["probe": "empty"]).map { $0.labels["le"]! }
        let full = parsed.samples(Self.bucketName, matching: ["probe": "full"]).map { $0.labels["le"]! }
        #expect(empty == full)
        #expect(empty.count == MetricsSnapshot.latencyBucketSlots + 1)
        #expect(empty.first == "0.000000001")
        #expect(empty.dropLast().last == "68.719476735")
        #expect(empty.last == "+Inf")
        let bounds = empty.dropLast().map { Double($0)! }
        #expect(zip(bounds, bounds.dropFirst()).allSatisfy { $0 < $1 })
        // Slots past the last exposed bound count only in +Inf.
        let fullValues = parsed.samples(Self.bucketName, matching: ["probe": "full"]).map(\.value)
        #expect(fullValues.dropLast().last == "36")
        #expect(fullValues.last == "64")
        #expect(parsed.samples("traceplane_probe_latency_seconds_count", matching: ["probe": "full"]).first?.value == "64")
    }

    @Test("A tracepoint probe has calls and BPF run time, and neither a latency histogram nor errors")
    func tracepointProbe() throws {
        let tracepoint = Self.probe("switches", target: "tracepoint:sched:sched_switch", mechanism: "raw_tracepoint",
                                    calls: 77, countsOnly: true, runTime: 1_234_567, runCount: 77)
        let (_, parsed) = try Self.render(MetricsSnapshot(probes: [tracepoint], build: Self.build))
        let identity = ["probe": "switches", "target": "tracepoint:sched:sched_switch", "mechanism": "raw_tracepoint"]
        #expect(parsed.samples("traceplane_probe_calls_total") == [.init(name: "traceplane_probe_calls_total", labels: identity, value: "77")])
        #expect(parsed.samples("traceplane_probe_bpf_run_seconds_total").map(\.value) == ["0.001234567"])
        #expect(parsed.samples("traceplane_probe_bpf_runs_total").map(\.value) == ["77"])
        #expect(parsed.samples(Self.bucketName).isEmpty)
        #expect(parsed.samples("traceplane_probe_latency_seconds_count").isEmpty)
        #expect(parsed.samples("traceplane_probe_errors_total").isEmpty)
        #expect(parsed.family("traceplane_probe_latency_seconds")?.type == "histogram")
    }

    @Test("User labels appear only on probe_info, as label_<key>, and cannot collide with probe, target or mechanism")
    func userLabelsOnlyOnInfo() throws {
        let hostile = "x\"} 1\nevil 1\\"
        let probe = Self.probe("labelled", calls: 3, errors: 1,
                               labels: ["probe": "spoof", "target": "spoof", "mechanism": hostile, "owner": "ctrl-1"])
        let (text, parsed) = try Self.render(MetricsSnapshot(probes: [probe], build: Self.build))
        #expect(parsed.samples("traceplane_probe_info") == [.init(name: "traceplane_probe_info", labels: [
            "probe": "labelled", "target": "syscall:read", "mechanism": "tp_btf",
            "label_probe": "spoof", "label_target": "spoof", "label_mechanism": hostile, "label_owner": "ctrl-1",
        ], value: "1")])
        for sample in parsed.samples where sample.name != "traceplane_probe_info" {
            #expect(!sample.labels.keys.contains { $0.hasPrefix("label_") }, "\(sample.name) carries user labels")
        }
        #expect(parsed.samples("traceplane_probe_errors_total").map(\.value) == ["1"])
        #expect(!text.contains("\nevil"))
    }

    @Test("Every family has HELP and TYPE, names are prefixed, and scrape duration comes last")
    func familiesAndAgentSeries() throws {
        let snapshot = MetricsSnapshot(
            probes: [Self.probe("a", slots: [9: 1], calls: 1)],
            probesByState: [("active", 1)],
            capabilities: [("fentry", false), ("tp_btf", true), ("ring_buffer", true)],
            attachAttempts: [("fentry", "denied", 2), ("tp_btf", "attached", 2)],
            httpRequests: HTTPRequestCounts(counts: [.init(method: "GET", status: 200): 5, .init(method: "POST", status: 422): 1]),
            process: ProcessStats(residentMemoryBytes: 12_345_678, openFileDescriptors: 17),
            build: Self.build)
        let (_, parsed) = try Self.render(snapshot)
        #expect(parsed.families.map(\.name) == [
            "traceplane_probe_info", "traceplane_probe_calls_total", "traceplane_probe_errors_total",
            "traceplane_probe_latency_seconds", "traceplane_probe_bpf_run_seconds_total", "traceplane_probe_bpf_runs_total",
            "traceplane_probe_key_calls_total", "traceplane_probe_key_errors_total", "traceplane_probe_key_value",
            "traceplane_probe_dropped_keys_total", "traceplane_probe_stacks_lost_total",
            "traceplane_probe_events_total", "traceplane_probe_events_throttled_total", "traceplane_probe_events_lost_total",
            "traceplane_probe_events_missed_total", "traceplane_probe_event_subscribers", "traceplane_cgroup_info",
            "traceplane_probe_budget_state", "traceplane_probe_budget_transitions_total", "traceplane_probe_sample_every",
            "traceplane_probe_cost_cpu_ratio", "traceplane_probes", "traceplane_capability_supported", "traceplane_attach_attempts_total",
            "traceplane_http_requests_total", "traceplane_process_resident_memory_bytes", "traceplane_process_open_fds",
            "traceplane_process_cpu_seconds_total", "traceplane_build_info", "traceplane_scrape_duration_seconds",
        ])
        #expect(parsed.families.allSatisfy { !$0.help.isEmpty })
        #expect(parsed.samples("traceplane_probes") == [.init(name: "traceplane_probes", labels: ["state": "active"], value: "1")])
        #expect(parsed.samples("traceplane_capability_supported").map { "\($0.labels["capability"]!)=\($0.value)" } ==
                ["fentry=0", "tp_btf=1", "ring_buffer=1"])
        #expect(parsed.samples("traceplane_attach_attempts_total", matching: ["mechanism": "fentry", "outcome": "denied"]).first?.value == "2")
        #expect(parsed.samples("traceplane_http_requests_total", matching: ["method": "POST", "code": "422"]).first?.value == "1")
        #expect(parsed.samples("traceplane_process_resident_memory_bytes").first?.value == "12345678")
        #expect(parsed.samples("traceplane_process_open_fds").first?.value == "17")
        #expect(parsed.samples("traceplane_build_info") == [.init(name: "traceplane_build_info",
            labels: ["version": "1.2.3", "libbpf_version": "1.1", "swift_version": "6.3"], value: "1")])
        let duration = try #require(parsed.samples("traceplane_scrape_duration_seconds").first.flatMap { Double($0.value) })
        #expect(duration >= 0 && duration < 1)
        #expect(parsed.samples.last?.name == "traceplane_scrape_duration_seconds")
    }

    @Test("With no probes and no capability report yet, families still have HELP and TYPE and the output parses")
    func emptyAgent() throws {
        let (text, parsed) = try Self.render(MetricsSnapshot(probesByState: [("active", 0)], build: Self.build))
        #expect(parsed.family("traceplane_probe_latency_seconds") != nil)
        #expect(parsed.samples("traceplane_probe_calls_total").isEmpty)
        #expect(parsed.samples("traceplane_probes").first?.value == "0")
        #expect(parsed.samples("traceplane_process_open_fds").isEmpty, "an unreadable figure is left out, not faked")
        #expect(text.hasSuffix("\n"))
    }

    @Test("ProcessStats reads this process's resident memory and open fds from /proc/self")
    func processStats() throws {
        let stats = ProcessStats.current()
        let rss = try #require(stats.residentMemoryBytes)
        #expect(rss > 1_000_000)
        // Other suites run in parallel and open and close fds (pipes of child processes,
        // files of the symbolizer tests): compare a reading with listings on either side of
        // it that agree, trying again while they do not.
        var fds = 0, listed = 0
        for _ in 0..<50 {
            let before = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
            fds = Int(try #require(ProcessStats.current().openFileDescriptors))
            listed = try FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd").count
            if before == listed { break }
            usleep(10_000)
        }
        // The listing opened one fd of its own; ours excluded the one used for reading.
        #expect(fds >= 3 && abs(fds - (listed - 1)) <= 2)
    }
}
