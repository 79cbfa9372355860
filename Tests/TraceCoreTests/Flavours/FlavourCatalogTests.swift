import Testing
@testable import TraceCore
import TraceCoreTestSupport

@Suite("Flavour catalog")
struct FlavourCatalogTests {
    @Test("Default chains are DESIGN.md's table")
    func chains() {
        func names(_ type: TargetType) -> [Flavour] { FlavourCatalog.chain(for: type).map(\.flavour) }
        #expect(names(.function) == [.fentry, .kprobe])
        #expect(names(.syscall) == [.fentry, .kprobe, .tpBTF, .rawTracepoint, .tracepoint])
        #expect(names(.tracepoint) == [.tpBTF, .rawTracepoint, .tracepoint])
        #expect(names(.uprobe) == [.uprobe])
        #expect(FlavourCatalog.chain(for: .syscall).map(\.id) == [.fentry, .kprobe, .syscallHubBTF, .syscallHubRaw, .syscallTracepoints])
    }

    @Test("Each descriptor has its own id, and one name means one flavour per target type")
    func uniqueness() {
        #expect(Set(FlavourCatalog.all.map(\.id)).count == FlavourCatalog.all.count)
        #expect(Set(FlavourCatalog.all.map(\.id)) == Set(FlavourDescriptor.ID.allCases))
        for type in TargetType.allCases {
            let chain = FlavourCatalog.chain(for: type)
            #expect(Set(chain.map(\.flavour)).count == chain.count, "\(type)")
            #expect(Set(chain.map { $0.places[type]!.position }).count == chain.count, "\(type): positions collide")
        }
        #expect(TargetType.allCases.allSatisfy { !FlavourCatalog.chain(for: $0).isEmpty })
    }

    @Test("Spec names and aliases resolve to flavours: kfunc/kretfunc/fexit are fentry, kretprobe is kprobe, raw_tp is raw_tracepoint")
    func specNames() {
        let expected: [String: Flavour] = ["fentry": .fentry, "fexit": .fentry, "kfunc": .fentry, "kretfunc": .fentry,
                                           "kprobe": .kprobe, "kretprobe": .kprobe, "tracepoint": .tracepoint, "tp_btf": .tpBTF,
                                           "raw_tracepoint": .rawTracepoint, "raw_tp": .rawTracepoint, "uprobe": .uprobe,
                                           "uretprobe": .uprobe]
        for (name, flavour) in expected { #expect(Flavour(specName: name) == flavour, "\(name)") }
        #expect(Flavour(specName: "kprobe_multi") == nil && Flavour(specName: "") == nil)
        #expect(Flavour.specNames.contains("fentry (fexit, kfunc, kretfunc)"))
    }

    @Test("A spec's mechanisms are resolved per target type, duplicates dropped; without them, the default chain")
    func specChains() {
        let spec = ProbeSpec(target: ProbeTarget(type: .syscall, name: "read"), mechanisms: ["tracepoint", "kfunc", "fexit", "tp_btf"])
        #expect(FlavourCatalog.chain(for: spec).map(\.id) == [.syscallTracepoints, .fentry, .syscallHubBTF])
        let tp = ProbeSpec(target: ProbeTarget(type: .tracepoint, name: "sched:sched_switch"), mechanisms: ["tp_btf"])
        #expect(FlavourCatalog.chain(for: tp).map(\.id) == [.eventTpBTF])
        #expect(FlavourCatalog.chain(for: ProbeSpec(target: ProbeTarget(type: .uprobe, path: "/x", symbol: "y"))).map(\.id) == [.uprobe])
    }

    @Test("Every recipe loads only programs of its object, attaches each program it loads, and tells the mechanism of each step")
    func recipesAreConsistent() {
        let facts = KernelFacts.canned()
        let targets: [TargetType: ProbeTarget] = [
            .function: ProbeTarget(type: .function, name: "vfs_read"), .syscall: ProbeTarget(type: .syscall, name: "read"),
            .tracepoint: ProbeTarget(type: .tracepoint, name: "sched:sched_switch"),
            .uprobe: ProbeTarget(type: .uprobe, path: "/bin/true", symbol: "main"), .profile: ProbeTarget(type: .profile),
        ]
        for descriptor in FlavourCatalog.all {
            for type in TargetType.allCases where descriptor.serves(type) {
                let spec = ProbeSpec(target: targets[type]!)
                let input = RecipeInput(spec: spec, facts: facts, taskStorage: true, binding: descriptor.bindings(spec.target, facts).first,
                                        hubSlots: 4, plan: .defaults(for: type))
                let recipe = descriptor.recipe(input)
                #expect(Set(recipe.load.programs.map(\.id)) == Set(recipe.attachments.map(\.program)), "\(descriptor.id) \(type)")
                #expect(recipe.attachments.allSatisfy { descriptor.needs.contains($0.mechanism) }, "\(descriptor.id) \(type)")
                #expect(recipe.load.readOnly.values.allSatisfy { !$0.isEmpty })
            }
        }
    }

    @Test("fentry binds through BTF functions, tp_btf through btf_trace_ typedefs; kprobes and perf tracepoints through neither")
    func btfRequirements() {
        let facts = KernelFacts.canned()
        let read = ProbeTarget(type: .syscall, name: "read")
        #expect(FlavourDescriptor.fentry.btfRequirement(read, facts) == .function(anyOf: ["__x64_sys_read", "__do_sys_read"]))
        #expect(FlavourDescriptor.syscallHubBTF.btfRequirement(read, facts) == .tracepoints(["sys_enter", "sys_exit"]))
        #expect(FlavourDescriptor.eventTpBTF.btfRequirement(ProbeTarget(type: .tracepoint, name: "sched:sched_switch"), facts)
            == .tracepoints(["sched_switch"]))
        #expect(FlavourDescriptor.kprobe.btfRequirement(read, facts) == nil)
        #expect(FlavourDescriptor.syscallTracepoints.btfRequirement(read, facts) == nil)
    }

    @Test("The report's chains mark a step usable exactly when every mechanism it needs is supported")
    func reportChains() {
        let kernel = FakeKernel.developmentMachine()
        let reaper = Reaper()
        let report = CapabilityProber(backend: kernel, reaper: reaper).probe()
        reaper.drain()
        let syscall = report.chains["syscall"] ?? []
        #expect(syscall.map(\.mechanism) == [.fentry, .kprobe, .tpBTF, .rawTracepoint, .tracepoint])
        #expect(syscall.map(\.usable) == [false, false, true, true, true])
        #expect(syscall[0].requires == [.fentry, .fexit] && syscall[0].via == "fentry/fexit on the syscall's kernel entry")
        #expect(report.chains["function"]?.first?.via == "fentry/fexit on the function")
    }
}
