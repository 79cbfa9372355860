/// Renders probe metrics as text, with the latency histogram drawn the way libbpf-tools'
/// funclatency draws it.
public enum HistogramText {
    public static func render(_ m: ProbeMetrics) -> String {
        var out = "probe \(m.name)  target \(m.target)  mechanism \(m.mechanism.rawValue)\n"
        out += "calls \(m.calls)  errors \(m.errors)"
        if let lat = m.latencyNanoseconds, lat.count > 0 {
            out += "  avg \(lat.sum / lat.count) ns"
        }
        out += "\n"
        if let s = m.sampling {
            out += "budget: \(s.state.rawValue)"
            if s.sampled > 1 { out += ", recording 1 call in \(s.sampled)" }
            out += "  seen \(s.seenCalls)"
            if s.estimatedCalls > 0 { out += "  estimated \(s.estimatedCalls) of the calls (1-in-N sampling)" }
            out += "\n"
        }
        if let lat = m.latencyNanoseconds, !lat.buckets.isEmpty {
            out += "\n" + histogram(lat.buckets)
        }
        if !m.byProcess.isEmpty {
            out += "\n" + "PID".padded(8) + "COMM".padded(18) + "CALLS\n"
            for p in m.byProcess { out += String(p.pid).padded(8) + p.comm.padded(18) + "\(p.calls)\n" }
        }
        if m.overhead.runCount > 0 {
            out += "\nBPF run time \(m.overhead.runTimeNanoseconds) ns over \(m.overhead.runCount) runs\n"
        }
        if let aggregate = m.aggregate {
            out += keys(aggregate, totalKeys: m.totalKeys)
        }
        return out
    }

    /// The key table the way bcc's argdist draws it: a line saying what it holds, then
    /// per key, in the table's order (most calls first), a header with the key and its
    /// calls and errors, and the value's histogram (none when the value is `none`).
    ///
    /// ```
    /// comm = nginx, arg:fd = 7  calls 812  errors 3  avg 2048
    ///        ret                : count      distribution
    ///       2048 -> 4095        : 812       |****************************************|
    /// ```
    /// What a cgroup key's path says: ` (pod 5f0c…, burstable, containerd a1a1a1a1a1a1)`.
    static func cgroupNote(_ value: KeyedAggregate.KeyValue) -> String {
        guard case .cgroup(_, _, let c?, let removed) = value else { return "" }
        var parts: [String] = []
        if let uid = c.podUID { parts.append("pod \(uid)" + (c.qos.map { " \($0)" } ?? "")) }
        if let id = c.containerID { parts.append("\(c.runtime ?? "container") \(id.prefix(12))") }
        if parts.isEmpty, let unit = c.unit { parts.append(unit) }
        if removed { parts.append("removed") }
        return parts.isEmpty ? "" : " (" + parts.joined(separator: ", ") + ")"
    }

    public static func keys(_ a: KeyedAggregate, totalKeys: Int) -> String {
        var out = "\nkeys " + (a.by.isEmpty ? "(none)" : a.by.joined(separator: ", ")) + "  value \(a.value)"
        out += "  showing \(a.entries.count) of \(totalKeys)"
        if a.droppedKeys > 0 { out += "  dropped \(a.droppedKeys) calls (the key table was full)" }
        if a.stackFull > 0 { out += "  \(a.stackFull) calls lost their stack (the stack map was full)" }
        out += "\n"
        let unit = a.valueIsLatency ? " ns" : ""
        for entry in a.entries {
            // A stack is printed below its key, a frame a line, innermost first (as bpftrace does).
            var stacks = ""
            var header = zip(a.by, entry.key).compactMap { name, value -> String? in
                if case .stack(let ref, let frames) = value {
                    stacks += "  \(name):\n" + (ref.lossFrame.map { [$0] } ?? (frames.isEmpty ? ["(none)"] : frames)).map { "        \($0)\n" }.joined()
                    return nil
                }
                return "\(name) = \(value.text)\(cgroupNote(value))"
            }.joined(separator: ", ")
            header += (header.isEmpty ? "" : "  ") + "calls \(entry.calls)  errors \(entry.errors)"
            if a.histogram != nil, entry.count > 0 { header += "  avg \(entry.sum / Int64(clamping: entry.count))\(unit)" }
            out += "\n" + header + "\n" + stacks
            if let layout = a.histogram, !entry.buckets.isEmpty {
                out += histogram(entry.buckets, layout: layout, label: a.valueIsLatency ? "nsecs" : a.value)
            }
        }
        return out
    }

    /// `     nsecs               : count    distribution` rows with 40-column star bars,
    /// covering every slot from the first to the last non-empty one.
    public static func histogram(_ buckets: [ProbeCounters.Bucket]) -> String {
        guard let first = buckets.first, let last = buckets.last else { return "" }
        let byLower = Dictionary(buckets.map { ($0.lower, $0.count) }, uniquingKeysWith: +)
        var slots: [(UInt64, UInt64, UInt64)] = []
        var slot = first.lower == 0 ? 0 : first.lower.trailingZeroBitCount
        while true {
            let b = ProbeCounters.bounds(slot: slot)
            slots.append((b.lower, b.upper, byLower[b.lower] ?? 0))
            if b.lower >= last.lower || slot >= 63 { break }
            slot += 1
        }
        return draw(label: "nsecs", rows: slots.map { (String($0.0), String($0.1), $0.2) })
    }

    /// A key's value histogram: every slot of `layout` from the first to the last
    /// non-empty one, in ascending order (log2: the negative slot first). The ends of the
    /// 64-bit range show as `-inf` and `inf`.
    public static func histogram(_ buckets: [KeyedAggregate.Bucket], layout: AggregatePlan.Histogram, label: String) -> String {
        let counts = Dictionary(buckets.map { ($0.lower, $0.count) }, uniquingKeysWith: +)
        let order = layout.linear ? Array(0..<layout.slots) : [layout.slots - 1] + Array(0..<layout.slots - 1)
        var slots: [(lower: Int64, upper: Int64)] = []
        for bounds in order.map(layout.bounds) where slots.last?.lower != bounds.lower { slots.append(bounds) }
        let rows: [(lower: Int64, upper: Int64, count: UInt64)]
        if let first = slots.firstIndex(where: { counts[$0.lower] != nil }),
           let last = slots.lastIndex(where: { counts[$0.lower] != nil }),
           Set(counts.keys).isSubset(of: slots.map(\.lower)) {
            rows = slots[first...last].map { ($0.lower, $0.upper, counts[$0.lower] ?? 0) }
        } else {
            // Buckets of another layout than the one announced: drawn as they came.
            rows = buckets.map { ($0.lower, $0.upper, $0.count) }
        }
        func text(_ v: Int64) -> String { v == .min ? "-inf" : v == .max ? "inf" : String(v) }
        return draw(label: label, rows: rows.map { (text($0.lower), text($0.upper), $0.count) })
    }

    /// `label : count distribution` and one `lower -> upper : count |***|` row per slot,
    /// with 40-column bars scaled to the largest count.
    static func draw(label: String, rows: [(lower: String, upper: String, count: UInt64)]) -> String {
        let width = max(10, label.count, rows.map { max($0.lower.count, $0.upper.count) }.max() ?? 0)
        let maxCount = rows.map(\.count).max() ?? 0
        var out = label.leftPadded(width) + String(repeating: " ", count: width + 4) + " : " + "count".padded(9) + "  distribution\n"
        for (lower, upper, count) in rows {
            let stars = maxCount == 0 ? 0 : Int((Double(count) / Double(maxCount) * 40).rounded(.down))
            out += lower.leftPadded(width) + " -> " + upper.padded(width) + " : "
            out += String(count).padded(9) + " |" + String(repeating: "*", count: stars).padded(40) + "|\n"
        }
        return out
    }
}

extension String {
    func padded(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
