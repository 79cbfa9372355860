import CBPFLayouts

/// The `aggregate` member of a probe spec: what a probe counts per key, and the
/// distribution of which value (DESIGN.md, "What a probe measures").
public struct AggregateSpec: Sendable, Codable, Hashable {
    /// 0 to 3 keys: `pid`, `tid`, `comm`, `thread`, `cgroup`, `cpu`, `errno`, `ret`,
    /// `arg:NAME` or `argN`, `field:NAME`. Nil: no key table (as `[]`).
    public var by: [String]?
    /// `latency`, `ret`, `arg:NAME`/`argN`, `field:NAME` or `none`; nil: `latency` for call
    /// targets, `none` for tracepoints.
    public var value: String?
    public var histogram: HistogramSpec?
    /// Entries of the key table (default 1,024, at most 65,536).
    public var maxKeys: Int?
    /// Whether the top-process table (`by_process` in the metrics) is kept; default true.
    public var byProcess: Bool?

    public init(by: [String]? = nil, value: String? = nil, histogram: HistogramSpec? = nil, maxKeys: Int? = nil, byProcess: Bool? = nil) {
        self.by = by
        self.value = value
        self.histogram = histogram
        self.maxKeys = maxKeys
        self.byProcess = byProcess
    }

    enum CodingKeys: String, CodingKey {
        case by, value, histogram
        case maxKeys = "max_keys"
        case byProcess = "by_process"
    }

    public static let defaultMaxKeys = 1024
    public static let maxMaxKeys = 65_536
    public static let maxParts = Int(TP_KEY_PARTS)
    /// The keys of a profile target without `aggregate.by`.
    public static let profileKeys = ["comm", "ustack", "kstack"]
}

/// How the value is bucketed: `{"kind":"log2"}` or `{"kind":"linear","min":0,"max":4096,"step":256}`.
public struct HistogramSpec: Sendable, Codable, Hashable {
    public var kind: String
    public var min: Int64?
    public var max: Int64?
    public var step: Int64?

    public init(kind: String, min: Int64? = nil, max: Int64? = nil, step: Int64? = nil) {
        self.kind = kind
        self.min = min
        self.max = max
        self.step = step
    }

    /// At most this many linear buckets (between `min` and `max`).
    public static let maxLinearBuckets = 512
}

/// One key of `aggregate.by`, parsed (names not yet resolved against the target).
public enum KeyName: Sendable, Hashable {
    case pid, tid, comm, thread, cgroup, cpu, errno, ret
    case kstack, ustack
    case argName(String)
    case argIndex(Int)
    case field(String)

    /// Parses a spec key; nil when it is none of the forms.
    public init?(_ text: String) {
        switch text {
        case "pid": self = .pid
        case "tid": self = .tid
        case "comm": self = .comm
        case "thread": self = .thread
        case "cgroup": self = .cgroup
        case "cpu": self = .cpu
        case "errno": self = .errno
        case "ret": self = .ret
        case "kstack": self = .kstack
        case "ustack": self = .ustack
        default:
            if text.hasPrefix("arg:") {
                let name = String(text.dropFirst(4))
                guard ProbeSpec.validIdentifier(name), name.utf8.count <= 64 else { return nil }
                self = .argName(name)
            } else if text.hasPrefix("field:") {
                let name = String(text.dropFirst(6))
                guard ProbeSpec.validIdentifier(name), name.utf8.count <= 64 else { return nil }
                self = .field(name)
            } else if text.hasPrefix("arg"), text.count == 4, let n = Int(text.dropFirst(3)), (0..<Int(TP_ARGS)).contains(n) {
                self = .argIndex(n)
            } else {
                return nil
            }
        }
    }

    /// The plain keys every flavour provides.
    public static let plain = ["pid", "tid", "comm", "thread", "cgroup", "cpu"]
}

/// The probe's value, parsed.
public enum ValueName: Sendable, Hashable {
    case latency, ret, none
    case argName(String)
    case argIndex(Int)
    case field(String)

    public init?(_ text: String) {
        switch text {
        case "latency": self = .latency
        case "ret": self = .ret
        case "none": self = .none
        default:
            guard let key = KeyName(text) else { return nil }
            switch key {
            case .argName(let n): self = .argName(n)
            case .argIndex(let i): self = .argIndex(i)
            case .field(let n): self = .field(n)
            default: return nil
            }
        }
    }
}
