import CBPFLayouts
import Glibc

/// Formats the kernel's `struct tp_event` records as the JSON objects a subscriber gets:
/// by hand, not through JSONEncoder (a probe may stream tens of thousands a second).
/// Owned by one ``ProbeEvents`` and used on its pump's thread only.
struct EventJSON {
    /// `call` (latency, ret and errno set) or `tracepoint`.
    let kind: String
    let plan: AggregatePlan
    let layout: KeyTableReader.Layout
    let cgroups: CgroupPaths
    /// Wall-clock nanoseconds minus monotonic ones, measured now and then.
    private var offset: Int64 = 0
    /// The event time the offset was measured at (nil: not yet).
    private var offsetAt: Int64?
    /// `"cgroup":…,"cgroup_id":…,"container":…` by cgroup id.
    private var cgroupText: [UInt64: [UInt8]] = [:]
    /// The formatted date and time of the second `timeSecond`.
    private var timeSecond: Int64 = -1
    private var timePrefix: [UInt8] = []

    init(kind: String, plan: AggregatePlan, layout: KeyTableReader.Layout, cgroups: CgroupPaths = .shared) {
        self.kind = kind
        self.plan = plan
        self.layout = layout
        self.cgroups = cgroups
    }

    static let recordSize = MemoryLayout<tp_event>.size

    /// One record (`recordSize` bytes) as one JSON object, with sequence number `seq`.
    mutating func format(_ raw: UnsafeRawBufferPointer, seq: UInt64) -> String {
        let e = raw.loadUnaligned(as: tp_event.self)
        let monotonic = Int64(bitPattern: e.time_ns)
        refreshOffset(near: monotonic)
        var out = JSONBytes(capacity: 512)
        out.raw("{\"event\":\""); out.raw(kind); out.raw("\",\"seq\":"); out.number(seq)
        out.raw(",\"time\":\""); appendTime(monotonic &+ offset, to: &out); out.raw("\",\"ktime_ns\":"); out.number(e.time_ns)
        out.raw(",\"pid\":"); out.number(UInt64(e.pid)); out.raw(",\"tid\":"); out.number(UInt64(e.tid))
        out.raw(",\"comm\":"); withUnsafeBytes(of: e.comm) { out.string(cString: $0) }
        out.raw(",\"thread\":"); withUnsafeBytes(of: e.thread) { out.string(cString: $0) }
        out.raw(",\"cpu\":"); out.number(UInt64(e.cpu)); out.raw(",")
        out.bytes.append(contentsOf: cgroupMembers(e.cgroup_id))
        if e.flags & UInt32(TP_EV_CALL) != 0 {
            let ret = e.ret
            out.raw(",\"latency_ns\":"); out.number(e.latency_ns); out.raw(",\"ret\":"); out.number(ret); out.raw(",\"errno\":")
            if ret < 0 && ret >= -4095 {
                out.string(Errno(rawValue: Int32(-ret)).name)
            } else {
                out.raw("null")
            }
        }
        out.raw(",\"key\":{")
        if !plan.parts.isEmpty {
            let key = withUnsafeBytes(of: e.key) { Array($0) }
            for (i, part) in plan.parts.enumerated() {
                if i > 0 { out.raw(",") }
                out.string(part.name)
                out.raw(":")
                let value = KeyTableReader.value(of: part, at: layout == .own ? part.offset : part.hubOffset, in: key, cgroups: cgroups)
                switch value {
                case .unsigned(let v): out.number(v)
                case .signed(let v): out.number(v)
                case .string(let s), .errno(let s): out.string(s)
                case .cgroup(_, let path, _, _):
                    if let path { out.string(path) } else { out.raw("null") }
                case .stack(let ref, _):
                    // The stack's id in the probe's stack table: GET …/stacks has its frames.
                    out.string(ref.lossFrame ?? "0x" + String(ref.hash, radix: 16))
                }
            }
        }
        out.raw("}}")
        return String(decoding: out.bytes, as: UTF8.self)
    }

    private mutating func refreshOffset(near monotonic: Int64) {
        // Measured again every second of event time: NTP slews the wall clock slowly.
        if let at = offsetAt, monotonic >= at, monotonic - at <= 1_000_000_000 { return }
        var wall = timespec(), mono = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        clock_gettime(CLOCK_MONOTONIC, &mono)
        offset = (Int64(wall.tv_sec) - Int64(mono.tv_sec)) * 1_000_000_000 + (Int64(wall.tv_nsec) - Int64(mono.tv_nsec))
        offsetAt = monotonic
    }

    /// `2026-12-02T13:20:01.123456789` (the caller adds the `Z`); the part up to the
    /// seconds is formatted once per second.
    private mutating func appendTime(_ nanoseconds: Int64, to out: inout JSONBytes) {
        let second = nanoseconds / 1_000_000_000
        if second != timeSecond {
            timeSecond = second
            // `2026-12-02T13:20:01Z` without its `Z`, and the fraction's dot.
            timePrefix = Array(ReportJSON.internetDateTime(seconds: second, milliseconds: nil).utf8.dropLast()) + [0x2E]
        }
        out.bytes.append(contentsOf: timePrefix)
        var fraction = nanoseconds % 1_000_000_000
        var digits = [UInt8](repeating: 0x30, count: 9)
        for i in stride(from: 8, through: 0, by: -1) {
            digits[i] = 0x30 + UInt8(fraction % 10)
            fraction /= 10
        }
        out.bytes.append(contentsOf: digits)
        out.raw("Z")
    }

    private mutating func cgroupMembers(_ id: UInt64) -> [UInt8] {
        if let text = cgroupText[id] { return text }
        let known = cgroups.resolve(id)
        var text = JSONBytes(capacity: 256)
        text.raw("\"cgroup\":")
        if let path = known?.path { text.string(path) } else { text.raw("null") }
        text.raw(",\"cgroup_id\":"); text.number(id); text.raw(",\"container\":")
        if let identity = known?.identity, !identity.isEmpty {
            text.raw("{")
            for (i, (name, value)) in [("unit", identity.unit), ("runtime", identity.runtime), ("id", identity.containerID),
                                       ("pod_uid", identity.podUID), ("qos", identity.qos)].enumerated() {
                if i > 0 { text.raw(",") }
                text.string(name)
                text.raw(":")
                if let value { text.string(value) } else { text.raw("null") }
            }
            text.raw("}")
        } else {
            text.raw("null")
        }
        // Only resolved paths are kept: a cgroup created after the last refresh is looked up again.
        if known != nil {
            if cgroupText.count >= 4096 { cgroupText.removeAll(keepingCapacity: true) }
            cgroupText[id] = text.bytes
        }
        return text.bytes
    }
}

/// A JSON text being written as UTF-8 bytes: numbers and escaped strings without
/// intermediate Strings.
struct JSONBytes {
    var bytes: [UInt8]

    init(capacity: Int) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    mutating func raw(_ text: StaticString) {
        text.withUTF8Buffer { bytes.append(contentsOf: $0) }
    }

    mutating func raw(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    mutating func number(_ value: UInt64) {
        if value == 0 { bytes.append(0x30); return }
        var digits: (UInt64, Int) = (value, 0)
        var buffer = [UInt8](repeating: 0, count: 20)
        while digits.0 > 0 {
            buffer[19 - digits.1] = 0x30 + UInt8(digits.0 % 10)
            digits.0 /= 10
            digits.1 += 1
        }
        bytes.append(contentsOf: buffer[(20 - digits.1)...])
    }

    mutating func number(_ value: Int64) {
        if value < 0 { bytes.append(0x2D) }
        number(value.magnitude)
    }

    /// A string literal from UTF-8 bytes up to the first NUL (a kernel comm); invalid
    /// UTF-8 becomes U+FFFD.
    mutating func string(cString raw: UnsafeRawBufferPointer) {
        let end = raw.firstIndex(of: 0) ?? raw.count
        let view = UnsafeRawBufferPointer(rebasing: raw[0..<end])
        if view.allSatisfy({ $0 >= 0x20 && $0 < 0x80 && $0 != 0x22 && $0 != 0x5C }) {
            bytes.append(0x22)
            bytes.append(contentsOf: view)
            bytes.append(0x22)
        } else {
            string(String(decoding: view, as: UTF8.self))
        }
    }

    /// `s` as a JSON string literal (RFC 8259 escapes).
    mutating func string(_ s: String) {
        bytes.append(0x22)
        for byte in s.utf8 {
            switch byte {
            case 0x22: raw("\\\"")
            case 0x5C: raw("\\\\")
            case 0x0A: raw("\\n")
            case 0x0D: raw("\\r")
            case 0x09: raw("\\t")
            case 0..<0x20:
                raw("\\u00")
                bytes.append(byte < 0x10 ? 0x30 : 0x31)
                let low = byte & 0x0F
                bytes.append(low < 10 ? 0x30 + low : 0x61 + low - 10)
            default: bytes.append(byte)
            }
        }
        bytes.append(0x22)
    }
}
