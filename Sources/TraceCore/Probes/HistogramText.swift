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
        return out
    }

    /// `     nsecs               : count    distribution` rows with 40-column star bars,
    /// covering every slot from the first to the last non-empty one.
    public static func histogram(_ buckets: [ProbeCounters.Bucket]) -> String {
        guard let first = buckets.first, let last = buckets.last else { return "" }
        let byLower = Dictionary(buckets.map { ($0.lower, $0.count) }, uniquingKeysWith: +)
        let maxCount = buckets.map(\.count).max() ?? 1
        var slots: [(UInt64, UInt64, UInt64)] = []
        var slot = first.lower == 0 ? 0 : first.lower.trailingZeroBitCount
        while true {
            let b = ProbeCounters.bounds(slot: slot)
            slots.append((b.lower, b.upper, byLower[b.lower] ?? 0))
            if b.lower >= last.lower || slot >= 63 { break }
            slot += 1
        }
        let width = max(10, String(last.upper).count)
        var out = "nsecs".leftPadded(width) + String(repeating: " ", count: width + 4) + " : " + "count".padded(9) + "  distribution\n"
        for (lower, upper, count) in slots {
            let stars = maxCount == 0 ? 0 : Int((Double(count) / Double(maxCount) * 40).rounded(.down))
            out += String(lower).leftPadded(width) + " -> " + String(upper).padded(width) + " : "
            out += String(count).padded(9) + " |" + String(repeating: "*", count: stars).padded(40) + "|\n"
        }
        return out
    }
}

extension String {
    func padded(_ n: Int) -> String { count >= n ? self : self + String(repeating: " ", count: n - count) }
    func leftPadded(_ n: Int) -> String { count >= n ? self : String(repeating: " ", count: n - count) + self }
}
