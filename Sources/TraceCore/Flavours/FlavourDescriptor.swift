/// Everything the agent knows about one attach flavour, in one value: its name, the
/// mechanisms it needs, where it sits in each target type's default chain, how it loads and
/// attaches (its recipe and strategy), what its programs measure, and what it binds to in
/// the kernel's BTF. ``FlavourCatalog`` lists them; the planner, spec validation, the
/// capability report's chains and `selftest` all read that one table.
///
/// Adding a flavour is a descriptor (a file in `Flavours/`), its entry in
/// ``FlavourCatalog/all``, its BPF program, and its test.
public struct FlavourDescriptor: Sendable {
    /// Unique per descriptor (one ``Flavour`` name can have a descriptor per target type).
    public enum ID: String, Sendable, Hashable, CaseIterable {
        case fentry, kprobe, syscallTracepoints, syscallHubBTF, syscallHubRaw, uprobe
        case eventTpBTF, eventRawTracepoint, eventTracepoint, profile
    }

    /// How probes of this flavour hold their kernel resources.
    public enum Strategy: Sendable, Hashable {
        /// Each probe loads its own object and attaches its own links.
        case ownObject
        /// Probes are slots of one shared program pair on raw_syscalls (``SyscallHub``); the
        /// recipe loads the hub itself, once.
        case sharedSyscallHook
    }

    /// What a probe of this flavour reports, and so how its maps are read.
    public enum Measures: Sendable, Hashable {
        /// Calls with entry and exit: counts, errors (negative returns), a log2 latency
        /// histogram and the top processes.
        case calls
        /// Single events (tracepoints): counts and the top processes.
        case events
    }

    /// What must be in the kernel's BTF for this flavour to bind to a target.
    public enum BTFRequirement: Sendable, Hashable {
        /// One of these functions (in order of preference).
        case function(anyOf: [String])
        /// `btf_trace_<event>` for each of these tracepoint events.
        case tracepoints([String])
    }

    /// A flavour's place in one target type's default chain.
    public struct Place: Sendable, Hashable {
        /// Lower is tried first.
        public let position: Int
        /// What it attaches to for that target type, for the report's chains and attempt messages.
        public let via: String
    }

    public let id: ID
    /// The name specs, attempts and chains use.
    public let flavour: Flavour
    /// Its place in the default chain of each target type it serves.
    public let places: [TargetType: Place]
    /// The mechanisms that must all work (what the capability report checks).
    public let needs: [Mechanism]
    public let strategy: Strategy
    public let measures: Measures
    /// Why this build of the agent cannot use the flavour at all; nil when it can.
    public let unavailable: String?

    /// The kernel names a probe binds to, tried in order while the load answers that the
    /// name is not in BTF (fentry on a zero-argument syscall: `__x64_sys_X` is an alias
    /// without BTF, `__do_sys_X` has it). Empty: the flavour binds to nothing by name.
    let bindings: @Sendable (ProbeTarget, KernelFacts) -> [String]
    /// What to load and attach.
    let recipe: @Sendable (RecipeInput) -> Recipe
    /// The BTF the flavour binds through, for self-tests to predict with; nil when none.
    public let btfRequirement: @Sendable (ProbeTarget, KernelFacts) -> BTFRequirement?
    /// Why the flavour cannot provide a key or the value of `plan` (naming it); nil when it can.
    let keySupport: @Sendable (AggregatePlan) -> String?

    init(id: ID, flavour: Flavour, places: [TargetType: Place], needs: [Mechanism],
         strategy: Strategy = .ownObject, measures: Measures, unavailable: String? = nil,
         bindings: @escaping @Sendable (ProbeTarget, KernelFacts) -> [String] = { _, _ in [] },
         btfRequirement: @escaping @Sendable (ProbeTarget, KernelFacts) -> BTFRequirement? = { _, _ in nil },
         keySupport: @escaping @Sendable (AggregatePlan) -> String? = { _ in nil },
         recipe: @escaping @Sendable (RecipeInput) -> Recipe) {
        self.keySupport = keySupport
        self.id = id
        self.flavour = flavour
        self.places = places
        self.needs = needs
        self.strategy = strategy
        self.measures = measures
        self.unavailable = unavailable
        self.bindings = bindings
        self.btfRequirement = btfRequirement
        // Every own-object flavour loads latency.bpf.c, whose cgroup filter may need the
        // cgroup in its cgroup array before the programs attach.
        if strategy == .ownObject {
            self.recipe = { @Sendable (input: RecipeInput) -> Recipe in
                var made = recipe(input)
                made.cgroupArray = LatencyObject.cgroupArray(input)
                return made
            }
        } else {
            self.recipe = recipe
        }
    }

    /// Whether it can trace targets of `type`.
    public func serves(_ type: TargetType) -> Bool { places[type] != nil }

    /// What it attaches to for targets of `type`.
    public func via(for type: TargetType) -> String { places[type]?.via ?? flavour.rawValue }
}

/// What a recipe is made from.
struct RecipeInput: Sendable {
    var spec: ProbeSpec
    var facts: KernelFacts
    /// Entry timestamps in task storage (else a hash keyed by thread id).
    var taskStorage: Bool
    /// The kernel name to bind to (one of the descriptor's `bindings`), if any.
    var binding: String?
    /// For the shared hook: how many probes its tables hold.
    var hubSlots: Int = 0
    /// The probe's keys and value.
    var plan: AggregatePlan
    /// The probe's cgroup filter, resolved (filter.cgroup, container_id or pod_uid).
    var cgroup: CgroupFilter? = nil
    /// Whether tracing programs may call bpf_get_current_ancestor_cgroup_id here (the
    /// shared hook picks its cgroup check once, for every slot).
    var cgroupAncestor: Bool = true
    /// Whether the programs sample and suspend under a budget (see ``BudgetSpec``).
    var budgeted: Bool = false

    /// Whether the bound function takes the syscall's `struct pt_regs` (the x86-64 and arm64
    /// syscall wrappers, `__x64_sys_read`): arguments are then read through it.
    var syscallRegisters: Bool {
        guard spec.target.type == .syscall, let binding, let prefix = facts.syscallPrefix, !prefix.isEmpty else { return false }
        return binding.hasPrefix(prefix)
    }
}

/// What one flavour loads and attaches for one target: an object with its settings, then
/// its programs, attached in order (a failure part-way is rolled back).
struct Recipe: Sendable {
    struct Attachment: Sendable {
        var program: BPFProgramID
        var point: AttachPoint
        /// The mechanism this attachment exercises (what a failure is classified as).
        var mechanism: Mechanism
    }
    var load: LoadSpec
    var attachments: [Attachment]
    /// A cgroup to put into a cgroup array after load and before attach (the filter's
    /// `bpf_current_task_under_cgroup` check).
    var cgroupArray: CgroupArray? = nil

    struct CgroupArray: Sendable {
        var map: BPFMapID
        var filter: CgroupFilter
    }

    /// What it binds to, for the attempt message: a load-time target, or the first attach point.
    var boundTo: String? {
        if let target = load.programs.first?.loadTimeTarget { return target }
        switch attachments.first?.point {
        case .kprobe(let function, _): return function
        case .tracepoint(let category, let name): return "\(category):\(name)"
        case .rawTracepoint(let name): return name
        case .cpuSampler: return "cpu-clock on \(attachments.count) CPUs"
        case .uprobe(let binary, let symbol, _, _): return "\(binary):\(symbol)"
        default: return nil
        }
    }
}
