import ArgumentParser
import Foundation
import Testing
import TraceAPI
import TraceCore
@testable import traceplane

@Suite("probe add: the budget options")
struct ProbeAddBudgetTests {
    func add(_ arguments: [String]) throws -> ProbeSpec {
        try ProbeCommand.Add.parse(["hot-reads", "syscall:read"] + arguments).spec()
    }

    @Test("--max-cpu-percent and --max-events-per-second land in the spec's budget, and the agent's decoder reads it back")
    func options() throws {
        let spec = try add(["--max-cpu-percent", "0.5", "--max-events-per-second", "20000"])
        #expect(spec.budget == BudgetSpec(maxCPUPercent: 0.5, maxEventsPerSecond: 20_000))
        let json = String(decoding: try JSONEncoder().encode(spec), as: UTF8.self)
        #expect(json.contains(#""budget":{"#) && json.contains(#""max_cpu_percent":0.5"#) && json.contains(#""max_events_per_second":20000"#))
        let decoded = try SpecDecoder.decode(Array(json.utf8))
        #expect(decoded.budget == spec.budget && decoded.validate().isEmpty)
        #expect(try add([]).budget == nil)
        #expect(try add(["--max-cpu-percent", "2"]).budget == BudgetSpec(maxCPUPercent: 2))
    }
}

@Suite("Spec member budget: decoding and bounds")
struct BudgetSpecDecodingTests {
    static func errors(_ budget: String) -> [String] {
        let body = #"{"target":{"type":"syscall","name":"read"},"budget":\#(budget)}"#
        do {
            return try SpecDecoder.decode(Array(body.utf8)).validate().map { "\($0.field): \($0.message)" }
        } catch {
            return [error.detail ?? "\(error)"]
        }
    }

    @Test("bounds at their edges and one past; an empty budget and unknown members are refused with the field named")
    func bounds() {
        #expect(Self.errors(#"{"max_cpu_percent":0.01}"#).isEmpty)
        #expect(Self.errors(#"{"max_cpu_percent":100}"#).isEmpty)
        #expect(Self.errors(#"{"max_cpu_percent":1,"max_events_per_second":1}"#).isEmpty)
        #expect(Self.errors(#"{"max_events_per_second":1000000000}"#).isEmpty)
        #expect(Self.errors(#"{"max_cpu_percent":0.009}"#).first?.hasPrefix("budget.max_cpu_percent") == true)
        #expect(Self.errors(#"{"max_cpu_percent":100.5}"#).first?.hasPrefix("budget.max_cpu_percent") == true)
        #expect(Self.errors(#"{"max_events_per_second":0}"#).first?.hasPrefix("budget.max_events_per_second") == true)
        #expect(Self.errors(#"{"max_events_per_second":1000000001}"#).first?.hasPrefix("budget.max_events_per_second") == true)
        #expect(Self.errors("{}").first?.hasPrefix("budget: give max_cpu_percent") == true)
        #expect(Self.errors(#"{"max_cpu_percent":"1"}"#).first?.contains("budget.max_cpu_percent must be a number") == true)
        #expect(Self.errors(#"{"max_events_per_second":1.5}"#).first?.contains("budget.max_events_per_second must be an integer") == true)
        #expect(Self.errors(#"{"cpu":1}"#).first?.contains("budget.cpu is not a known field") == true)
    }
}
