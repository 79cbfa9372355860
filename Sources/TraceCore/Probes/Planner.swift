/// Tries a probe's flavours in order against the real target and keeps the first that
/// attaches: one loop over ``FlavourCatalog`` descriptors. Every attempt is recorded; a
/// half-done attach is rolled back. Synchronous and blocking (BPF loads): callers run it
/// off the task pool (see ``BlockingWork``).
public struct Planner: Sendable {
    let attacher: ObjectAttacher
    public var reaper: Reaper { attacher.reaper }
    /// The host the backend runs on (target schemas for spec validation).
    public var host: any HostEnvironment { attacher.backend.host }
    /// The shared raw_syscalls hooks that tp_btf and raw_tp syscall probes join.
    public let hubs: SyscallHubs

    /// Whether every probe is built to sample and suspend (serve --max-cpu-percent), not only
    /// probes with a `budget`.
    public let budgetsEveryProbe: Bool

    /// `hubSlots`: probes each shared syscall hook can hold (the agent passes its probe limit).
    /// `pinRoot`: the pin directory (`serve --pin-dir`), where the shared hooks pin themselves.
    public init(backend: any KernelBackend, reaper: Reaper = .shared, hubSlots: Int = 256, budgetsEveryProbe: Bool = false,
                pinRoot: String? = nil) {
        attacher = ObjectAttacher(backend: backend, reaper: reaper)
        self.budgetsEveryProbe = budgetsEveryProbe
        hubs = SyscallHubs(attacher: attacher, slots: hubSlots, pinRoot: pinRoot)
    }

    /// Attaches `spec` with the first flavour that works, or fails with every attempt.
    /// `report` supplies the kernel facts, task-storage support, the capability verdicts
    /// and the mechanisms switched off. A flavour that fails for want of the agent's own
    /// resources (EMFILE, ENFILE, ENOMEM) ends the chain: a later flavour attaching then
    /// would be chosen for the wrong reason.
    public func attach(_ spec: ProbeSpec, report: CapabilityReport) -> Result<AttachedProbe, AttachFailure> {
        // The report's mounts as they are now: tracefs or cgroup2 unmounted since the probe
        // is said so, not taken for a kernel without the tracepoint or the cgroup.
        var report = report
        report.kernel = host.current(report.kernel)
        // A uprobe path that cannot hold uprobes (missing, not a regular file, not ELF) is
        // refused before libbpf opens it: its open would block forever on a FIFO.
        if spec.target.type == .uprobe, let refused = spec.target.uprobeBinaryProblem() {
            return .failure(AttachFailure(attempts: [refused]))
        }
        let plan: AggregatePlan
        switch AggregatePlan.resolve(spec, schema: host.schema(for: spec.target)) {
        case .success(let resolved): plan = resolved
        case .failure(let errors):
            // Specs are validated before they reach the planner; a schema that changed since
            // (a module unloaded) ends here.
            let message = errors.list.map { "\($0.field) \($0.message)" }.joined(separator: "; ")
            return .failure(AttachFailure(attempts: [AttachAttempt(flavour: spec.flavours.first ?? .tracepoint, outcome: .unsupported,
                                                                   stage: nil, errno: nil, message: message)]))
        }
        let cgroup: CgroupFilter?
        switch Self.cgroupFilter(spec, plan: plan, report: report, host: host) {
        case .success(let resolved): cgroup = resolved
        case .failure(let refused):
            let message = "\(refused.field): \(refused.message)"
            return .failure(AttachFailure(attempts: [AttachAttempt(flavour: spec.flavours.first ?? FlavourCatalog.chain(for: spec).first?.flavour ?? .tracepoint,
                                                                   outcome: .unsupported, stage: nil, errno: nil, message: message)],
                                          refusal: message))
        }
        // The file as it is before libbpf opens it (for a PUT to notice it was replaced).
        let uprobeFile = spec.target.type == .uprobe ? spec.target.path.flatMap(AttachedProbe.UprobeFile.init(path:)) : nil
        var attempts: [AttachAttempt] = []
        for descriptor in FlavourCatalog.chain(for: spec) {
            if let skipped = Self.skip(descriptor, report: report) {
                attempts.append(skipped)
                continue
            }
            switch attempt(descriptor, spec: spec, plan: plan, cgroup: cgroup, report: report) {
            case .success(let probe):
                let bound = probe.boundTo.map { " (\($0))" } ?? ""
                attempts.append(AttachAttempt(flavour: descriptor.flavour, outcome: .attached, stage: .attach, errno: nil,
                                              message: "attached via \(descriptor.via(for: spec.target.type))\(bound)"))
                probe.attempts = attempts
                probe.recordUprobeFile(uprobeFile)
                return .success(probe)
            case .failure(let failed):
                attempts.append(failed)
                if failed.errno?.isResourceExhaustion == true { return .failure(AttachFailure(attempts: attempts)) }
            }
        }
        return .failure(AttachFailure(attempts: attempts))
    }

    /// The attempt to record instead of trying `descriptor`, when it is not to be tried:
    /// switched off, unusable in this build, or found unusable by the capability probe. Such
    /// a verdict is not retried for every probe (each failed fentry load parses vmlinux BTF
    /// anew); `POST /v1/capabilities/refresh` re-tests. Resource exhaustion during the probe
    /// says nothing about the kernel, so it does not count as a verdict.
    static func skip(_ descriptor: FlavourDescriptor, report: CapabilityReport) -> AttachAttempt? {
        let flavour = descriptor.flavour
        if let off = descriptor.needs.first(where: report.disabledMechanisms.contains) {
            return AttachAttempt(flavour: flavour, outcome: .unsupported, stage: nil, errno: nil,
                                 message: "\(off.rawValue) is disabled by configuration (--disable-mechanism)")
        }
        if let why = descriptor.unavailable {
            return AttachAttempt(flavour: flavour, outcome: .unsupported, stage: nil, errno: nil, message: why)
        }
        let verdicts = descriptor.needs.compactMap { report.result(for: $0) }
        if let broken = verdicts.first(where: { $0.status != .supported && !$0.isResourceExhaustion }) {
            return AttachAttempt(
                flavour: flavour, outcome: .init(broken.status), stage: broken.stage, errno: broken.errno,
                message: "\(broken.message) (found by the capability probe at \(ReportJSON.rfc3339(report.probedAt)); not retried)")
        }
        return nil
    }

    /// The probe's cgroup filter, found on this host now (a cgroup made again since the
    /// probe was made has another id: a restored probe finds it anew); a refusal when the
    /// filter names no cgroup, or a cgroup key or filter meets a host without cgroup2.
    static func cgroupFilter(_ spec: ProbeSpec, plan: AggregatePlan, report: CapabilityReport,
                             host: any HostEnvironment) -> Result<CgroupFilter?, CgroupLookupError> {
        let fact = report.kernel.cgroup2
        if fact.layout == .none, let i = plan.parts.firstIndex(where: { $0.name == "cgroup" }) {
            return .failure(CgroupLookupError(field: "aggregate.by[\(i)]", message: "the cgroup key needs cgroup v2, and this host has none (\(fact.error ?? "no cgroup2 mount"))"))
        }
        guard let selector = spec.filter?.cgroupSelector else { return .success(nil) }
        return host.matchCgroup(selector, fact: fact).map { CgroupFilter(match: $0, ancestorHelper: report.supports(.cgroupAncestor)) }
    }

    func attempt(_ descriptor: FlavourDescriptor, spec: ProbeSpec, plan: AggregatePlan, cgroup: CgroupFilter?,
                 report: CapabilityReport) -> Result<AttachedProbe, AttachAttempt> {
        if let why = descriptor.keySupport(plan) {
            return .failure(AttachAttempt(flavour: descriptor.flavour, outcome: .unsupported, stage: nil, errno: nil, message: why))
        }
        var input = RecipeInput(spec: spec, facts: report.kernel, taskStorage: report.supports(.taskStorage), binding: nil, plan: plan)
        input.cgroup = cgroup
        input.cgroupAncestor = report.supports(.cgroupAncestor)
        input.budgeted = spec.budget != nil || budgetsEveryProbe
        switch descriptor.strategy {
        case .sharedSyscallHook:
            guard let hub = hubs[descriptor.id] else { preconditionFailure("no shared hook for flavour \(descriptor.id)") }
            return hub.join(input)
        case .ownObject:
            // Try each kernel name the flavour can bind to; only "not in BTF" moves on.
            let bindings: [String?] = descriptor.bindings(spec.target, report.kernel).map { $0 }
            var result: Result<AttachedProbe, AttachAttempt>!
            for binding in bindings.isEmpty ? [nil] : bindings {
                var bound = input
                bound.binding = binding
                result = attacher.attach(descriptor, bound).flatMap { made in
                    var events: ProbeEvents?
                    var notices: KeyNotices?
                    // The events ring: its events, or only a ustack probe's new-key notices.
                    do throws(KernelError) {
                        if let spec = spec.events {
                            let ring = try made.object.openRing(LatencyBPF.Maps.events, index: nil)
                            events = ProbeEvents(ring: ring, spec: spec, plan: plan, layout: .own,
                                                 kind: descriptor.measures == .events ? "tracepoint" : "call")
                        } else {
                            notices = try KeyNotices.open(made.object, plan: plan)
                        }
                    } catch {
                        attacher.reaper.dispose(links: made.links, objects: [made.object])
                        return .failure(.failed(descriptor.flavour, descriptor.needs[0], error, facts: report.kernel))
                    }
                    return .success(AttachedProbe(descriptor: descriptor, object: made.object, links: made.links, taskStorage: made.taskStorage,
                                                  boundTo: made.recipe.boundTo, plan: plan,
                                                  reportsAggregate: spec.aggregate != nil || spec.target.type == .profile, events: events,
                                                  notices: notices, budgeted: input.budgeted, attachments: made.recipe.attachments))
                }
                guard case .failure(let failed) = result, failed.stage == .load, failed.errno == .ESRCH || failed.errno == .ENOENT else { break }
            }
            return result
        }
    }
}
