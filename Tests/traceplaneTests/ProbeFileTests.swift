import Foundation
import Testing
import TraceCore
@testable import traceplane

/// Probe files (`fleet apply -f`) carry `aggregate` and `filter.min_latency_ns` through the
/// same strict decoding as a request body, in YAML and in JSON.
@Suite("Probe files: aggregate")
struct ProbeFileTests {
    static let expected = AggregateSpec(by: ["comm", "arg:fd"], value: "ret",
                                        histogram: HistogramSpec(kind: "linear", min: 0, max: 4096, step: 256),
                                        maxKeys: 2048, byProcess: false)

    @Test("A YAML entry with an aggregate and a latency filter gives that spec")
    func yaml() throws {
        let specs = try ProbeFile.parse("""
            probes:
              - name: read-sizes
                target: {type: syscall, name: read}
                filter: {comm: nginx, min_latency_ns: 1000}
                aggregate:
                  by: [comm, "arg:fd"]
                  value: ret
                  histogram: {kind: linear, min: 0, max: 4096, step: 256}
                  max_keys: 2048
                  by_process: false
              - name: switches
                target: {type: tracepoint, name: "sched:sched_switch"}
                aggregate: {by: [cpu]}
            """, file: "probes.yaml")
        #expect(specs.map(\.aggregate) == [Self.expected, AggregateSpec(by: ["cpu"])])
        #expect(specs.first?.filter == ProbeFilter(comm: "nginx", minLatencyNs: 1000))
    }

    @Test("A JSON probe file reads the same")
    func json() throws {
        let specs = try ProbeFile.parse("""
            [{"name": "read-sizes", "target": {"type": "syscall", "name": "read"},
              "aggregate": {"by": ["comm", "arg:fd"], "value": "ret", "max_keys": 2048, "by_process": false,
                            "histogram": {"kind": "linear", "min": 0, "max": 4096, "step": 256}}}]
            """, file: "probes.json")
        #expect(specs.map(\.aggregate) == [Self.expected])
    }

    @Test("Wrong types and unknown members in aggregate are reported per entry, with the YAML hint for strings")
    func problems() {
        do {
            _ = try ProbeFile.parse("""
                - name: a
                  target: {type: syscall, name: read}
                  aggregate: {by_process: "no", max_keys: many, histogram: {kind: log2, buckets: 8}}
                - name: b
                  target: {type: syscall, name: read}
                  aggregate: {by: comm}
                  filter: {min_latency_ns: 1ms}
                """, file: "bad.yaml")
            Issue.record("bad.yaml was accepted")
        } catch {
            #expect(error.description == """
                probe file bad.yaml has 5 problems:
                  entry 1 (line 1, a): aggregate.by_process must be a boolean (true or false), not a string
                  entry 1 (line 1, a): aggregate.histogram.buckets is not a known field (known: kind, max, min, step)
                  entry 1 (line 1, a): aggregate.max_keys must be an integer, not a string
                  entry 2 (line 4, b): aggregate.by must be an array of strings, not a string
                  entry 2 (line 4, b): filter.min_latency_ns must be an integer, not a string
                """)
        }
    }
}
