import CBPFLayouts
import Testing
@testable import TraceCore

/// Stack keys as the plan lays them out and the readers unpack them, profile targets as the
/// spec takes them, and stack-keyed tables as flame graph samples.
extension StacksTests {
    @Suite struct StackKeyTests {
        static func plan(_ by: [String], maxKeys: Int? = nil, type: ProbeTarget = ProbeTarget(type: .syscall, name: "getppid")) -> Result<AggregatePlan, FieldErrors> {
            AggregatePlan.resolve(ProbeSpec(name: "s", target: type, aggregate: AggregateSpec(by: by, maxKeys: maxKeys)),
                                  schema: TargetSchema(arguments: [], fields: nil, source: "test"))
        }

        @Test("kstack takes 8 bytes (the hash), ustack 16 (hash and tgid); the stack map holds one stack per part per key")
        func layout() throws {
            let plan = try Self.plan(["comm", "kstack", "ustack"], maxKeys: 100).get()
            #expect(plan.parts.map(\.kind) == [UInt32(TP_K_COMM.rawValue), UInt32(TP_K_KSTACK.rawValue), UInt32(TP_K_USTACK.rawValue)])
            #expect(plan.parts.map(\.offset) == [0, 16, 24])
            #expect(plan.keySize == 40)
            #expect(plan.stackParts == 2 && plan.stackEntries == 200)
            #expect(try Self.plan(["pid"]).get().stackEntries == 1, "no stack part: a one-entry map")
        }

        @Test("A stack map beyond 64 MiB is a field error on max_keys that says how many keys fit")
        func stackMapBound() throws {
            guard case .failure(let errors) = Self.plan(["kstack", "ustack"], maxKeys: 65_536) else {
                Issue.record("65,536 keys of two stacks accepted")
                return
            }
            let error = try #require(errors.list.first { $0.field == "aggregate.max_keys" })
            let fit = AggregatePlan.maxStackBytes / (2 * AggregatePlan.stackEntryBytes)
            #expect(error.message.contains("at most \(fit) keys"), "\(error.message)")
            #expect((try? Self.plan(["kstack", "ustack"], maxKeys: fit).get()) != nil)
        }

        @Test("Stack keys are valid for every target type, and listed among the valid keys")
        func everyTargetType() {
            for target in [ProbeTarget(type: .syscall, name: "read"), ProbeTarget(type: .function, name: "vfs_read"),
                           ProbeTarget(type: .tracepoint, name: "sched:sched_switch"), ProbeTarget(type: .uprobe, path: "/bin/true", symbol: "main"),
                           ProbeTarget(type: .profile)] {
                #expect((try? Self.plan(["kstack", "ustack"], type: target).get()) != nil, "\(target.label)")
            }
            guard case .failure(let errors) = Self.plan(["stack"]) else { Issue.record("unknown key accepted"); return }
            #expect(errors.list[0].message.contains("kstack, ustack"))
        }

        @Test("A profile is keyed by comm, ustack and kstack unless it says otherwise, counts only, and takes 1 to 1000 Hz")
        func profileTarget() throws {
            let plan = try AggregatePlan.resolve(ProbeSpec(name: "p", target: ProbeTarget(type: .profile)), schema: nil).get()
            #expect(plan.parts.map(\.name) == ["comm", "ustack", "kstack"])
            #expect(plan.keyed && plan.value.kind == UInt32(TP_V_NONE.rawValue))
            let byPID = try AggregatePlan.resolve(ProbeSpec(name: "p", target: ProbeTarget(type: .profile), aggregate: AggregateSpec(by: ["pid", "kstack"])), schema: nil).get()
            #expect(byPID.parts.map(\.name) == ["pid", "kstack"])
            #expect(ProbeTarget(type: .profile).frequency == 99)
            #expect(ProbeTarget(type: .profile).label == "profile:99hz")
            func errors(_ t: ProbeTarget) -> [String] { ProbeSpec(name: "p", target: t).validate().map(\.field) }
            #expect(errors(ProbeTarget(type: .profile, frequencyHz: 1)).isEmpty)
            #expect(errors(ProbeTarget(type: .profile, frequencyHz: 1000)).isEmpty)
            #expect(errors(ProbeTarget(type: .profile, frequencyHz: 0)) == ["target.frequency_hz"])
            #expect(errors(ProbeTarget(type: .profile, frequencyHz: 1001)) == ["target.frequency_hz"])
            #expect(errors(ProbeTarget(type: .profile, name: "x")) == ["target"])
            #expect(errors(ProbeTarget(type: .syscall, name: "read", frequencyHz: 99)) == ["target.frequency_hz"])
            // A profile has no latency to filter on, and no return value to key by.
            guard case .failure(let e) = AggregatePlan.resolve(ProbeSpec(name: "p", target: ProbeTarget(type: .profile), filter: ProbeFilter(minLatencyNs: 5),
                                                                         aggregate: AggregateSpec(by: ["errno"])), schema: nil) else {
                Issue.record("latency filter and errno key accepted on a profile")
                return
            }
            #expect(Set(e.list.map(\.field)) == ["filter.min_latency_ns", "aggregate.by[0]"])
        }

        @Test("The shared syscall hook refuses stack keys with a reason naming the key; the catalog serves profiles with perf_event only")
        func flavours() {
            let plan = try? Self.plan(["ustack"]).get()
            #expect(SyscallHubObject.keySupport(plan!)?.contains("ustack") == true)
            #expect(FlavourCatalog.chain(for: .profile).map(\.flavour) == [.perfEvent])
            #expect(Flavour(specName: "perf_event") == .perfEvent)
        }

        @Test("Packed stack parts unpack to their hash, the tgid of a user stack, and a marker when the map was full")
        func unpack() {
            let plan = try! Self.plan(["kstack", "ustack"]).get()
            var key = [UInt8](repeating: 0, count: plan.keySize)
            func put(_ v: UInt64, at o: Int) { withUnsafeBytes(of: v.littleEndian) { for (i, b) in $0.enumerated() { key[o + i] = b } } }
            put(0x1234_5678_9abc_def1, at: 0)
            put(UInt64(TP_STACK_FULL), at: 8)
            put(4321, at: 16)
            let k = KeyTableReader.value(of: plan.parts[0], at: 0, in: key, cgroups: .shared)
            let u = KeyTableReader.value(of: plan.parts[1], at: 8, in: key, cgroups: .shared)
            #expect(k == .stack(StackRef(space: .kernel, hash: 0x1234_5678_9abc_def1), frames: []))
            #expect(u == .stack(StackRef(space: .user, hash: UInt64(TP_STACK_FULL), tgid: 4321), frames: []))
            #expect(u.text == "[user stack lost: the stack map is full]")
            #expect(StackRef(space: .user, hash: UInt64(TP_STACK_NONE)).lossFrame == nil, "no user stack (a kernel thread) is not a loss")
            #expect(KeyedAggregate.KeyValue.stack(StackRef(space: .kernel, hash: 3), frames: ["leaf", "mid", "root"]).text == "root;mid;leaf")
        }

        static func table() -> KeyedAggregate {
            func s(_ space: StackRef.Space, _ h: UInt64, _ frames: [String]) -> KeyedAggregate.KeyValue { .stack(StackRef(space: space, hash: h, tgid: 7), frames: frames) }
            return KeyedAggregate(by: ["comm", "kstack", "ustack"], value: "none", histogram: nil, droppedKeys: 0, entries: [
                .init(key: [.string("app"), s(.kernel, 1, ["k_leaf", "k_root"]), s(.user, 3, ["u_leaf", "main"])], calls: 5, errors: 0),
                .init(key: [.string("app"), s(.kernel, 5, ["k_other"]), s(.user, 3, ["u_leaf", "main"])], calls: 2, errors: 1),
                .init(key: [.string("kworker"), s(.kernel, 1, ["k_leaf", "k_root"]), s(.user, UInt64(TP_STACK_NONE), [])], calls: 4, errors: 0),
            ])
        }

        @Test("As flame graph samples: comm, then the user stack, then the kernel stack, each root first")
        func samples() {
            let samples = StackSamples.samples(Self.table())
            #expect(samples.map(\.frames) == [["app", "main", "u_leaf", "k_root", "k_leaf"], ["app", "main", "u_leaf", "k_other"], ["kworker", "k_root", "k_leaf"]])
            #expect(samples.map(\.count) == [5, 2, 4])
            #expect(FlameGraph.folded(samples) == "app;main;u_leaf;k_other 2\napp;main;u_leaf;k_root;k_leaf 5\nkworker;k_root;k_leaf 4\n")
        }

        @Test("Prometheus' view folds the stack parts out: per comm, calls and errors summed")
        func folding() {
            let folded = Self.table().foldingStacks()
            #expect(folded.by == ["comm"])
            #expect(folded.entries.map(\.texts) == [["app"], ["kworker"]])
            #expect(folded.entries.map(\.calls) == [7, 4])
            #expect(folded.entries.map(\.errors) == [1, 0])
        }

        @Test("The stack table resolves a stack once, keeps it while a key names it, and forgets it after")
        func stackTable() {
            let kernel = KernelSymbolizer(kallsymsText: "ffffffff81000000 T alpha\nffffffff81000100 T beta\n")
            let table = StackTable(kernel: kernel, user: UserSymbolizer())
            let ref = StackRef(space: .kernel, hash: 9)
            let first = table.frames(for: [ref], lookup: { $0 == 9 ? [0xffff_ffff_8100_0010, 0xffff_ffff_8100_0110] : nil })
            #expect(first[ref]?.map(\.text) == ["alpha", "beta"])
            // The map entry is gone (say, read mid-delete): the resolved frames stay.
            #expect(table.frames(for: [ref], lookup: { _ in nil })[ref]?.map(\.text) == ["alpha", "beta"])
            // No key names it any more: forgotten.
            _ = table.frames(for: [], lookup: { _ in nil })
            #expect(table.frames(for: [ref], lookup: { _ in nil })[ref] == [])
        }

        @Test("The tracer's own frames at the innermost end of a kernel stack are left out, nowhere else")
        func tracerFrames() {
            func f(_ s: String?) -> StackFrame { StackFrame(symbol: s, module: "[kernel]", offset: 0, address: 1) }
            let raw = [f("bpf_prog_08ceb234da58648f_cnt_tp_btf"), f("bpf_trace_run4"), f("__traceiter_sched_switch"), f("__schedule"), f("bpf_prog_x")]
            #expect(StackTable.withoutTracer(raw).map(\.symbol) == ["__traceiter_sched_switch", "__schedule", "bpf_prog_x"])
            let fentry = [f("bpf_trampoline_6442"), f("bpf_prog_1_lat_fentry"), f("__x64_sys_getpgid"), f("do_syscall_64")]
            #expect(StackTable.withoutTracer(fentry).map(\.symbol) == ["__x64_sys_getpgid", "do_syscall_64"])
            #expect(StackTable.withoutTracer([f(nil), f("bpf_prog_1")]).count == 2, "an unknown innermost frame stays, and what follows it")
            #expect(StackTable.withoutTracer([f("bpf_prog_1")]).count == 1, "a stack of tracer frames only is kept whole")
        }

        @Test("Online CPU lists parse as the kernel writes them")
        func onlineCPUs() {
            #expect(OnlineCPUs.parse("0-3,6,8-9\n") == [0, 1, 2, 3, 6, 8, 9])
            #expect(OnlineCPUs.parse("0\n") == [0])
            #expect(OnlineCPUs.parse("3-1,x,5") == [5])
        }
    }
}
