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
    /// The event time `offset` was measured at; nil before the first event.
    private var offsetAt: Int64?
    /// `"cgroup":…,"cgroup_id":…,"container":…` by cgroup id.
    private var cgroupText: [UInt64: String] = [:]

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
        var out = "{\"event\":\"\(kind)\",\"seq\":\(seq),\"time\":\"\(Self.rfc3339(nanoseconds: monotonic &+ offset))\",\"ktime_ns\":\(e.time_ns)"
        out += ",\"pid\":\(e.pid),\"tid\":\(e.tid),\"comm\":"
        Self.appendString(Self.cString(e.comm), to: &out)
        out += ",\"thread\":"
        Self.appendString(Self.cString(e.thread), to: &out)
        out += ",\"cpu\":\(e.cpu),"
        out += cgroupMembers(e.cgroup_id)
        if e.flags & UInt32(TP_EV_CALL) != 0 {
            let ret = e.ret
            out += ",\"latency_ns\":\(e.latency_ns),\"ret\":\(ret),\"errno\":"
            if ret < 0 && ret >= -4095 {
                out += "\"\(Errno(rawValue: Int32(-ret)).name)\""
            } else {
                out += "null"
            }
        }
        out += ",\"key\":{"
        if !plan.parts.isEmpty {
            let key = withUnsafeBytes(of: e.key) { Array($0) }
            for (i, part) in plan.parts.enumerated() {
                if i > 0 { out += "," }
                Self.appendString(part.name, to: &out)
                out += ":"
                let value = KeyTableReader.value(of: part, at: layout == .own ? part.offset : part.hubOffset, in: key, cgroups: cgroups)
                switch value {
                case .unsigned(let v): out += String(v)
                case .signed(let v): out += String(v)
                case .string(let s), .errno(let s): Self.appendString(s, to: &out)
                case .cgroup(_, let path, _, _):
                    if let path { Self.appendString(path, to: &out) } else { out += "null" }
                case .stack(let ref, _):
                    // The stack's id in the probe's stack table: GET …/stacks has its frames.
                    out += ref.lossFrame.map { "\"\($0)\"" } ?? "\"0x\(String(ref.hash, radix: 16))\""
                }
            }
        }
        out += "}}"
        return out
    }

    private mutating func refreshOffset(near monotonic: Int64) {
        // Measured again every second of event time: NTP slews the wall clock slowly.
        if let offsetAt, monotonic >= offsetAt, monotonic - offsetAt <= 1_000_000_000 { return }
        var wall = timespec(), mono = timespec()
        clock_gettime(CLOCK_REALTIME, &wall)
        clock_gettime(CLOCK_MONOTONIC, &mono)
        offset = (Int64(wall.tv_sec) - Int64(mono.tv_sec)) * 1_000_000_000 + (Int64(wall.tv_nsec) - Int64(mono.tv_nsec))
        offsetAt = monotonic
    }

    private mutating func cgroupMembers(_ id: UInt64) -> String {
        if let text = cgroupText[id] { return text }
        let known = cgroups.resolve(id)
        var text = "\"cgroup\":"
        if let path = known?.path { Self.appendString(path, to: &text) } else { text += "null" }
        text += ",\"cgroup_id\":\(id),\"container\":"
        if let identity = known?.identity, !identity.isEmpty {
            text += "{"
            var first = true
            for (name, value) in [("unit", identity.unit), ("runtime", identity.runtime), ("id", identity.containerID),
                                  ("pod_uid", identity.podUID), ("qos", identity.qos)] {
                if !first { text += "," }
                first = false
                Self.appendString(name, to: &text)
                text += ":"
                if let value { Self.appendString(value, to: &text) } else { text += "null" }
            }
            text += "}"
        } else {
            text += "null"
        }
        // Only resolved paths are kept: a cgroup created after the last refresh is looked up again.
        if known != nil {
            if cgroupText.count >= 4096 { cgroupText.removeAll(keepingCapacity: true) }
            cgroupText[id] = text
        }
        return text
    }

    static func cString<T>(_ tuple: T) -> String {
        withUnsafeBytes(of: tuple) { raw in
            let bytes = raw.prefix { $0 != 0 }
            return String(decoding: bytes, as: UTF8.self)
        }
    }

    /// `s` as a JSON string literal (RFC 8259 escapes; invalid UTF-8 was already replaced).
    static func appendString(_ s: String, to out: inout String) {
        out += "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            case _ where scalar.value < 0x20:
                out += "\\u00" + (scalar.value < 0x10 ? "0" : "") + String(scalar.value, radix: 16)
            default: out.unicodeScalars.append(scalar)
            }
        }
        out += "\""
    }

    /// `2026-12-02T13:20:01.123456789Z`.
    static func rfc3339(nanoseconds: Int64) -> String {
        var seconds = time_t(nanoseconds / 1_000_000_000)
        let fraction = nanoseconds % 1_000_000_000
        var parts = tm()
        gmtime_r(&seconds, &parts)
        func pad(_ v: Int, _ width: Int) -> String {
            let s = String(v)
            return String(repeating: "0", count: max(0, width - s.count)) + s
        }
        return "\(pad(Int(parts.tm_year) + 1900, 4))-\(pad(Int(parts.tm_mon) + 1, 2))-\(pad(Int(parts.tm_mday), 2))T"
            + "\(pad(Int(parts.tm_hour), 2)):\(pad(Int(parts.tm_min), 2)):\(pad(Int(parts.tm_sec), 2)).\(pad(Int(fraction), 9))Z"
    }
}
