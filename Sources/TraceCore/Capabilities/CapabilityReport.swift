import Foundation

/// How a capability check ended.
public enum CapabilityStatus: String, Sendable, Codable, Hashable {
    case supported, unsupported, denied, error
}

/// What a capability result is about: an attach mechanism or a kernel feature.
public enum CapabilitySubject: Sendable, Hashable {
    case mechanism(Mechanism)
    case feature(Feature)

    /// The name in the report (`fentry`, `task_storage`).
    public var name: String {
        switch self {
        case .mechanism(let m): m.rawValue
        case .feature(let f): f.rawValue
        }
    }

    /// Parses a report name: mechanisms and features have distinct names.
    public init?(name: String) {
        if let m = Mechanism(rawValue: name) { self = .mechanism(m) } else if let f = Feature(rawValue: name) { self = .feature(f) } else { return nil }
    }
}

/// One checked mechanism or feature.
public struct CapabilityResult: Sendable, Codable, Hashable {
    public var subject: CapabilitySubject
    public var status: CapabilityStatus
    /// `load` or `attach` (where it failed, or the last stage reached), nil when not probed.
    public var stage: KernelStage?
    /// The errno of the failure, nil when there is none.
    public var errno: Errno?
    /// What happened and the likely cause, in one sentence.
    public var message: String
    public var durationMicroseconds: Int
    /// True when the operator switched the mechanism off (`--disable-mechanism`).
    public var disabled: Bool?

    public init(_ subject: CapabilitySubject, status: CapabilityStatus, stage: KernelStage?, errno: Errno?,
                message: String, durationMicroseconds: Int, disabled: Bool? = nil) {
        self.subject = subject
        self.status = status
        self.stage = stage
        self.errno = errno
        self.message = message
        self.durationMicroseconds = durationMicroseconds
        self.disabled = disabled
    }

    /// The name in the report.
    public var name: String { subject.name }

    /// Other names of a mechanism (`kfunc` for fentry); nil when it has none.
    public var aliases: [String]? {
        guard case .mechanism(let m) = subject, !m.aliases.isEmpty else { return nil }
        return m.aliases
    }

    /// The result failed only because the agent ran out of something of its own (fds,
    /// memory): it says nothing about the kernel, so the planner tries the mechanism anyway.
    public var isResourceExhaustion: Bool { status != .supported && errno?.isResourceExhaustion == true }

    enum CodingKeys: String, CodingKey {
        case name, aliases, status, stage, errno, message, disabled
        case durationMicroseconds = "duration_us"
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        let name = try c.decode(String.self, forKey: .name)
        guard let subject = CapabilitySubject(name: name) else {
            throw DecodingError.dataCorruptedError(forKey: .name, in: c, debugDescription: "'\(name)' is neither a mechanism nor a feature")
        }
        self.subject = subject
        status = try c.decode(CapabilityStatus.self, forKey: .status)
        stage = try c.decodeIfPresent(KernelStage.self, forKey: .stage)
        errno = try c.decodeIfPresent(Errno.self, forKey: .errno)
        message = try c.decode(String.self, forKey: .message)
        durationMicroseconds = try c.decode(Int.self, forKey: .durationMicroseconds)
        disabled = try c.decodeIfPresent(Bool.self, forKey: .disabled)
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        if let aliases { try c.encode(aliases, forKey: .aliases) }
        try c.encode(status, forKey: .status)
        try c.encode(stage, forKey: .stage)
        try c.encode(errno, forKey: .errno)
        try c.encode(message, forKey: .message)
        try c.encode(durationMicroseconds, forKey: .durationMicroseconds)
        if let disabled { try c.encode(disabled, forKey: .disabled) }
    }
}

/// A pseudo file system the agent needs, and what the agent did about it.
public struct MountFact: Sendable, Codable, Hashable {
    public var path: String
    public var mounted: Bool
    public var mountedByAgent: Bool
    /// Why it is not mounted, when it is not.
    public var error: String?

    public init(path: String, mounted: Bool, mountedByAgent: Bool, error: String? = nil) {
        self.path = path
        self.mounted = mounted
        self.mountedByAgent = mountedByAgent
        self.error = error
    }

    enum CodingKeys: String, CodingKey {
        case path, mounted, error
        case mountedByAgent = "mounted_by_agent"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(path, forKey: .path)
        try c.encode(mounted, forKey: .mounted)
        try c.encode(mountedByAgent, forKey: .mountedByAgent)
        try c.encode(error, forKey: .error)
    }
}

/// Facts about the running kernel, read from the system (never used to decide support).
public struct KernelFacts: Sendable, Codable, Hashable {
    public var release: String
    public var machine: String
    /// `/sys/kernel/btf/vmlinux` exists and parses.
    public var btf: Bool
    /// `none`, `integrity`, `confidentiality`, or null when it cannot be read.
    public var lockdown: String?
    /// `enabled`, `disabled`, `enabled-debug`, or null when unknown.
    public var jit: String?
    public var tracefs: MountFact
    public var bpffs: MountFact
    /// The syscall wrapper prefix (`__x64_`), empty for unwrapped syscalls, null when unknown.
    public var syscallPrefix: String?
    /// Perf event sources under /sys/bus/event_source/devices (kprobe, uprobe, tracepoint…).
    public var eventSources: [String]
    /// Whether tracefs offers legacy `kprobe_events`.
    public var kprobeEvents: Bool
    /// Whether the agent runs with full privileges (effective uid 0).
    public var privileged: Bool
    /// Where the cgroup v2 hierarchy is mounted (cgroup keys and filters).
    public var cgroup2: Cgroup2Fact
    /// Offsets in `struct task_struct` from vmlinux BTF (nil without BTF). Not part of the
    /// report's JSON: it configures the BPF programs.
    public var taskLayout: TaskLayout? = nil

    public init(release: String, machine: String, btf: Bool, lockdown: String?, jit: String?, tracefs: MountFact,
                bpffs: MountFact, syscallPrefix: String?, eventSources: [String], kprobeEvents: Bool, privileged: Bool,
                cgroup2: Cgroup2Fact = Cgroup2Fact(path: "/sys/fs/cgroup", layout: .unified, wholeHierarchy: true),
                taskLayout: TaskLayout? = nil) {
        self.cgroup2 = cgroup2
        self.release = release
        self.machine = machine
        self.btf = btf
        self.lockdown = lockdown
        self.jit = jit
        self.tracefs = tracefs
        self.bpffs = bpffs
        self.syscallPrefix = syscallPrefix
        self.eventSources = eventSources
        self.kprobeEvents = kprobeEvents
        self.privileged = privileged
        self.taskLayout = taskLayout
    }

    enum CodingKeys: String, CodingKey {
        case release, machine, btf, lockdown, jit, tracefs, bpffs, privileged, cgroup2
        case syscallPrefix = "syscall_prefix"
        case eventSources = "event_sources"
        case kprobeEvents = "kprobe_events"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(release, forKey: .release)
        try c.encode(machine, forKey: .machine)
        try c.encode(btf, forKey: .btf)
        try c.encode(lockdown, forKey: .lockdown)
        try c.encode(jit, forKey: .jit)
        try c.encode(tracefs, forKey: .tracefs)
        try c.encode(bpffs, forKey: .bpffs)
        try c.encode(syscallPrefix, forKey: .syscallPrefix)
        try c.encode(eventSources, forKey: .eventSources)
        try c.encode(kprobeEvents, forKey: .kprobeEvents)
        try c.encode(privileged, forKey: .privileged)
        try c.encode(cgroup2, forKey: .cgroup2)
    }
}

/// One step of a target type's default fallback chain.
public struct ChainStep: Sendable, Codable, Hashable {
    /// The name used in probe specs (`fentry`, `kprobe`, `tracepoint`, …).
    public var mechanism: Flavour
    /// The mechanisms this step needs (e.g. fentry and fexit).
    public var requires: [Mechanism]
    /// What it attaches to for this target type.
    public var via: String
    /// Whether every required mechanism is supported here.
    public var usable: Bool

    public init(mechanism: Flavour, requires: [Mechanism], via: String, usable: Bool) {
        self.mechanism = mechanism
        self.requires = requires
        self.via = via
        self.usable = usable
    }
}

/// What tracing this kernel really supports, established by loading, attaching and
/// firing real BPF programs.
public struct CapabilityReport: Sendable, Codable, Hashable {
    public var probedAt: Date
    public var durationMilliseconds: Double
    public var kernel: KernelFacts
    public var mechanisms: [CapabilityResult]
    public var features: [CapabilityResult]
    public var chains: [String: [ChainStep]]

    public init(probedAt: Date, durationMilliseconds: Double, kernel: KernelFacts, mechanisms: [CapabilityResult],
                features: [CapabilityResult], chains: [String: [ChainStep]]) {
        self.probedAt = probedAt
        self.durationMilliseconds = durationMilliseconds
        self.kernel = kernel
        self.mechanisms = mechanisms
        self.features = features
        self.chains = chains
    }

    enum CodingKeys: String, CodingKey {
        case kernel, mechanisms, features, chains
        case probedAt = "probed_at"
        case durationMilliseconds = "duration_ms"
    }

    /// The result for `mechanism`.
    public func result(for mechanism: Mechanism) -> CapabilityResult? {
        mechanisms.first { $0.subject == .mechanism(mechanism) }
    }

    /// The mechanisms the operator switched off.
    public var disabledMechanisms: Set<Mechanism> {
        Set(mechanisms.compactMap { r in
            guard r.disabled == true, case .mechanism(let m) = r.subject else { return nil }
            return m
        })
    }

    /// Whether `mechanism` loaded, attached and fired here.
    public func supports(_ mechanism: Mechanism) -> Bool {
        result(for: mechanism)?.status == .supported
    }

    /// The result for `feature`.
    public func result(for feature: Feature) -> CapabilityResult? {
        features.first { $0.subject == .feature(feature) }
    }

    public func supports(_ feature: Feature) -> Bool {
        result(for: feature)?.status == .supported
    }
}
