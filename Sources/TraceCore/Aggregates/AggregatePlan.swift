import CBPFLayouts

/// A probe's `aggregate` resolved against its target: what each key part is in the kernel
/// (`enum tp_key_kind`), where it sits in the packed key, and how the value is bucketed.
/// Made once per spec (``resolve(_:schema:)``); the recipes set the BPF globals from it and
/// the readers unpack the key table with it.
public struct AggregatePlan: Sendable, Hashable {
    /// How a part is shown.
    public enum Display: Sendable, Hashable { case unsigned, signed, errno, string, cgroup, kstack, ustack }

    public struct Part: Sendable, Hashable {
        /// The spec's name for it (`arg:fd`, `comm`).
        public var name: String
        public var kind: UInt32
        /// Argument index, or a field's record offset.
        public var arg: UInt32 = 0
        /// Width of an argument or field (bytes read for a string field).
        public var length: UInt32 = 0
        public var signed = false
        public var display: Display
        /// Offset and size in a probe's own packed key.
        public var offset = 0
        public var size = 8
        /// Offset in the shared hook's `struct hub_key`.
        public var hubOffset = 0
        /// A string argument in user memory (else kernel memory).
        public var user = true
    }

    public struct Value: Sendable, Hashable {
        /// The spec's name (`latency`, `ret`, `arg:count`, `none`).
        public var name: String
        public var kind: UInt32
        public var arg: UInt32 = 0
        public var length: UInt32 = 0
        public var signed = false
    }

    public struct Histogram: Sendable, Hashable {
        public var linear: Bool
        public var min: Int64 = 0
        public var step: Int64 = 1
        /// Value slots (log2: 65; linear: buckets + 2).
        public var slots: Int

        public static let log2 = Histogram(linear: false, slots: Int(TP_LOG2_SLOTS))

        /// Inclusive bounds of slot `i`.
        public func bounds(_ i: Int) -> (lower: Int64, upper: Int64) {
            if !linear {
                if i == slots - 1 { return (Int64.min, -1) }
                if i == 0 { return (0, 1) }
                if i >= 62 { return (Int64(1) << 62, Int64.max) }
                return (Int64(1) << Int64(i), (Int64(1) << Int64(i + 1)) - 1)
            }
            if i == 0 { return (Int64.min, min &- 1) }
            let top = min &+ step &* Int64(slots - 2)
            if i == slots - 1 { return (top, Int64.max) }
            let lower = min &+ step &* Int64(i - 1)
            return (lower, lower &+ step &- 1)
        }
    }

    public var parts: [Part] = []
    public var value: Value
    public var histogram: Histogram = .log2
    public var maxKeys: Int = AggregateSpec.defaultMaxKeys
    /// Whether a key table is kept (a key, or a value the totals do not have).
    public var keyed: Bool = false
    public var countProcesses = true
    public var minLatencyNanoseconds: UInt64 = 0
    /// The return value's width when the target's type is narrower than a register (a
    /// function returning `int`: the upper half of the register is not the sign), else 0;
    /// `returnsVoid`: the function returns nothing (its register is garbage).
    public var returnLength: UInt32 = 0
    public var returnSigned = true
    public var returnsVoid = false
    /// The string part's argument, if any.
    public var stringPart: Part? { parts.first { $0.kind == UInt32(TP_K_ARG_STR.rawValue) } }
    public var needsArguments: Bool {
        parts.contains { $0.kind == UInt32(TP_K_ARG.rawValue) || $0.kind == UInt32(TP_K_ARG_STR.rawValue) }
            || value.kind == UInt32(TP_V_ARG.rawValue)
    }
    /// The `kstack` and `ustack` parts.
    public var stackParts: Int { parts.filter { $0.kind == Self.k(TP_K_KSTACK) || $0.kind == Self.k(TP_K_USTACK) }.count }
    /// Whether a part is `ustack`: processes' mappings are then read while they run, told by
    /// the programs of each new key (a `TP_EV_NEW_KEY` notice in the `events` ring) when the
    /// probe has no events, else by the events (see ``KeyNotices``, ``ProbeEvents``).
    public var notifiesNewKeys: Bool { parts.contains { $0.kind == Self.k(TP_K_USTACK) } }
    /// Entries of the stack map: one per stack a full key table can name; one when no part
    /// is a stack.
    public var stackEntries: Int { stackParts == 0 ? 1 : maxKeys * stackParts }
    /// Bytes the stack map preallocates (an entry holds TP_STACK_DEPTH frames, its key and
    /// the hash table's own head).
    public static let stackEntryBytes = 8 * Int(TP_STACK_DEPTH) + 64
    public var stackBytes: Int { stackEntries * Self.stackEntryBytes }
    /// The most a stack map may take.
    public static let maxStackBytes = 64 << 20
    /// Bytes of a packed key (at least 8: a hash key cannot be empty).
    public var keySize: Int { max(8, parts.last.map { $0.offset + $0.size } ?? 0) }
    /// Bytes of a key table value: the head and the histogram.
    public var valueSize: Int { MemoryLayout<tp_key_stats>.size + 8 * (value.kind == UInt32(TP_V_NONE.rawValue) ? 0 : histogram.slots) }

    public static func defaults(for type: TargetType) -> AggregatePlan {
        AggregatePlan(value: type.isCall ? Value(name: "latency", kind: UInt32(TP_V_LATENCY.rawValue))
                                         : Value(name: "none", kind: UInt32(TP_V_NONE.rawValue)))
    }

    /// The most a key table may take on one CPU (it is preallocated on each).
    public static let maxTableBytesPerCPU = 64 << 20

    static func k(_ kind: tp_key_kind) -> UInt32 { UInt32(kind.rawValue) }
    static func v(_ kind: tp_value_kind) -> UInt32 { UInt32(kind.rawValue) }
}

extension TargetType {
    /// Targets whose probes see a call's entry and exit (latency, return value, arguments).
    public var isCall: Bool { self != .tracepoint && self != .profile }
}

extension AggregatePlan {
    /// Resolves `spec`'s `aggregate` and `filter.min_latency_ns` against the target's
    /// `schema`; every problem as a field error that names the field and what is valid.
    public static func resolve(_ spec: ProbeSpec, schema: TargetSchema?) -> Result<AggregatePlan, FieldErrors> {
        let type = spec.target.type
        var plan = defaults(for: type)
        var errors: [FieldError] = []
        switch schema?.returns {
        case .integer(let size, let signed)? where size < 8:
            plan.returnLength = UInt32(size)
            plan.returnSigned = signed
        case .unreadable?:
            plan.returnsVoid = true
        default:
            break
        }
        if let min = spec.filter?.minLatencyNs {
            if !type.isCall {
                errors.append(FieldError(field: "filter.min_latency_ns", message: "\(type.rawValue) targets have no latency; it applies to syscall, function and uprobe targets"))
            } else if min < 0 {
                errors.append(FieldError(field: "filter.min_latency_ns", message: "must be 0 or more nanoseconds"))
            } else {
                plan.minLatencyNanoseconds = UInt64(min)
            }
        }
        // A profile is keyed by what ran where: its default keys (DESIGN.md).
        var aggregate = spec.aggregate
        if type == .profile, aggregate?.by == nil {
            aggregate = aggregate ?? AggregateSpec()
            aggregate?.by = AggregateSpec.profileKeys
        }
        guard let aggregate else { return errors.isEmpty ? .success(plan) : .failure(FieldErrors(errors)) }
        plan.countProcesses = aggregate.byProcess ?? true
        if let maxKeys = aggregate.maxKeys {
            if (1...AggregateSpec.maxMaxKeys).contains(maxKeys) { plan.maxKeys = maxKeys } else {
                errors.append(FieldError(field: "aggregate.max_keys", message: "must be from 1 to \(AggregateSpec.maxMaxKeys)"))
            }
        }
        let keys = aggregate.by ?? []
        if keys.count > AggregateSpec.maxParts {
            errors.append(FieldError(field: "aggregate.by", message: "at most \(AggregateSpec.maxParts) keys, not \(keys.count)"))
        }
        var seen = Set<String>()
        for (i, text) in keys.prefix(AggregateSpec.maxParts).enumerated() {
            let field = "aggregate.by[\(i)]"
            guard seen.insert(text).inserted else {
                errors.append(FieldError(field: field, message: "'\(text.prefix(64))' is given twice"))
                continue
            }
            switch part(text, type: type, schema: schema) {
            case .success(let p): plan.parts.append(p)
            case .failure(let refusal): errors.append(FieldError(field: field, message: refusal.message))
            }
        }
        if plan.parts.filter({ $0.kind == k(TP_K_ARG_STR) }).count > 1 {
            errors.append(FieldError(field: "aggregate.by", message: "at most one string argument key"))
        }
        if let text = aggregate.value {
            switch resolveValue(text, type: type, schema: schema) {
            case .success(let v): plan.value = v
            case .failure(let refusal): errors.append(FieldError(field: "aggregate.value", message: refusal.message))
            }
        }
        if let histogram = aggregate.histogram {
            switch resolveHistogram(histogram) {
            case .success(let h): plan.histogram = h
            case .failure(let e): errors.append(contentsOf: e.list)
            }
            if plan.value.kind == v(TP_V_NONE) {
                errors.append(FieldError(field: "aggregate.histogram", message: "needs a value to bucket; aggregate.value is none"))
            }
        }
        // Pack the parts: 8-byte aligned, in the spec's order.
        var offset = 0
        var hubNumbers = 0
        for i in plan.parts.indices {
            plan.parts[i].offset = offset
            offset += plan.parts[i].size
            switch plan.parts[i].kind {
            case k(TP_K_COMM): plan.parts[i].hubOffset = 24
            case k(TP_K_THREAD): plan.parts[i].hubOffset = 40
            case k(TP_K_ARG_STR): plan.parts[i].hubOffset = 56
            default: plan.parts[i].hubOffset = 8 * i; hubNumbers += 1
            }
        }
        if offset > Int(TP_KEY_MAX) {
            errors.append(FieldError(field: "aggregate.by", message: "the key takes \(offset) bytes; at most \(TP_KEY_MAX)"))
        }
        plan.keyed = !plan.parts.isEmpty || !(plan.value.kind == v(TP_V_LATENCY) || plan.value.kind == v(TP_V_NONE))
        if aggregate.histogram != nil, !plan.keyed, plan.value.kind == v(TP_V_LATENCY) { plan.keyed = true }
        // The table is preallocated on every CPU: bound what one spec can make the kernel hold.
        let bytes = plan.maxKeys * (plan.keySize + plan.valueSize)
        if plan.keyed, bytes > Self.maxTableBytesPerCPU {
            errors.append(FieldError(field: "aggregate.max_keys",
                                     message: "the key table would take \(bytes >> 20) MiB on each CPU (\(plan.maxKeys) keys of \(plan.keySize + plan.valueSize) bytes); at most \(Self.maxTableBytesPerCPU >> 20) MiB: fewer keys or histogram buckets"))
        }
        if plan.stackParts > 0, plan.stackBytes > Self.maxStackBytes {
            errors.append(FieldError(field: "aggregate.max_keys",
                                     message: "the stack map would take \(plan.stackBytes >> 20) MiB (\(plan.stackEntries) stacks of \(TP_STACK_DEPTH) frames for \(plan.maxKeys) keys); at most \(Self.maxStackBytes >> 20) MiB: at most \(Self.maxStackBytes / (plan.stackParts * Self.stackEntryBytes)) keys"))
        }
        return errors.isEmpty ? .success(plan) : .failure(FieldErrors(errors))
    }

    private static func part(_ text: String, type: TargetType, schema: TargetSchema?) -> Result<Part, Refusal> {
        guard let key = KeyName(text) else {
            return .failure("unknown key '\(text.prefix(64))'; valid: \(validKeys(type, schema))")
        }
        func number(_ kind: tp_key_kind, _ display: Display = .unsigned) -> Result<Part, Refusal> {
            .success(Part(name: text, kind: k(kind), display: display))
        }
        switch key {
        case .pid: return number(TP_K_PID)
        case .tid: return number(TP_K_TID)
        case .cpu: return number(TP_K_CPU)
        case .cgroup: return number(TP_K_CGROUP, .cgroup)
        case .comm: return .success(Part(name: text, kind: k(TP_K_COMM), display: .string, size: 16))
        case .thread: return .success(Part(name: text, kind: k(TP_K_THREAD), display: .string, size: 16))
        case .errno, .ret:
            guard type.isCall else { return .failure("\(type.rawValue) targets have no return value; valid: \(validKeys(type, schema))") }
            if case .unreadable(let why)? = schema?.returns { return .failure("the target's return value is \(why); it cannot be a key") }
            return key == .errno ? number(TP_K_ERRNO, .errno) : number(TP_K_RET, .signed)
        case .kstack: return number(TP_K_KSTACK, .kstack)
        case .ustack: return .success(Part(name: text, kind: k(TP_K_USTACK), display: .ustack, size: 16))
        case .argName, .argIndex:
            switch argument(key, type: type, schema: schema) {
            case .failure(let refusal): return .failure(refusal)
            case .success(let arg):
                switch arg.shape {
                case .integer(let size, let signed):
                    return .success(Part(name: text, kind: k(TP_K_ARG), arg: UInt32(arg.index), length: UInt32(size), signed: signed,
                                         display: signed ? .signed : .unsigned))
                case .string(let user):
                    return .success(Part(name: text, kind: k(TP_K_ARG_STR), arg: UInt32(arg.index), length: UInt32(TP_STR_LEN),
                                         display: .string, size: Int(TP_STR_LEN), user: user))
                case .unreadable(let why):
                    return .failure("argument \(arg.name) is \(why); it cannot be a key")
                }
            }
        case .field(let name):
            switch field(name, type: type, schema: schema) {
            case .failure(let refusal): return .failure(refusal)
            case .success(let f):
                switch f.shape {
                case .integer(let size, let signed):
                    return .success(Part(name: text, kind: k(TP_K_FIELD), arg: UInt32(f.offset), length: UInt32(size), signed: signed,
                                         display: signed ? .signed : .unsigned))
                case .chars(let n):
                    let length = Swift.min(n, Int(TP_STR_LEN))
                    return .success(Part(name: text, kind: k(TP_K_FIELD_STR), arg: UInt32(f.offset), length: UInt32(length),
                                         display: .string, size: (length + 7) / 8 * 8))
                case .dataLocation:
                    return .success(Part(name: text, kind: k(TP_K_FIELD_DATALOC), arg: UInt32(f.offset), length: UInt32(TP_STR_LEN),
                                         display: .string, size: Int(TP_STR_LEN)))
                case .unreadable(let why):
                    return .failure("field \(f.name) is \(why); it cannot be a key")
                }
            }
        }
    }

    private static func resolveValue(_ text: String, type: TargetType, schema: TargetSchema?) -> Result<Value, Refusal> {
        let validValues = type.isCall ? "latency, ret, none, arg:NAME or argN" : type == .profile ? "none" : "none or field:NAME (a numeric field)"
        guard let value = ValueName(text) else { return .failure("unknown value '\(text.prefix(64))'; valid: \(validValues)") }
        switch value {
        case .none: return .success(Value(name: text, kind: v(TP_V_NONE)))
        case .latency, .ret:
            guard type.isCall else { return .failure("\(type.rawValue) targets have no \(text); valid: \(validValues)") }
            if value == .ret, case .unreadable(let why)? = schema?.returns { return .failure("the target's return value is \(why)") }
            return .success(Value(name: text, kind: value == .latency ? v(TP_V_LATENCY) : v(TP_V_RET), signed: true))
        case .argName, .argIndex:
            let key: KeyName = if case .argName(let n) = value { .argName(n) } else if case .argIndex(let i) = value { .argIndex(i) } else { .pid }
            switch argument(key, type: type, schema: schema) {
            case .failure(let refusal): return .failure(refusal)
            case .success(let arg):
                guard case .integer(let size, let signed) = arg.shape else {
                    return .failure("argument \(arg.name) is not a number (\(arg.type)); a value must be one")
                }
                return .success(Value(name: text, kind: v(TP_V_ARG), arg: UInt32(arg.index), length: UInt32(size), signed: signed))
            }
        case .field(let name):
            switch field(name, type: type, schema: schema) {
            case .failure(let refusal): return .failure(refusal)
            case .success(let f):
                guard case .integer(let size, let signed) = f.shape else {
                    return .failure("field \(f.name) is not a number (\(f.type)); a value must be one")
                }
                return .success(Value(name: text, kind: v(TP_V_FIELD), arg: UInt32(f.offset), length: UInt32(size), signed: signed))
            }
        }
    }

    private static func resolveHistogram(_ h: HistogramSpec) -> Result<Histogram, FieldErrors> {
        switch h.kind {
        case "log2":
            if h.min != nil || h.max != nil || h.step != nil {
                return .failure(FieldErrors([FieldError(field: "aggregate.histogram", message: "a log2 histogram takes no min, max or step")]))
            }
            return .success(.log2)
        case "linear":
            var errors: [FieldError] = []
            guard let min = h.min, let max = h.max, let step = h.step else {
                for (name, v) in [("min", h.min), ("max", h.max), ("step", h.step)] where v == nil {
                    errors.append(FieldError(field: "aggregate.histogram.\(name)", message: "is required for a linear histogram"))
                }
                return .failure(FieldErrors(errors))
            }
            if step <= 0 { errors.append(FieldError(field: "aggregate.histogram.step", message: "must be a positive integer")) }
            if max <= min { errors.append(FieldError(field: "aggregate.histogram.max", message: "must be greater than min")) }
            guard errors.isEmpty else { return .failure(FieldErrors(errors)) }
            let (span, overflow) = max.subtractingReportingOverflow(min)
            let buckets = overflow ? Int64.max : (span / step + (span % step == 0 ? 0 : 1))
            // The last bucket ends at min + buckets × step, which must be a number too.
            let (width, wide) = step.multipliedReportingOverflow(by: Swift.min(buckets, Int64(HistogramSpec.maxLinearBuckets)))
            if wide || min.addingReportingOverflow(width).overflow {
                return .failure(FieldErrors([FieldError(field: "aggregate.histogram", message: "min + buckets × step is beyond a 64-bit integer")]))
            }
            if buckets > Int64(HistogramSpec.maxLinearBuckets) {
                return .failure(FieldErrors([FieldError(field: "aggregate.histogram", message: "(max - min) / step is \(overflow ? "too large" : String(buckets)) buckets; at most \(HistogramSpec.maxLinearBuckets)")]))
            }
            return .success(Histogram(linear: true, min: min, step: step, slots: Int(buckets) + 2))
        default:
            return .failure(FieldErrors([FieldError(field: "aggregate.histogram.kind", message: "must be log2 or linear")]))
        }
    }

    private static func argument(_ key: KeyName, type: TargetType, schema: TargetSchema?) -> Result<TargetSchema.Argument, Refusal> {
        guard type.isCall else {
            if type == .profile { return .failure("a profile samples the CPUs: it has no arguments; valid keys: \(validKeys(type, schema))") }
            return .failure("tracepoint targets have fields, not arguments: use field:NAME (valid: \(fieldNames(schema)))")
        }
        let args = schema?.arguments
        switch key {
        case .argIndex(let i):
            if let args {
                guard i < args.count else {
                    return .failure("arg\(i) is beyond the \(args.count) argument\(args.count == 1 ? "" : "s") of this target (\(schema?.source ?? "")); valid: \(argumentNames(args))")
                }
                return .success(args[i])
            }
            return .success(TargetSchema.Argument(name: "arg\(i)", index: i, type: "u64", shape: .integer(size: 8, signed: false)))
        case .argName(let name):
            guard let args else {
                return .failure("argument names are not known for this target (\(schema?.source ?? "no schema")); use arg0 to arg\(TP_ARGS - 1)")
            }
            guard let arg = args.first(where: { $0.name == name }) else {
                return .failure("'\(name)' is not an argument of this target; valid: \(argumentNames(args)) (from \(schema?.source ?? ""))")
            }
            guard arg.index < Int(TP_ARGS) else { return .failure("argument \(name) is beyond the first \(TP_ARGS), which are all a probe can read") }
            return .success(arg)
        default:
            return .failure("not an argument")
        }
    }

    private static func field(_ name: String, type: TargetType, schema: TargetSchema?) -> Result<TargetSchema.Field, Refusal> {
        guard type == .tracepoint else {
            return .failure("only tracepoint targets have fields; this target has arguments: arg:NAME or argN")
        }
        guard let fields = schema?.fields else {
            return .failure("the tracepoint's format cannot be read, so its fields are not known")
        }
        guard let f = fields.first(where: { $0.name == name }) else {
            return .failure("'\(name)' is not a field of this tracepoint; valid: \(fieldNames(schema)) (from \(schema?.source ?? ""))")
        }
        return .success(f)
    }

    private static func argumentNames(_ args: [TargetSchema.Argument]) -> String {
        args.isEmpty ? "none (it takes no arguments)" : args.prefix(Int(TP_ARGS)).map { "arg:\($0.name) (arg\($0.index))" }.joined(separator: ", ")
    }

    private static func fieldNames(_ schema: TargetSchema?) -> String {
        guard let fields = schema?.fields else { return "unknown" }
        return fields.map { "field:\($0.name)" }.joined(separator: ", ")
    }

    static func validKeys(_ type: TargetType, _ schema: TargetSchema?) -> String {
        var keys = KeyName.plain + ["kstack", "ustack"]
        if type.isCall {
            keys += ["errno", "ret"]
            if let args = schema?.arguments { keys += args.prefix(Int(TP_ARGS)).map { "arg:\($0.name)" } }
            let count = min(Int(TP_ARGS), schema?.arguments?.count ?? Int(TP_ARGS))
            if count > 0 { keys += [count == 1 ? "arg0" : "arg0 to arg\(count - 1)"] }
        } else {
            keys += (schema?.fields ?? []).map { "field:\($0.name)" }
        }
        return keys.joined(separator: ", ")
    }
}

/// Why a key or value cannot be had, as a message (written as a string literal).
struct Refusal: Error, ExpressibleByStringInterpolation {
    let message: String
    init(stringLiteral value: String) { message = value }
    init(stringInterpolation: DefaultStringInterpolation) { message = String(stringInterpolation: stringInterpolation) }
}

/// Every field error of a spec, as one error.
public struct FieldErrors: Error, Sendable {
    public var list: [FieldError]
    public init(_ list: [FieldError]) { self.list = list }
}

extension AggregatePlan {
    /// For flavours whose context is the tracepoint's arguments, not its record: field keys
    /// and values need the perf tracepoint.
    static func fieldsNeedRecord(_ plan: AggregatePlan, _ what: String) -> String? {
        let names = plan.parts.filter { [k(TP_K_FIELD), k(TP_K_FIELD_STR), k(TP_K_FIELD_DATALOC)].contains($0.kind) }.map(\.name)
            + (plan.value.kind == v(TP_V_FIELD) ? [plan.value.name] : [])
        guard let first = names.first else { return nil }
        return "\(first) is a field of the tracepoint's record, which \(what) does not see (it gets the tracepoint's arguments); the perf tracepoint can"
    }
}
