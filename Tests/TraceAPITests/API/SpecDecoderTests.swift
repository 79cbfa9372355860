import Foundation
import Testing
@testable import TraceAPI
import TraceCore
import TraceCoreTestSupport

/// `SpecDecoder.decode` for the `aggregate` and `filter.min_latency_ns` members: JSON types
/// are checked here, limits and names later by `AggregatePlan.resolve`.
@Suite("SpecDecoder: aggregate and filter.min_latency_ns")
struct SpecDecoderTests {
    static let target = #""target":{"type":"syscall","name":"read"}"#

    func decode(_ members: String) throws(Problem) -> ProbeSpec {
        try SpecDecoder.decode(Array("{\(Self.target),\(members)}".utf8))
    }

    /// The field errors of the 400 the body gets, as `field message` lines.
    func errors(_ members: String) -> [String] {
        do {
            let spec = try decode(members)
            Issue.record("decoded, but a 400 was expected: \(spec)")
            return []
        } catch {
            #expect(error.status == .badRequest && error.type.hasSuffix("invalid-spec"))
            return FieldErrorLines.lines(error)
        }
    }

    @Test("Every aggregate member and filter.min_latency_ns decode into the spec")
    func decodesEveryMember() throws {
        let spec = try decode(#"""
            "filter":{"comm":"nginx","min_latency_ns":1000000},
            "aggregate":{"by":["comm","arg:fd"],"value":"ret","histogram":{"kind":"linear","min":-4096,"max":4096,"step":256},
                         "max_keys":2048,"by_process":false}
            """#)
        #expect(spec.filter == ProbeFilter(comm: "nginx", minLatencyNs: 1_000_000))
        #expect(spec.aggregate == AggregateSpec(by: ["comm", "arg:fd"], value: "ret",
                                                histogram: HistogramSpec(kind: "linear", min: -4096, max: 4096, step: 256),
                                                maxKeys: 2048, byProcess: false))
    }

    @Test("Null members are the same as absent ones; a log2 histogram needs only its kind")
    func nullsAreAbsent() throws {
        let spec = try decode(#""filter":{"min_latency_ns":null},"aggregate":{"by":null,"value":null,"histogram":{"kind":"log2","min":null},"max_keys":null,"by_process":null}"#)
        #expect(spec.filter == ProbeFilter())
        #expect(spec.aggregate == AggregateSpec(histogram: HistogramSpec(kind: "log2")))
        #expect(try decode(#""aggregate":{}"#).aggregate == AggregateSpec())
    }

    @Test("by_process must be a JSON boolean: strings, numbers and arrays are refused")
    func byProcessIsABoolean() {
        #expect(errors(#""aggregate":{"by_process":"false"}"#) == ["aggregate.by_process must be a boolean (true or false), not a string"])
        #expect(errors(#""aggregate":{"by_process":0}"#) == ["aggregate.by_process must be a boolean (true or false), not a number"])
        #expect(errors(#""aggregate":{"by_process":[true]}"#) == ["aggregate.by_process must be a boolean (true or false), not an array"])
    }

    @Test("Wrong JSON types name the field, all of them in one 400")
    func wrongTypes() {
        #expect(errors(#""aggregate":{"by":"comm","value":7,"max_keys":1.5,"histogram":"log2"}"#) == [
            "aggregate.by must be an array of strings, not a string",
            "aggregate.histogram must be an object, not a string",
            "aggregate.max_keys must be an integer, not 1.5",
            "aggregate.value must be a string, not a number",
        ])
        #expect(errors(#""aggregate":{"by":["comm",3]}"#) == ["aggregate.by[1] must be a string, not a number"])
        #expect(errors(#""aggregate":{"histogram":{"kind":"linear","min":"0","max":1e400,"step":true}}"#) == [
            "aggregate.histogram.max cannot be read: a number out of range, or a string with a raw control character, an invalid escape or invalid UTF-8",
        ])
        #expect(errors(#""aggregate":{"histogram":{"kind":"linear","min":"0","max":10,"step":true}}"#) == [
            "aggregate.histogram.min must be an integer, not a string",
            "aggregate.histogram.step must be an integer, not a boolean",
        ])
        #expect(errors(#""aggregate":[]"#) == ["aggregate must be an object, not an array"])
        #expect(errors(#""filter":{"min_latency_ns":"1ms"}"#) == ["filter.min_latency_ns must be an integer, not a string"])
        #expect(errors(#""filter":{"min_latency_ns":18446744073709551616}"#) == ["filter.min_latency_ns is out of range (1.8446744073709552e+19)"])
    }

    @Test("Unknown members of aggregate and of its histogram are refused, listing the known ones")
    func unknownMembers() {
        #expect(errors(#""aggregate":{"keys":["comm"]}"#) == [
            "aggregate.keys is not a known field (known: by, by_process, histogram, max_keys, value)",
        ])
        #expect(errors(#""aggregate":{"histogram":{"kind":"log2","buckets":8}}"#) == [
            "aggregate.histogram.buckets is not a known field (known: kind, max, min, step)",
        ])
        #expect(errors(#""filter":{"min_latency":5}"#) == [
            "filter.min_latency is not a known field (known: cgroup, comm, container_id, min_latency_ns, pid, pod_uid)",
        ])
    }

    @Test("A histogram needs its kind, and it cannot be null")
    func histogramKindRequired() {
        #expect(errors(#""aggregate":{"histogram":{"min":0}}"#) == ["aggregate.histogram.kind is required"])
        #expect(errors(#""aggregate":{"histogram":{"kind":null}}"#) == ["aggregate.histogram.kind must not be null"])
    }

    @Test("Limits are not the decoder's: four keys, max_keys 0, a negative min_latency_ns and a bad histogram all decode")
    func limitsDecode() throws {
        let spec = try decode(#""filter":{"min_latency_ns":-1},"aggregate":{"by":["pid","tid","comm","cpu"],"max_keys":0,"histogram":{"kind":"cubic","step":0}}"#)
        #expect(spec.aggregate?.by == ["pid", "tid", "comm", "cpu"])
        #expect(spec.aggregate?.maxKeys == 0 && spec.aggregate?.histogram == HistogramSpec(kind: "cubic", step: 0))
        #expect(spec.filter?.minLatencyNs == -1)
        // They are field errors of the plan, which the API answers as a 400 (AgentAPITests).
        guard case .failure(let errors) = AggregatePlan.resolve(spec, schema: FakeHost().schema(for: spec.target)) else {
            Issue.record("the plan accepted \(spec)")
            return
        }
        #expect(errors.list.map(\.field) == ["filter.min_latency_ns", "aggregate.max_keys", "aggregate.by", "aggregate.histogram.kind"])
    }

    @Test("A decoded aggregate and filter encode back to the same members")
    func roundTrip() throws {
        let spec = try decode(#""filter":{"min_latency_ns":0},"aggregate":{"by":[],"value":"latency","histogram":{"kind":"log2"},"by_process":true}"#)
        let again = try SpecDecoder.decode(Array(try JSONEncoder().encode(spec)))
        #expect(again.aggregate == spec.aggregate && again.filter == spec.filter)
    }
}

/// Field errors of a problem as `field message` lines.
enum FieldErrorLines {
    static func lines(_ problem: Problem) -> [String] {
        guard case .array(let items)? = problem.extensions["errors"] else { return [problem.detail ?? problem.title] }
        return items.compactMap { item in
            guard case .object(let o) = item, case .string(let field)? = o["field"], case .string(let message)? = o["message"] else { return nil }
            return "\(field) \(message)"
        }
    }
}
