import ArgumentParser
import Foundation
import Testing
import TraceAPI
import TraceCore
@testable import traceplane

/// `traceplane probe add` and `probe show` as far as they go without an agent: the spec a
/// command line builds, the errors it gets before anything is sent, the request path.
@Suite("probe add / probe show: flags")
struct ProbeCommandTests {
    func add(_ arguments: [String]) throws -> ProbeSpec {
        try ProbeCommand.Add.parse(["nginx-reads", "syscall:read"] + arguments).spec()
    }

    /// What the user sees for a command line that fails, parse or spec.
    func failure(_ arguments: [String]) -> String {
        do {
            let spec = try add(arguments)
            Issue.record("accepted \(arguments): \(spec)")
            return ""
        } catch {
            return ProbeCommand.Add.message(for: error)
        }
    }

    @Test("Every key and value flag lands in the spec's aggregate and filter")
    func everyFlag() throws {
        let spec = try add(["--by", "comm,arg:fd", "--value", "ret", "--histogram", "linear:-4096:4096:256", "--max-keys", "2048",
                            "--no-by-process", "--min-latency", "1ms", "--comm", "nginx"])
        #expect(spec == ProbeSpec(name: "nginx-reads", target: ProbeTarget(type: .syscall, name: "read"),
                                  filter: ProbeFilter(comm: "nginx", minLatencyNs: 1_000_000),
                                  aggregate: AggregateSpec(by: ["comm", "arg:fd"], value: "ret",
                                                           histogram: HistogramSpec(kind: "linear", min: -4096, max: 4096, step: 256),
                                                           maxKeys: 2048, byProcess: false)))
        // What is sent is what the agent's strict decoder reads back.
        let decoded = try SpecDecoder.decode(Array(try JSONEncoder().encode(spec)))
        #expect(decoded.aggregate == spec.aggregate && decoded.filter == spec.filter)
    }

    @Test("--cgroup, --container-id and --pod-uid land in the filter as given")
    func cgroupFlags() throws {
        #expect(try add(["--cgroup", "/system.slice/nginx.service"]).filter == ProbeFilter(cgroup: "/system.slice/nginx.service"))
        #expect(try add(["--container-id", "abcdefabcdef"]).filter == ProbeFilter(containerID: "abcdefabcdef"))
        let uid = "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"
        let spec = try add(["--pod-uid", uid, "--by", "cgroup"])
        #expect(spec.filter == ProbeFilter(podUID: uid))
        let decoded = try SpecDecoder.decode(Array(try JSONEncoder().encode(spec)))
        #expect(decoded.filter == spec.filter)
    }

    @Test("Without those flags the spec is today's: no aggregate, no filter, nothing new in the JSON")
    func noFlags() throws {
        let spec = try add(["--pid", "42"])
        #expect(spec.aggregate == nil && spec.filter == ProbeFilter(pid: 42))
        let json = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
        #expect(!json.contains("aggregate") && !json.contains("min_latency_ns"))
        #expect(try add([]).filter == nil)
    }

    @Test("Any one of them makes an aggregate; the others stay null for the agent's defaults")
    func oneFlagEach() throws {
        #expect(try add(["--by", "cgroup"]).aggregate == AggregateSpec(by: ["cgroup"]))
        #expect(try add(["--value", "none"]).aggregate == AggregateSpec(value: "none"))
        #expect(try add(["--histogram", "log2"]).aggregate == AggregateSpec(histogram: HistogramSpec(kind: "log2")))
        #expect(try add(["--max-keys", "16"]).aggregate == AggregateSpec(maxKeys: 16))
        #expect(try add(["--no-by-process"]).aggregate == AggregateSpec(byProcess: false))
        #expect(try add(["--min-latency", "500us"]).aggregate == nil)
    }

    @Test("--by: commas separate keys, spaces around them go, the empty string is no key, an empty key is an error")
    func byList() throws {
        #expect(try add(["--by", " comm , pid,arg0 "]).aggregate?.by == ["comm", "pid", "arg0"])
        #expect(try add(["--by", ""]).aggregate?.by == [])
        // More than three keys is the agent's to refuse (a field error naming aggregate.by).
        #expect(try add(["--by", "pid,tid,comm,cpu"]).aggregate?.by == ["pid", "tid", "comm", "cpu"])
        #expect(failure(["--by", "comm,,pid"]) == "invalid --by 'comm,,pid': an empty key; write keys separated by commas, e.g. comm,arg:fd")
        #expect(failure(["--by", "comm,"]).hasPrefix("invalid --by 'comm,': an empty key"))
    }

    @Test("--histogram: log2, or linear with three 64-bit integers", arguments: [
        ("log2", HistogramSpec(kind: "log2")),
        ("linear:0:4096:256", HistogramSpec(kind: "linear", min: 0, max: 4096, step: 256)),
        ("linear:-9223372036854775808:9223372036854775807:1", HistogramSpec(kind: "linear", min: .min, max: .max, step: 1)),
        // Bounds are the agent's to check (max > min, at most 512 buckets).
        ("linear:10:0:0", HistogramSpec(kind: "linear", min: 10, max: 0, step: 0)),
    ])
    func histogram(text: String, expected: HistogramSpec) throws {
        #expect(try add(["--histogram", text]).aggregate?.histogram == expected)
    }

    @Test("--histogram: anything else says what to write", arguments: ["linear", "linear:0:4096", "linear:0:4096:256:1", "linear:a:b:c",
                                                                       "linear:0:9223372036854775808:1", "cubic", "LOG2", "log2:1"])
    func badHistogram(text: String) {
        #expect(failure(["--histogram", text]) == "invalid --histogram '\(text)': use log2 or linear:MIN:MAX:STEP with integers, e.g. linear:0:4096:256")
    }

    @Test("--min-latency: a decimal number of ns, us (µs), ms or s, to the exact nanosecond", arguments: [
        ("200ns", 200), ("500us", 500_000), ("500µs", 500_000), ("1ms", 1_000_000), ("1.5s", 1_500_000_000),
        ("1.1ms", 1_100_000), ("0.000000001s", 1), ("2.50us", 2_500), ("0", 0), ("0ns", 0), ("9223372036854775807ns", Int.max),
    ])
    func minLatency(text: String, nanoseconds: Int) throws {
        #expect(try add(["--min-latency", text]).filter?.minLatencyNs == nanoseconds)
    }

    @Test("--min-latency: no unit, not a number, below a nanosecond or beyond 64 bits is refused", arguments: [
        ("1", "no unit"), ("5m", "no unit"), ("ms", "not a number of ms"), ("-1ms", "not a number of ms"), ("1e3ns", "not a number of ns"),
        ("1.ms", "not a number of ms"), (".5ms", "not a number of ms"), ("1.5ns", "finer than a nanosecond"),
        ("0.0000000015s", "finer than a nanosecond"), ("9223372036854775808ns", "too large"), ("9223372037s", "too large"),
    ])
    func badMinLatency(text: String, why: String) {
        #expect(failure(["--min-latency=\(text)"]) == "invalid --min-latency '\(text)': \(why); use e.g. 200ns, 500us, 1ms, 1.5s")
    }

    @Test("probe show asks for ?top=N, 10 unless told, from 1 to 65536")
    func showTop() throws {
        #expect(try ProbeCommand.Show.parse(["reads"]).path == "/v1/probes/reads/metrics?top=10")
        #expect(try ProbeCommand.Show.parse(["reads", "--top", "65536"]).path == "/v1/probes/reads/metrics?top=65536")
        for bad in ["0", "65537", "-1"] {
            #expect(throws: (any Error).self) { try ProbeCommand.Show.parse(["reads", "--top", bad]) }
        }
        do {
            _ = try ProbeCommand.Show.parse(["reads", "--top", "0"])
        } catch {
            #expect(ProbeCommand.Show.message(for: error) == "--top must be from 1 to 65536, not 0")
        }
    }

    @Test("probe stacks asks for folded lines unless told, the JSON tree with --json, the SVG with --svg (which wins over --json)")
    func stacksPath() throws {
        #expect(try ProbeCommand.Stacks.parse(["prof"]).path == "/v1/probes/prof/stacks?format=folded")
        #expect(try ProbeCommand.Stacks.parse(["prof", "--json"]).path == "/v1/probes/prof/stacks?format=json")
        let svg = try ProbeCommand.Stacks.parse(["prof", "--svg", "/tmp/out.svg"])
        #expect(svg.path == "/v1/probes/prof/stacks?format=svg")
        #expect(svg.svg == "/tmp/out.svg")
        #expect(try ProbeCommand.Stacks.parse(["prof", "--svg", "out.svg", "--json"]).path == "/v1/probes/prof/stacks?format=svg")
        #expect(try ProbeCommand.Stacks.parse(["prof", "--agent", "http://10.0.0.1:9480"]).connection.agent == "http://10.0.0.1:9480")
        #expect(throws: (any Error).self) { try ProbeCommand.Stacks.parse([]) }
        #expect(throws: (any Error).self) { try ProbeCommand.Stacks.parse(["prof", "--svg"]) }
    }

    @Test("A target of profile samples at the agent's default rate; profile:HZ asks for HZ")
    func profileTargets() throws {
        #expect(try TargetParser.parse("profile") == ProbeTarget(type: .profile))
        #expect(try TargetParser.parse("profile").frequency == ProbeTarget.defaultFrequencyHz)
        #expect(try TargetParser.parse("profile:250") == ProbeTarget(type: .profile, frequencyHz: 250))
        #expect(try TargetParser.parse("profile:250").label == "profile:250hz")
        // What is sent is what the agent's strict decoder reads back, and valid.
        let spec = ProbeSpec(name: "prof", target: try TargetParser.parse("profile:250"))
        let json = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
        #expect(json.contains(#""frequency_hz":250"#))
        let decoded = try SpecDecoder.decode(Array(json.utf8))
        #expect(decoded.target == spec.target && decoded.validate().isEmpty)
        #expect(!String(decoding: try JSONEncoder().encode(ProbeTarget(type: .profile)), as: UTF8.self).contains("frequency_hz"))
        // Out of range is the agent's to refuse (a field error naming target.frequency_hz).
        #expect(try TargetParser.parse("profile:5000").frequencyHz == 5000)
        #expect(try add(["--by", "kstack,ustack"]).aggregate?.by == ["kstack", "ustack"])
        #expect(try ProbeCommand.Add.parse(["prof", "profile:250"]).spec().target == ProbeTarget(type: .profile, frequencyHz: 250))
        let trace = try Trace.parse(["profile:250", "--duration", "2s", "--by", "comm,kstack", "--svg", "out.svg", "--folded"])
        #expect(try TargetParser.parse(trace.target) == ProbeTarget(type: .profile, frequencyHz: 250))
        #expect(trace.by == "comm,kstack" && trace.svg == "out.svg" && trace.folded)
    }

    @Test("profile: with anything but a number of Hz says what to write", arguments: ["profile:", "profile:fast", "profile:99hz", "profile:1.5", "profile:99:1"])
    func badProfileTargets(text: String) {
        #expect {
            try TargetParser.parse(text)
        } throws: { error in
            "\(error)".contains("invalid target '\(text)': use profile or profile:HZ, e.g. profile:99")
        }
    }

    @Test("An unknown target type names every form, profile included")
    func unknownTargetType() {
        #expect {
            try TargetParser.parse("cpu:99")
        } throws: { error in
            "\(error)" == "invalid target 'cpu:99': use syscall:NAME, function:NAME, tracepoint:CATEGORY:EVENT, uprobe:/PATH:SYMBOL or profile[:HZ]"
        }
    }

    @Test("The client keeps a query as a query, under the agent's base URL")
    func queryInURL() throws {
        let base = try #require(URL(string: "http://127.0.0.1:9480"))
        #expect(AgentClient.url(base, "/v1/probes/reads/metrics?top=5").absoluteString == "http://127.0.0.1:9480/v1/probes/reads/metrics?top=5")
        #expect(AgentClient.url(base, "/v1/probes").absoluteString == "http://127.0.0.1:9480/v1/probes")
        let prefixed = try #require(URL(string: "https://gw.example:8443/agents/a1/"))
        #expect(AgentClient.url(prefixed, "/v1/probes/r/metrics?top=1").absoluteString == "https://gw.example:8443/agents/a1/v1/probes/r/metrics?top=1")
    }
}
