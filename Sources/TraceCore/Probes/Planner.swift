import Glibc

/// One mechanism tried for a probe.
public struct AttachAttempt: Sendable, Codable, Hashable {
    public enum Outcome: String, Sendable, Codable, Hashable {
        case attached, unsupported, denied, error
    }
    public var mechanism: String
    public var outcome: Outcome
    /// `load` or `attach`; null when nothing was tried (disabled by configuration).
    public var stage: String?
    public var errno: String?
    public var message: String

    public init(mechanism: String, outcome: Outcome, stage: String?, errno: String?, message: String) {
        self.mechanism = mechanism
        self.outcome = outcome
        self.stage = stage
        self.errno = errno
        self.message = message
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(mechanism, forKey: .mechanism)
        try c.encode(outcome, forKey: .outcome)
        try c.encode(stage, forKey: .stage)
        try c.encode(errno, forKey: .errno)
        try c.encode(message, forKey: .message)
    }
}

/// No mechanism attached; nothing was kept.
public struct AttachFailure: Error, Sendable {
    public var attempts: [AttachAttempt]
}

/// Tries a probe's mechanisms in order against the real target and keeps the first that
/// attaches. Every attempt is recorded; a half-done attach is rolled back.
public struct Planner: Sendable {
    public let backend: any KernelBackend
    public let reaper: Reaper
    /// The shared raw_syscalls hooks that tp_btf and raw_tp syscall probes join.
    public let hubs: SyscallHubs

    /// `hubSlots`: probes each shared syscall hook can hold (the agent passes its probe limit).
    public init(backend: any KernelBackend, reaper: Reaper = .shared, hubSlots: Int = 256) {
        self.backend = backend
        self.reaper = reaper
        hubs = SyscallHubs(backend: backend, reaper: reaper, slots: hubSlots)
    }

    /// What one flavour loads and attaches for one target.
    struct Recipe {
        var load: LoadSpec
        /// (program, attach point, mechanism it exercises), in attach order.
        var attachments: [(program: String, point: AttachPoint, mechanism: Mechanism)]
    }

    /// Kernel functions that implement a syscall, in the order fentry tries them. A
    /// zero-argument syscall's `__x64_sys_X` is an alias of `__do_sys_X` with no BTF of
    /// its own, so fentry can only bind to the latter.
    static func syscallFunctions(_ name: String, facts: KernelFacts) -> [String] {
        ["\(facts.syscallPrefix ?? "")sys_\(name)", "__do_sys_\(name)"]
    }

    static func recipe(_ flavour: Flavour, spec: ProbeSpec, facts: KernelFacts, taskStorage: Bool,
                       function: String? = nil) -> Recipe {
        var readOnly: [String: [UInt8]] = [:]
        if let pid = spec.filter?.pid { readOnly["filter_tgid"] = bytes(UInt32(pid)) }
        if let comm = spec.filter?.comm {
            readOnly["filter_comm_set"] = [1]
            var raw = Array(comm.utf8.prefix(15))
            raw += Array(repeating: 0, count: 16 - raw.count)
            readOnly["filter_comm"] = raw
        }
        readOnly["use_task_storage"] = [taskStorage ? 1 : 0]
        let changes: [String: LoadSpec.MapChange] = taskStorage ? [:] : ["starts": .taskStorageToHash(maxEntries: 16384)]
        let target = spec.target
        let name = target.name ?? ""
        let kernelFunction = function ?? (target.type == .syscall ? syscallFunctions(name, facts: facts)[0] : name)
        func make(_ programs: [LoadSpec.Program], _ attachments: [(String, AttachPoint, Mechanism)]) -> Recipe {
            Recipe(load: LoadSpec(object: "latency", programs: programs, readOnly: readOnly, mapChanges: changes),
                   attachments: attachments.map { (program: $0.0, point: $0.1, mechanism: $0.2) })
        }
        switch (flavour, target.type) {
        case (.fentry, _):
            return make([.init("lat_fentry", loadTimeTarget: kernelFunction), .init("lat_fexit", loadTimeTarget: kernelFunction)],
                        [("lat_fentry", .loadTimeTarget, .fentry), ("lat_fexit", .loadTimeTarget, .fexit)])
        case (.kprobe, _):
            return make([.init("lat_kprobe"), .init("lat_kretprobe")],
                        [("lat_kprobe", .kprobe(function: kernelFunction, retprobe: false), .kprobe),
                         ("lat_kretprobe", .kprobe(function: kernelFunction, retprobe: true), .kretprobe)])
        case (.tracepoint, .syscall):
            return make([.init("lat_sys_enter"), .init("lat_sys_exit")],
                        [("lat_sys_enter", .tracepoint(category: "syscalls", name: "sys_enter_\(name)"), .tracepoint),
                         ("lat_sys_exit", .tracepoint(category: "syscalls", name: "sys_exit_\(name)"), .tracepoint)])
        case (.tpBTF, .syscall), (.rawTracepoint, .syscall):
            preconditionFailure("raw_syscalls probes join the shared hook (SyscallHub), they have no recipe")
        case (.tpBTF, _):
            let event = String(name.split(separator: ":").last ?? "")
            return make([.init("cnt_tp_btf", loadTimeTarget: event)], [("cnt_tp_btf", .loadTimeTarget, .tpBTF)])
        case (.rawTracepoint, _):
            let event = String(name.split(separator: ":").last ?? "")
            return make([.init("cnt_raw_tp")], [("cnt_raw_tp", .rawTracepoint(name: event), .rawTracepoint)])
        case (.tracepoint, _):
            let parts = name.split(separator: ":").map(String.init)
            return make([.init("cnt_tracepoint")],
                        [("cnt_tracepoint", .tracepoint(category: parts.first ?? "", name: parts.last ?? ""), .tracepoint)])
        case (.uprobe, _):
            let pid = spec.filter?.pid.map(Int32.init)
            let path = target.path ?? "", symbol = target.symbol ?? ""
            return make([.init("lat_uprobe"), .init("lat_uretprobe")],
                        [("lat_uprobe", .uprobe(binary: path, symbol: symbol, pid: pid, retprobe: false), .uprobe),
                         ("lat_uretprobe", .uprobe(binary: path, symbol: symbol, pid: pid, retprobe: true), .uretprobe)])
        }
    }

    static func bytes<T: FixedWidthInteger>(_ value: T) -> [UInt8] {
        withUnsafeBytes(of: value.littleEndian, Array.init)
    }

    /// Attaches `spec` with the first flavour that works, or fails with every attempt.
    /// `report` supplies the syscall prefix, task-storage support and disabled mechanisms.
    public func attach(_ spec: ProbeSpec, report: CapabilityReport) -> Result<AttachedProbe, AttachFailure> {
        // A uprobe path that cannot hold uprobes (missing, not a regular file, not ELF) is
        // refused before libbpf opens it: its open would block forever on a FIFO.
        if spec.target.type == .uprobe, let refused = spec.target.uprobeBinaryProblem() {
            return .failure(AttachFailure(attempts: [refused]))
        }
        var attempts: [AttachAttempt] = []
        let disabled = Set(report.mechanisms.filter { $0.disabled == true }.compactMap { Mechanism(rawValue: $0.name) })
        for flavour in spec.flavours where flavour.applies(to: spec.target.type) {
            let needs = flavour.requires(for: spec.target.type)
            if let off = needs.first(where: disabled.contains) {
                attempts.append(AttachAttempt(mechanism: flavour.rawValue, outcome: .unsupported, stage: nil, errno: nil,
                                              message: "\(off.rawValue) is disabled by configuration (--disable-mechanism)"))
                continue
            }
            // A mechanism the capability probe found unusable on this kernel is not loaded
            // again for every probe (each failed fentry load parses vmlinux BTF anew):
            // its verdict is recorded instead. POST /v1/capabilities/refresh re-tests.
            if let broken = needs.compactMap({ report.result(for: $0) }).first(where: { $0.status != .supported }) {
                attempts.append(AttachAttempt(
                    mechanism: flavour.rawValue, outcome: Self.outcome(broken.status), stage: broken.stage, errno: broken.errno,
                    message: "\(broken.message) (found by the capability probe at \(ReportJSON.rfc3339(report.probedAt)); not retried)"))
                continue
            }
            switch attempt(flavour, spec: spec, report: report) {
            case .success(let probe):
                attempts.append(AttachAttempt(mechanism: flavour.rawValue, outcome: .attached, stage: "attach", errno: nil,
                                              message: "attached via \(flavour.via(for: spec.target.type))\(probe.boundTo.map { " (\($0))" } ?? "")"))
                probe.attempts = attempts
                return .success(probe)
            case .failure(let attempt):
                attempts.append(attempt)
            }
        }
        return .failure(AttachFailure(attempts: attempts))
    }

    func attempt(_ flavour: Flavour, spec: ProbeSpec, report: CapabilityReport) -> Result<AttachedProbe, AttachAttempt> {
        guard flavour == .fentry, spec.target.type == .syscall, let name = spec.target.name else {
            return attempt(flavour, spec: spec, report: report, function: nil)
        }
        // Try each function that implements the syscall; only "not in BTF" moves on.
        var result: Result<AttachedProbe, AttachAttempt>!
        for function in Self.syscallFunctions(name, facts: report.kernel) {
            result = attempt(flavour, spec: spec, report: report, function: function)
            guard case .failure(let failed) = result, failed.stage == "load", ["ESRCH", "ENOENT"].contains(failed.errno) else { break }
        }
        return result
    }

    func attempt(_ flavour: Flavour, spec: ProbeSpec, report: CapabilityReport, function: String?) -> Result<AttachedProbe, AttachAttempt> {
        if spec.target.type == .syscall, let hub = hubs[flavour] {
            guard let nr = spec.target.name.flatMap(SyscallTable.number(of:)) else {
                return .failure(AttachAttempt(mechanism: flavour.rawValue, outcome: .unsupported, stage: "attach", errno: "ENOENT",
                                              message: "no syscall of this name on this architecture"))
            }
            return hub.join(nr: UInt32(nr), filter: spec.filter, report: report).map { membership in
                AttachedProbe(flavour: flavour, hub: membership, boundTo: "syscall nr \(nr), slot \(membership.slot)")
            }
        }
        return Self.loadAndAttach(flavour, taskStorage: report.supports(.taskStorage), facts: report.kernel,
                                  backend: backend, reaper: reaper) { taskStorage in
            Self.recipe(flavour, spec: spec, facts: report.kernel, taskStorage: taskStorage, function: function)
        }.map { made in
            AttachedProbe(flavour: flavour, object: made.object, links: made.links, countsOnly: spec.target.type == .tracepoint,
                          taskStorage: made.taskStorage, boundTo: Self.boundTo(made.recipe))
        }
    }

    /// Loads the object of `make(taskStorage)` and attaches its programs in order. A kernel
    /// that refuses task storage for the program type (EINVAL) gets the recipe again with a
    /// thread-id hash instead; an attach that fails half-way is rolled back through the reaper.
    static func loadAndAttach(_ flavour: Flavour, taskStorage: Bool, facts: KernelFacts, backend: any KernelBackend, reaper: Reaper,
                              make: (_ taskStorage: Bool) -> Recipe)
        -> Result<(object: any LoadedObject, links: [any AttachedLink], taskStorage: Bool, recipe: Recipe), AttachAttempt> {
        var taskStorage = taskStorage
        var recipe = make(taskStorage)
        var object: (any LoadedObject)?
        var lastError: KernelError?
        for _ in 0..<2 where object == nil {
            do {
                object = try backend.load(recipe.load)
            } catch {
                lastError = error
                guard taskStorage, error.errno == EINVAL else { break }
                taskStorage = false
                recipe = make(false)
            }
        }
        guard let object else {
            let error = lastError ?? KernelError(stage: .load, errno: 0, operation: "load")
            return .failure(failedAttempt(flavour, recipe.attachments.first?.mechanism ?? .tracepoint, error, facts))
        }
        var links: [any AttachedLink] = []
        for step in recipe.attachments {
            do {
                links.append(try object.attach(program: step.program, to: step.point))
            } catch {
                reaper.dispose(links: links, objects: [object])  // roll back what this attempt made
                return .failure(failedAttempt(flavour, step.mechanism, error, facts))
            }
        }
        return .success((object, links, taskStorage, recipe))
    }

    /// The kernel function or event a recipe binds to, for the attempt message.
    static func boundTo(_ recipe: Recipe) -> String? {
        if let target = recipe.load.programs.first?.loadTimeTarget { return target }
        switch recipe.attachments.first?.point {
        case .kprobe(let function, _): return function
        case .tracepoint(let category, let name): return "\(category):\(name)"
        case .rawTracepoint(let name): return name
        case .uprobe(let binary, let symbol, _, _): return "\(binary):\(symbol)"
        default: return nil
        }
    }

    static func outcome(_ status: CapabilityStatus) -> AttachAttempt.Outcome {
        switch status {
        case .supported: .attached
        case .unsupported: .unsupported
        case .denied: .denied
        case .error: .error
        }
    }

    static func failedAttempt(_ flavour: Flavour, _ mechanism: Mechanism, _ error: KernelError, _ facts: KernelFacts) -> AttachAttempt {
        var verdict = Classifier.classify(mechanism, error, facts: facts)
        if error.stage == .load, [ESRCH, ENOENT].contains(error.errno), flavour == .fentry || flavour == .tpBTF {
            verdict.message = flavour == .fentry
                ? "the function is not in the kernel's BTF (missing, inlined or static without BTF), so fentry/fexit cannot bind to it"
                : "the tracepoint is not in the kernel's BTF, so tp_btf cannot bind to it"
        }
        let outcome = outcome(verdict.status)
        let stage = error.stage == .attach ? "attach" : "load"
        return AttachAttempt(mechanism: flavour.rawValue, outcome: outcome, stage: stage, errno: error.errnoName, message: verdict.message)
    }
}
extension AttachAttempt: Error {}
