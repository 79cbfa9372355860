import CBPFLayouts
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// `aggregate` resolved against target schemas: what each key becomes, how keys pack,
/// and a field error for every hostile spec, naming the field and what is valid.
@Suite("Aggregate plans")
struct AggregatePlanTests {
    let host = FakeHost()

    func spec(_ aggregate: AggregateSpec?, _ type: TargetType = .syscall, _ name: String = "read", filter: ProbeFilter? = nil) -> ProbeSpec {
        ProbeSpec(name: "p", target: ProbeTarget(type: type, name: name), filter: filter, aggregate: aggregate)
    }

    func resolve(_ spec: ProbeSpec) -> Result<AggregatePlan, FieldErrors> {
        AggregatePlan.resolve(spec, schema: host.schema(for: spec.target))
    }

    func errors(_ spec: ProbeSpec) -> [FieldError] {
        if case .failure(let e) = resolve(spec) { return e.list }
        return []
    }

    @Test("Argument names come from the syscall's format: kinds, widths, signedness and packing")
    func readArguments() throws {
        let plan = try resolve(spec(AggregateSpec(by: ["comm", "arg:fd", "arg2"], value: "arg:count"))).get()
        #expect(plan.keyed)
        #expect(plan.parts.map(\.kind) == [UInt32(TP_K_COMM.rawValue), UInt32(TP_K_ARG.rawValue), UInt32(TP_K_ARG.rawValue)])
        #expect(plan.parts.map(\.offset) == [0, 16, 24])
        #expect(plan.parts.map(\.hubOffset) == [24, 8, 16])
        #expect(plan.parts[1].arg == 0 && plan.parts[1].length == 4 && !plan.parts[1].signed)  // unsigned int fd
        #expect(plan.parts[2].arg == 2 && plan.parts[2].length == 8)                           // size_t count
        #expect(plan.keySize == 32)
        #expect(plan.value.kind == UInt32(TP_V_ARG.rawValue) && plan.value.arg == 2)
        #expect(plan.valueSize == 32 + 8 * Int(TP_LOG2_SLOTS))
        #expect(plan.needsArguments)
    }

    @Test("openat's filename is a 64-byte user string; at most one string argument")
    func stringArgument() throws {
        let plan = try resolve(spec(AggregateSpec(by: ["arg:filename", "errno"]), .syscall, "openat")).get()
        #expect(plan.parts[0].kind == UInt32(TP_K_ARG_STR.rawValue) && plan.parts[0].size == 64 && plan.parts[0].user)
        #expect(plan.stringPart?.arg == 1)
        #expect(plan.parts[1].offset == 64 && plan.parts[1].display == .errno)
    }

    @Test("A spec without aggregate, or with by [] and the latency value, has no key table")
    func unkeyed() throws {
        #expect(try resolve(spec(nil)).get().keyed == false)
        let plain = try resolve(spec(AggregateSpec(by: [], byProcess: false))).get()
        #expect(!plain.keyed && !plain.countProcesses)
        #expect(try resolve(spec(AggregateSpec(by: [], value: "ret"))).get().keyed)
        #expect(try resolve(spec(AggregateSpec(by: []), .tracepoint, "sched:sched_switch")).get().value.kind == UInt32(TP_V_NONE.rawValue))
    }

    @Test("Linear histograms: slots and bounds, below min and at or above max at the edges")
    func linearBounds() throws {
        let plan = try resolve(spec(AggregateSpec(by: ["pid"], value: "arg:count",
                                                  histogram: HistogramSpec(kind: "linear", min: 0, max: 4096, step: 256)))).get()
        let h = plan.histogram
        #expect(h.linear && h.slots == 18)
        #expect(h.bounds(0) == (Int64.min, -1))
        #expect(h.bounds(1) == (0, 255))
        #expect(h.bounds(16) == (3840, 4095))
        #expect(h.bounds(17) == (4096, Int64.max))
        let log2 = AggregatePlan.Histogram.log2
        #expect(log2.bounds(0) == (0, 1) && log2.bounds(3) == (8, 15) && log2.bounds(64) == (Int64.min, -1))
    }

    @Test("Hostile specs: each problem a field error that names the field and lists what is valid",
          arguments: [
            (AggregateSpec(by: ["bogus"]), "aggregate.by[0]", "valid: pid, tid, comm"),
            (AggregateSpec(by: ["pid", "tid", "comm", "cpu"]), "aggregate.by", "at most 3 keys"),
            (AggregateSpec(by: ["arg:fdx"]), "aggregate.by[0]", "valid: arg:fd (arg0), arg:buf (arg1), arg:count (arg2)"),
            (AggregateSpec(by: ["arg:../etc"]), "aggregate.by[0]", "unknown key"),
            (AggregateSpec(by: ["arg5"]), "aggregate.by[0]", "beyond the 3 arguments"),
            (AggregateSpec(by: ["pid", "pid"]), "aggregate.by[1]", "given twice"),
            (AggregateSpec(by: ["field:x"]), "aggregate.by[0]", "only tracepoint targets have fields"),
            (AggregateSpec(by: ["kstack", "ustack"], maxKeys: 65_536), "aggregate.max_keys", "the stack map would take 135 MiB"),
            (AggregateSpec(value: "arg:buf2"), "aggregate.value", "not an argument"),
            (AggregateSpec(value: "bytes"), "aggregate.value", "valid: latency, ret, none"),
            (AggregateSpec(histogram: HistogramSpec(kind: "linear", min: 0, max: 10_000, step: 1)), "aggregate.histogram", "10000 buckets; at most 512"),
            (AggregateSpec(histogram: HistogramSpec(kind: "linear", min: 0, max: 100, step: -5)), "aggregate.histogram.step", "positive"),
            (AggregateSpec(histogram: HistogramSpec(kind: "linear", min: 10, max: 10, step: 1)), "aggregate.histogram.max", "greater than min"),
            (AggregateSpec(histogram: HistogramSpec(kind: "linear", min: 0)), "aggregate.histogram.max", "required"),
            (AggregateSpec(histogram: HistogramSpec(kind: "cubic")), "aggregate.histogram.kind", "log2 or linear"),
            (AggregateSpec(histogram: HistogramSpec(kind: "log2", step: 2)), "aggregate.histogram", "takes no min, max or step"),
            (AggregateSpec(value: "none", histogram: HistogramSpec(kind: "log2")), "aggregate.histogram", "needs a value"),
            (AggregateSpec(maxKeys: 0), "aggregate.max_keys", "from 1 to 65536"),
            (AggregateSpec(value: "arg:count", histogram: HistogramSpec(kind: "linear", min: 0, max: Int64.max, step: 1 << 62)),
             "aggregate.histogram", "beyond a 64-bit integer"),
            (AggregateSpec(maxKeys: 65_537), "aggregate.max_keys", "from 1 to 65536"),
            (AggregateSpec(by: ["pid"], value: "arg:count", histogram: HistogramSpec(kind: "linear", min: 0, max: 512, step: 1), maxKeys: 65_536),
             "aggregate.max_keys", "MiB on each CPU"),
          ] as [(AggregateSpec, String, String)])
    func hostile(aggregate: AggregateSpec, field: String, message: String) {
        let found = errors(spec(aggregate))
        #expect(found.contains { $0.field == field && $0.message.contains(message) }, "\(found)")
    }

    @Test("Tracepoint targets: fields from the format, no return value, no latency filter")
    func tracepointTargets() {
        let tp = { (a: AggregateSpec?, f: ProbeFilter?) in self.errors(self.spec(a, .tracepoint, "sched:sched_switch", filter: f)) }
        #expect(tp(AggregateSpec(by: ["field:prev_state", "field:next_comm"]), nil).isEmpty)
        #expect(tp(AggregateSpec(by: ["field:nope"]), nil).first?.message.contains("valid: field:prev_comm, field:prev_pid") == true)
        #expect(tp(AggregateSpec(by: ["errno"]), nil).first?.message.contains("no return value") == true)
        #expect(tp(AggregateSpec(by: ["arg0"]), nil).first?.message.contains("use field:NAME") == true)
        #expect(tp(AggregateSpec(value: "latency"), nil).first?.field == "aggregate.value")
        #expect(tp(AggregateSpec(value: "field:prev_comm"), nil).first?.message.contains("not a number") == true)
        #expect(tp(nil, ProbeFilter(minLatencyNs: 10)).first?.field == "filter.min_latency_ns")
        let plan = try? resolve(spec(AggregateSpec(by: ["field:next_comm"], value: "field:prev_state"), .tracepoint, "sched:sched_switch")).get()
        #expect(plan?.parts.first?.kind == UInt32(TP_K_FIELD_STR.rawValue) && plan?.parts.first?.length == 16 && plan?.parts.first?.arg == 40)
        #expect(plan?.value.kind == UInt32(TP_V_FIELD.rawValue) && plan?.value.signed == true && plan?.value.length == 8)
    }

    @Test("Function targets take names from BTF; uprobes take argN only; a negative latency filter is refused")
    func functionsAndUprobes() throws {
        #expect(errors(spec(AggregateSpec(by: ["arg:count"]), .function, "vfs_read")).isEmpty)
        let uprobe = ProbeSpec(name: "u", target: ProbeTarget(type: .uprobe, path: "/bin/true", symbol: "main"), aggregate: AggregateSpec(by: ["arg:len"]))
        #expect(errors(uprobe).first?.message.contains("use arg0 to arg5") == true)
        let ok = ProbeSpec(name: "u", target: ProbeTarget(type: .uprobe, path: "/bin/true", symbol: "main"), aggregate: AggregateSpec(by: ["arg3"]))
        #expect(errors(ok).isEmpty)
        #expect(errors(spec(nil, filter: ProbeFilter(minLatencyNs: -1))).first?.field == "filter.min_latency_ns")
        #expect(try resolve(spec(nil, filter: ProbeFilter(minLatencyNs: 1_000))).get().minLatencyNanoseconds == 1_000)
    }

    @Test("A function's return type from BTF: an int return is narrowed (its errno readable), a void one has no ret or errno")
    func returnTypes() throws {
        let int = try resolve(spec(AggregateSpec(by: ["errno"]), .function, "security_file_open")).get()
        #expect(int.returnLength == 4 && int.returnSigned && !int.returnsVoid)
        // Narrowing applies without keys too: the probe's error count needs it.
        #expect(try resolve(spec(nil, .function, "security_file_open")).get().returnLength == 4)
        #expect(try resolve(spec(nil, .function, "vfs_read")).get().returnLength == 0)
        #expect(errors(spec(AggregateSpec(by: ["errno"]), .function, "fput")).first?.message.contains("void") == true)
        #expect(errors(spec(AggregateSpec(value: "ret"), .function, "fput")).first?.field == "aggregate.value")
        #expect(try resolve(spec(nil, .function, "fput")).get().returnsVoid)
        #expect(errors(spec(AggregateSpec(by: ["arg0"]), .syscall, "getppid")).first?.message.contains("valid: none") == true)
    }

    @Test("The manager refuses a hostile aggregate with 400 field errors before any load")
    func managerRefuses() async {
        let kernel = FakeKernel()
        let report = CapabilityProber(backend: kernel).probe()
        let manager = ProbeManager(planner: Planner(backend: kernel), maxProbes: 8, report: { report })
        let loads = kernel.loadedSpecs.count
        await #expect(throws: ProbeError.self) { try await manager.create(spec(AggregateSpec(by: ["arg:nope"]))) }
        do {
            _ = try await manager.create(spec(AggregateSpec(by: ["a", "b", "c", "d"])))
        } catch {
            #expect(error.kind == .invalid)
            #expect(error.fieldErrors.map(\.field).contains("aggregate.by"))
        }
        #expect(kernel.loadedSpecs.count == loads)
    }
}
