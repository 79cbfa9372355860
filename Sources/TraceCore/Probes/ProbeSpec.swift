import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What a probe traces.
public struct ProbeTarget: Sendable, Codable, Hashable {
    public var type: TargetType
    /// Syscall name (`read`), kernel function (`vfs_read`) or tracepoint (`sched:sched_switch`).
    public var name: String?
    /// uprobe: the ELF file.
    public var path: String?
    /// uprobe: the function symbol.
    public var symbol: String?
    /// profile: samples per second on each CPU (1 to 1,000; default 99).
    public var frequencyHz: Int?

    public init(type: TargetType, name: String? = nil, path: String? = nil, symbol: String? = nil, frequencyHz: Int? = nil) {
        self.type = type
        self.name = name
        self.path = path
        self.symbol = symbol
        self.frequencyHz = frequencyHz
    }

    enum CodingKeys: String, CodingKey {
        case type, name, path, symbol
        case frequencyHz = "frequency_hz"
    }

    /// A profile's default rate: not a divisor of common timer rates, so samples do not
    /// fall in step with periodic work.
    public static let defaultFrequencyHz = 99
    public static let maxFrequencyHz = 1000
    /// The sampling rate of a profile target.
    public var frequency: Int { frequencyHz ?? Self.defaultFrequencyHz }

    /// `syscall:read`, `function:vfs_read`, `tracepoint:sched:sched_switch`, `uprobe:/path:symbol`.
    public var label: String {
        switch type {
        case .uprobe: "uprobe:\(path ?? ""):\(symbol ?? "")"
        case .profile: "profile:\(frequency)hz"
        default: "\(type.rawValue):\(name ?? "")"
        }
    }
}

/// Only events from this process / command / cgroup are counted. Checked in the kernel
/// before any map operation.
public struct ProbeFilter: Sendable, Codable, Hashable {
    public var pid: Int?
    public var comm: String?
    /// Only calls at least this slow are counted (call targets).
    public var minLatencyNs: Int?
    /// A cgroup v2 path relative to the cgroup2 mount: calls from it and its descendants.
    public var cgroup: String?
    /// A container (docker, containerd, cri-o, podman): its cgroup and descendants. The
    /// full id, or a prefix of at least 12 hex digits that names one container.
    public var containerID: String?
    /// A Kubernetes pod (kubelet's pod UID): every container of the pod, later ones too.
    public var podUID: String?

    public init(pid: Int? = nil, comm: String? = nil, minLatencyNs: Int? = nil, cgroup: String? = nil,
                containerID: String? = nil, podUID: String? = nil) {
        self.pid = pid
        self.comm = comm
        self.minLatencyNs = minLatencyNs
        self.cgroup = cgroup
        self.containerID = containerID
        self.podUID = podUID
    }

    enum CodingKeys: String, CodingKey {
        case pid, comm, cgroup
        case minLatencyNs = "min_latency_ns"
        case containerID = "container_id"
        case podUID = "pod_uid"
    }

    /// The cgroup the filter names, in whichever form it was given.
    public var cgroupSelector: CgroupSelector? {
        if let cgroup { return .path(cgroup) }
        if let containerID { return .container(containerID.lowercased()) }
        if let podUID { return .pod(podUID.lowercased().replacingOccurrences(of: "_", with: "-")) }
        return nil
    }
}

/// How a filter names a cgroup.
public enum CgroupSelector: Sendable, Hashable {
    case path(String)
    case container(String)
    case pod(String)

    /// The spec field it came from.
    public var field: String {
        switch self {
        case .path: "filter.cgroup"
        case .container: "filter.container_id"
        case .pod: "filter.pod_uid"
        }
    }
}

/// A probe as a user asks for it.
public struct ProbeSpec: Sendable, Codable, Hashable {
    public var name: String?
    public var target: ProbeTarget
    /// Allowed mechanisms in preference order; nil means the default chain.
    public var mechanisms: [String]?
    public var filter: ProbeFilter?
    public var ttlSeconds: Int?
    public var labels: [String: String]?
    /// Keys and values counted in the kernel; nil: totals, latency and top processes only.
    public var aggregate: AggregateSpec?
    /// Calls (or events) streamed one by one; nil: none.
    public var events: EventsSpec?
    /// What the probe may cost; nil: no limit of its own (serve --max-cpu-percent may still apply).
    public var budget: BudgetSpec?

    public init(name: String? = nil, target: ProbeTarget, mechanisms: [String]? = nil, filter: ProbeFilter? = nil,
                ttlSeconds: Int? = nil, labels: [String: String]? = nil, aggregate: AggregateSpec? = nil, events: EventsSpec? = nil,
                budget: BudgetSpec? = nil) {
        self.aggregate = aggregate
        self.events = events
        self.budget = budget
        self.name = name
        self.target = target
        self.mechanisms = mechanisms
        self.filter = filter
        self.ttlSeconds = ttlSeconds
        self.labels = labels
    }

    enum CodingKeys: String, CodingKey {
        case name, target, mechanisms, filter, labels, aggregate, events, budget
        case ttlSeconds = "ttl_seconds"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(target, forKey: .target)
        try c.encode(mechanisms, forKey: .mechanisms)
        try c.encode(filter, forKey: .filter)
        try c.encode(ttlSeconds, forKey: .ttlSeconds)
        try c.encode(labels ?? [:], forKey: .labels)
        try c.encodeIfPresent(aggregate, forKey: .aggregate)
        try c.encodeIfPresent(events, forKey: .events)
        try c.encodeIfPresent(budget, forKey: .budget)
    }
}

/// A problem with one field of a spec (for the `errors` member of a 400 problem).
public struct FieldError: Sendable, Codable, Hashable, Error {
    /// JSON pointer-ish path of the field, e.g. `target.name`.
    public var field: String
    public var message: String
    public init(field: String, message: String) {
        self.field = field
        self.message = message
    }
}

extension ProbeSpec {
    public static let namePattern = "^[a-z0-9][a-z0-9_.-]{0,62}$"
    public static let maxTTLSeconds = 31_536_000

    static func validName(_ name: String) -> Bool {
        guard (1...63).contains(name.utf8.count) else { return false }
        for (i, c) in name.utf8.enumerated() {
            let alnum = (c >= 0x61 && c <= 0x7A) || (c >= 0x30 && c <= 0x39)
            if i == 0 ? !alnum : !(alnum || c == 0x5F || c == 0x2E || c == 0x2D) { return false }
        }
        return true
    }

    static func validIdentifier(_ s: String, extra: Set<UInt8> = []) -> Bool {
        guard (1...128).contains(s.utf8.count) else { return false }
        return s.utf8.allSatisfy { c in
            (c >= 0x61 && c <= 0x7A) || (c >= 0x41 && c <= 0x5A) || (c >= 0x30 && c <= 0x39) || c == 0x5F || extra.contains(c)
        }
    }

    static func isHexDigit(_ c: UInt8) -> Bool {
        (c >= 0x30 && c <= 0x39) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46)
    }

    /// A UUID, with dashes or (as kubelet's systemd driver writes it) underscores, or 32
    /// hex digits (static pods).
    static func validPodUID(_ s: String) -> Bool {
        if s.utf8.count == 32 { return s.utf8.allSatisfy(isHexDigit) }  // a static pod's: its config's hash
        let groups = s.split(separator: s.contains("_") ? "_" : "-", omittingEmptySubsequences: false)
        return groups.map(\.utf8.count) == [8, 4, 4, 4, 12] && groups.allSatisfy { $0.utf8.allSatisfy(isHexDigit) }
    }

    /// Why `path` cannot name a cgroup under the cgroup2 mount, if it cannot.
    static func cgroupPathProblem(_ path: String) -> String? {
        guard path.hasPrefix("/") else { return "must be a path relative to the cgroup2 mount, starting with / (e.g. /system.slice/nginx.service)" }
        guard path.utf8.count <= 4096, !path.utf8.contains(0) else { return "must be at most 4096 bytes, without NUL" }
        let parts = path.split(separator: "/", omittingEmptySubsequences: false).dropFirst()
        if path != "/" && parts.contains(where: { $0.isEmpty || $0 == "." || $0 == ".." }) {
            return "must be a normalized path: no empty, . or .. components, no trailing /"
        }
        return nil
    }

    /// Checks the spec's form (not whether the kernel can attach it). Returns every problem.
    public func validate() -> [FieldError] {
        var errors: [FieldError] = []
        if let name, !Self.validName(name) {
            errors.append(FieldError(field: "name", message: "must match \(Self.namePattern)"))
        }
        if target.frequencyHz != nil, target.type != .profile {
            errors.append(FieldError(field: "target.frequency_hz", message: "only profile targets take a sampling frequency"))
        }
        switch target.type {
        case .profile:
            if target.name != nil || target.path != nil || target.symbol != nil {
                errors.append(FieldError(field: "target", message: "profile targets take only `frequency_hz`"))
            }
            if let hz = target.frequencyHz, !(1...ProbeTarget.maxFrequencyHz).contains(hz) {
                errors.append(FieldError(field: "target.frequency_hz", message: "must be from 1 to \(ProbeTarget.maxFrequencyHz) samples per second"))
            }
        case .syscall, .function:
            if target.path != nil || target.symbol != nil {
                errors.append(FieldError(field: "target", message: "\(target.type.rawValue) targets take only `name`"))
            }
            if let name = target.name {
                if !Self.validIdentifier(name) {
                    errors.append(FieldError(field: "target.name", message: "must be a C identifier (letters, digits, underscore), at most 128 bytes"))
                } else if target.type == .syscall, SyscallTable.number(of: name) == nil {
                    errors.append(FieldError(field: "target.name", message: "unknown syscall '\(name)' on this architecture"))
                }
            } else {
                errors.append(FieldError(field: "target.name", message: "is required"))
            }
        case .tracepoint:
            if target.path != nil || target.symbol != nil {
                errors.append(FieldError(field: "target", message: "tracepoint targets take only `name`"))
            }
            if let name = target.name {
                let parts = name.split(separator: ":", omittingEmptySubsequences: false)
                if parts.count != 2 || !parts.allSatisfy({ Self.validIdentifier(String($0)) }) {
                    errors.append(FieldError(field: "target.name", message: "must be `category:event` with identifier characters only, e.g. sched:sched_switch"))
                }
            } else {
                errors.append(FieldError(field: "target.name", message: "is required"))
            }
        case .uprobe:
            if target.name != nil {
                errors.append(FieldError(field: "target.name", message: "uprobe targets take `path` and `symbol`, not `name`"))
            }
            if let path = target.path {
                if !path.hasPrefix("/") || path.utf8.count > 4096 || path.utf8.contains(0) {
                    errors.append(FieldError(field: "target.path", message: "must be an absolute path"))
                } else if path.split(separator: "/").contains("..") {
                    errors.append(FieldError(field: "target.path", message: "must not contain `..`"))
                }
            } else {
                errors.append(FieldError(field: "target.path", message: "is required"))
            }
            if let symbol = target.symbol {
                if !Self.validIdentifier(symbol, extra: [0x2E, 0x40, 0x24]) {
                    errors.append(FieldError(field: "target.symbol", message: "must be a symbol name (letters, digits, _ . @ $), at most 128 bytes"))
                }
            } else {
                errors.append(FieldError(field: "target.symbol", message: "is required"))
            }
        }
        if let mechanisms {
            if mechanisms.isEmpty {
                errors.append(FieldError(field: "mechanisms", message: "must not be empty; omit it for the default chain"))
            }
            if mechanisms.count > 16 {
                errors.append(FieldError(field: "mechanisms", message: "at most 16 entries"))
            }
            for (i, m) in mechanisms.prefix(16).enumerated() {
                guard let flavour = Flavour(specName: m) else {
                    errors.append(FieldError(field: "mechanisms[\(i)]", message: "unknown mechanism '\(m.prefix(64))'; known: \(Flavour.specNames)"))
                    continue
                }
                if FlavourCatalog.descriptor(flavour, for: target.type) == nil {
                    errors.append(FieldError(field: "mechanisms[\(i)]", message: "\(m) cannot trace a \(target.type.rawValue) target; usable: \(FlavourCatalog.chain(for: target.type).map(\.flavour.rawValue).joined(separator: ", "))"))
                }
            }
        }
        if let filter {
            if let pid = filter.pid, pid < 1 || pid > 4_194_304 {
                errors.append(FieldError(field: "filter.pid", message: "must be a process id from 1 to 4194304"))
            }
            if let comm = filter.comm, comm.isEmpty || comm.utf8.count > 15 || comm.utf8.contains(0) {
                errors.append(FieldError(field: "filter.comm", message: "must be 1 to 15 bytes (the kernel's comm length)"))
            }
            let cgroupFields = [("filter.cgroup", filter.cgroup), ("filter.container_id", filter.containerID), ("filter.pod_uid", filter.podUID)]
                .filter { $0.1 != nil }.map(\.0)
            if cgroupFields.count > 1 {
                errors.append(FieldError(field: cgroupFields[1], message: "give one of filter.cgroup, filter.container_id and filter.pod_uid, not \(cgroupFields.joined(separator: " and "))"))
            }
            if let path = filter.cgroup, let problem = Self.cgroupPathProblem(path) {
                errors.append(FieldError(field: "filter.cgroup", message: problem))
            }
            if let id = filter.containerID, !(12...64).contains(id.utf8.count) || !id.utf8.allSatisfy(Self.isHexDigit) {
                errors.append(FieldError(field: "filter.container_id", message: "must be a container id: 12 to 64 hex digits (the full id, or a prefix of it that names one container)"))
            }
            if let uid = filter.podUID, !Self.validPodUID(uid) {
                errors.append(FieldError(field: "filter.pod_uid", message: "must be a pod UID: 8-4-4-4-12 hex digits, or a static pod's 32 (`kubectl get pod -o jsonpath='{.metadata.uid}'`)"))
            }
        }
        if let events { errors += events.validate(target: target.type) }
        if let budget { errors += budget.validate() }
        if let ttl = ttlSeconds, ttl < 1 || ttl > Self.maxTTLSeconds {
            errors.append(FieldError(field: "ttl_seconds", message: "must be from 1 to \(Self.maxTTLSeconds)"))
        }
        if let labels {
            if labels.count > 32 { errors.append(FieldError(field: "labels", message: "at most 32 labels")) }
            for (key, value) in labels.sorted(by: { $0.key < $1.key }) {
                let validKey = key.utf8.first.map { !($0 >= 0x30 && $0 <= 0x39) } ?? false
                    && !key.hasPrefix("__") && Self.validIdentifier(key) && key.utf8.count <= 64
                if !validKey {
                    errors.append(FieldError(field: "labels.\(key.prefix(64))", message: "label names must match ^[a-zA-Z_][a-zA-Z0-9_]{0,63}$ and not start with __"))
                }
                if value.utf8.count > 256 {
                    errors.append(FieldError(field: "labels.\(key.prefix(64))", message: "label values are at most 256 bytes"))
                }
            }
        }
        return errors
    }

    /// The flavour names to try: the spec's mechanisms (aliases resolved, duplicates
    /// dropped) or the default chain's.
    public var flavours: [Flavour] {
        guard let mechanisms else { return FlavourCatalog.chain(for: target.type).map(\.flavour) }
        var seen = Set<Flavour>()
        return mechanisms.compactMap(Flavour.init(specName:)).filter { seen.insert($0).inserted }
    }
}

extension ProbeTarget {
    /// For a uprobe target whose form is valid: why its `path` cannot hold uprobes on this
    /// host (missing, unreadable, not a regular file, not an ELF executable or shared
    /// object), as the failed `uprobe` attempt to report; nil when it looks usable.
    ///
    /// Only a regular file is ever opened (a device such as /dev/watchdog acts on open),
    /// with `O_NONBLOCK`, and only its ELF header is read, so a FIFO or a blocking
    /// pseudo-file never stalls the caller (libbpf's own open would block on a FIFO).
    /// The stage is null: the kernel was not asked.
    public func uprobeBinaryProblem() -> AttachAttempt? {
        guard type == .uprobe, let path else { return nil }
        func problem(_ errno: Errno, _ message: String) -> AttachAttempt {
            AttachAttempt(flavour: .uprobe, outcome: .unsupported, stage: nil, errno: errno,
                          message: "\(path) \(message); uprobes attach to ELF executables and shared libraries")
        }
        func failure(_ code: Int32) -> AttachAttempt {
            let reason: String = switch code {
            case ENOENT: "does not exist"
            case ENOTDIR: "does not exist (a parent is not a directory)"
            case EACCES, EPERM: "cannot be read by the agent"
            case ELOOP: "is a symbolic link loop"
            case ENAMETOOLONG: "is too long a path"
            default: "cannot be opened (\(Errno(rawValue: code).message))"
            }
            return problem(Errno(rawValue: code), reason)
        }
        func kind(_ mode: mode_t) -> AttachAttempt? {
            switch mode & S_IFMT {
            case S_IFREG: nil
            case S_IFDIR: problem(.EISDIR, "is a directory")
            case S_IFIFO: problem(.ENOEXEC, "is a FIFO, not a regular file")
            case S_IFCHR, S_IFBLK: problem(.ENOEXEC, "is a device, not a regular file")
            case S_IFSOCK: problem(.ENOEXEC, "is a socket, not a regular file")
            default: problem(.ENOEXEC, "is not a regular file")
            }
        }
        var info = stat()
        guard stat(path, &info) == 0 else { return failure(errno) }
        if let problem = kind(info.st_mode) { return problem }
        let fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY)
        guard fd >= 0 else { return failure(errno) }
        defer { close(fd) }
        // Replaced since the stat() above?
        guard fstat(fd, &info) == 0 else { return failure(errno) }
        if let problem = kind(info.st_mode) { return problem }
        // e_ident (16 bytes) then e_type (2 bytes, in the file's byte order).
        var header = [UInt8](repeating: 0, count: 18)
        let count = header.withUnsafeMutableBytes { pread(fd, $0.baseAddress, $0.count, 0) }
        guard count == 18, header[0..<4] == [0x7F, 0x45, 0x4C, 0x46] else {
            return problem(.ENOEXEC, "is not an ELF file (it does not start with \\x7fELF)")
        }
        let elfType = header[5] == 2 ? UInt16(header[16]) << 8 | UInt16(header[17]) : UInt16(header[17]) << 8 | UInt16(header[16])
        guard elfType == 2 || elfType == 3 else {  // ET_EXEC, ET_DYN
            return problem(.ENOEXEC, "is an ELF file but not an executable or shared object (e_type \(elfType))")
        }
        return nil
    }
}
