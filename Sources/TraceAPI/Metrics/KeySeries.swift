import TraceCore

/// A probe's key table as Prometheus series: per key, `traceplane_probe_key_calls_total`,
/// `traceplane_probe_key_errors_total` and the `traceplane_probe_key_value` histogram,
/// within the probe's series budget.
///
/// The budget (`serve --max-series-per-probe`) bounds what one probe costs the Prometheus
/// server whatever its keys' cardinality: a `pid` or `arg:fd` key can fill a table of 65,536
/// entries. A key costs one calls series, one errors series (targets that return: not
/// tracepoints) and, with a histogram, its finite `le` buckets plus 3 (`+Inf`, `_sum`,
/// `_count`). When every key fits, every key is exported. Otherwise the top keys by calls
/// are kept such that they and one more group fit, and all the others are summed into that
/// group, labelled `other="true"` with every key label empty, so the series of a probe
/// always add up to its whole table. A probe whose one group alone exceeds the budget
/// still exports one: its only key, or the fold of all its keys.
///
/// Keys whose label values read the same are merged first (strings decoded lossily from
/// arbitrary bytes can), since Prometheus refuses two series with the same labels.
struct KeySeries {
    /// One key, or the fold of the keys past the budget.
    struct Group {
        /// One label per key part, and `other="true"` on the fold; written after the probe's labels.
        var labels: LabelSet
        var calls: UInt64 = 0
        var errors: UInt64 = 0
        /// Values at most each finite bound and above the one before it, then the values
        /// above the last (only in `+Inf`); empty without a histogram.
        var bins: [UInt64]
        var sum: Int64 = 0
        /// The cgroup of a kept key whose key has a `cgroup` part, for `traceplane_cgroup_info`.
        var cgroup: (path: String, identity: CgroupIdentity)? = nil

        mutating func add(_ entry: KeyedAggregate.Entry, bounds: [Int64]) {
            calls &+= entry.calls
            errors &+= entry.errors
            sum &+= entry.sum
            for bucket in entry.buckets {
                bins[KeySeries.bin(of: bucket.upper, in: bounds)] &+= bucket.count
            }
        }
    }

    /// The `le` label of each finite bound, ascending; empty without a histogram.
    let bounds: [LabelSet]
    /// The kept keys by calls (descending), then the fold if any.
    let groups: [Group]
    let hasHistogram: Bool
    /// The finite bounds of ``bounds``, as numbers.
    let uppers: [Int64]
    /// Whether the histogram can be a native one exactly: log2, and no value is negative
    /// (the kernel keeps every negative value in one slot, which no native bucket matches).
    let nativeEligible: Bool
    /// Whether the value is a latency in nanoseconds, exported in seconds.
    let seconds: Bool
    let hasErrors: Bool

    /// - Parameters:
    ///   - errors: whether the probe's target returns (else no errors series: tracepoints).
    ///   - maxSeries: the probe's series budget.
    init(_ table: KeyedAggregate, errors: Bool, maxSeries: Int) {
        hasHistogram = table.histogram != nil
        seconds = table.valueIsLatency
        hasErrors = errors
        let uppers = table.histogram.map { Self.finiteBounds($0, of: table.entries) } ?? []
        self.uppers = uppers
        nativeEligible = table.histogram.map { !$0.linear } == true && table.entries.allSatisfy { $0.buckets.allSatisfy { $0.lower >= 0 } }
        bounds = uppers.map { [seconds] in LabelSet(["le": Self.boundText($0, seconds: seconds)]) }

        let keys = Self.distinctKeys(table.entries)
        let perKey = Self.seriesPerKey(bounds: uppers.count, histogram: hasHistogram, errors: errors)
        let kept = keys.count * perKey <= maxSeries || keys.count == 1 ? keys.count : max(maxSeries / perKey - 1, 0)
        // A cgroup key also says which container and pod (empty when the path names none).
        let cgroupPart = table.by.firstIndex(of: "cgroup")
        let names = table.by.map(Self.labelName) + (cgroupPart == nil ? [] : ["container_id", "pod_uid"])
        // Checked once here; every key's label set reuses them.
        _ = LabelSet(names.map { (name: $0, value: "") } + [(name: "other", value: "")])
        let emptyBins = [UInt64](repeating: 0, count: hasHistogram ? uppers.count + 1 : 0)
        var groups: [Group] = keys.prefix(kept).map { key in
            var values = key.texts
            var cgroup: (path: String, identity: CgroupIdentity)? = nil
            if let cgroupPart {
                var identity = CgroupIdentity()
                if case .cgroup(_, let path, let container, _) = table.entries[key.entries[0]].key[cgroupPart] {
                    identity = container ?? CgroupIdentity()
                    if let path { cgroup = (path, identity) }
                }
                values += [identity.containerID ?? "", identity.podUID ?? ""]
            }
            var group = Group(labels: LabelSet(checkedNames: names, values: values), bins: emptyBins)
            group.cgroup = cgroup
            for i in key.entries { group.add(table.entries[i], bounds: uppers) }
            return group
        }
        if kept < keys.count {
            var fold = Group(labels: LabelSet(checkedNames: names, values: names.map { _ in "" }, extra: (name: "other", value: "true")),
                             bins: emptyBins)
            for key in keys[kept...] {
                for i in key.entries { fold.add(table.entries[i], bounds: uppers) }
            }
            groups.append(fold)
        }
        self.groups = groups
    }

    /// Series one key (or the fold) costs.
    static func seriesPerKey(bounds: Int, histogram: Bool, errors: Bool) -> Int {
        1 + (errors ? 1 : 0) + (histogram ? bounds + 3 : 0)
    }

    /// The label for a key name: every byte outside `[a-zA-Z0-9_]` becomes `_`
    /// (`arg:fd` → `arg_fd`). Key names are fixed words, `argN`, or an identifier after
    /// `arg:` or `field:`, so no two keys of a probe map to one label, and none maps to
    /// `probe`, `target`, `mechanism`, `other` or `le`.
    static func labelName(_ key: String) -> String {
        String(decoding: key.utf8.map { c in
            let keep = (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
                || (c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9")) || c == UInt8(ascii: "_")
            return keep ? c : UInt8(ascii: "_")
        }, as: UTF8.self)
    }

    /// The finite `le` bounds, ascending: each slot's inclusive upper bound, except a slot
    /// that reaches `Int64.max` (no value lies above it: that is the `+Inf` bucket). For log2,
    /// only the slots from the lowest to the highest that any key has values in: the same set
    /// on every key of the probe, without the dozens of slots no value reaches. For linear,
    /// every slot, as the spec laid them out.
    static func finiteBounds(_ histogram: AggregatePlan.Histogram, of entries: [KeyedAggregate.Entry]) -> [Int64] {
        let uppers = (0..<histogram.slots).map { histogram.bounds($0).upper }.filter { $0 != .max }.sorted()
        guard !histogram.linear else { return uppers }
        guard let lowest = entries.compactMap(\.buckets.first?.upper).min(),
              let highest = entries.compactMap(\.buckets.last?.upper).max() else { return [] }
        return uppers.filter { (lowest...highest).contains($0) }
    }

    /// The bin of a bucket: the first bound at or above its upper bound, or past the last.
    static func bin(of upper: Int64, in bounds: [Int64]) -> Int {
        var low = 0, high = bounds.count
        while low < high {
            let mid = (low + high) / 2
            if bounds[mid] < upper { low = mid + 1 } else { high = mid }
        }
        return low
    }

    /// An `le` value: the bound itself, or for a latency the nanoseconds as exact seconds.
    static func boundText(_ upper: Int64, seconds: Bool) -> String {
        guard seconds else { return String(upper) }
        var text: [UInt8] = []
        ExpositionWriter.appendSeconds(signedNanoseconds: upper, to: &text)
        return String(decoding: text, as: UTF8.self)
    }

    private struct Key {
        var texts: [String]
        var calls: UInt64
        var entries: [Int]
    }

    /// The table's keys by label values, each with the entries that read so, by calls
    /// (descending) then label values, as the table orders its entries.
    private static func distinctKeys(_ entries: [KeyedAggregate.Entry]) -> [Key] {
        // Numbers and errno names read as they are: only a string part (decoded lossily from
        // arbitrary bytes) or a cgroup path (a cgroup removed and made again) can make two
        // keys read the same.
        let mayCollide = entries.contains { entry in
            entry.key.contains { switch $0 { case .string, .cgroup: true; default: false } }
        }
        guard mayCollide else {
            return entries.enumerated().map { i, entry in Key(texts: entry.texts, calls: entry.calls, entries: [i]) }
        }
        var index: [[String]: Int] = [:]
        var keys: [Key] = []
        for (i, entry) in entries.enumerated() {
            let texts = entry.texts
            if let k = index[texts] {
                keys[k].calls &+= entry.calls
                keys[k].entries.append(i)
            } else {
                index[texts] = keys.count
                keys.append(Key(texts: texts, calls: entry.calls, entries: [i]))
            }
        }
        if keys.count < entries.count {
            keys.sort { $0.calls != $1.calls ? $0.calls > $1.calls : $0.texts.lexicographicallyPrecedes($1.texts) }
        }
        return keys
    }

    // MARK: - Rendering

    /// One counter sample per group: its calls or its errors.
    func writeCounter<W: MetricsSink>(_ counter: KeyPath<Group, UInt64>, identity: LabelSet, into writer: inout W) {
        for group in groups {
            writer.sample()
            writer.labels(identity)
            writer.labels(group.labels)
            writer.value(group[keyPath: counter])
        }
    }

    /// Cumulative buckets, `+Inf`, `_sum` and `_count` of each group. `+Inf` and `_count` are
    /// both the total of the key's buckets, so they always agree.
    func writeValue<W: MetricsSink>(identity: LabelSet, into writer: inout W) {
        for group in groups {
            var cumulative: UInt64 = 0
            for (bound, count) in zip(bounds, group.bins) {
                cumulative &+= count
                writer.sample(.bucket)
                writer.labels(identity)
                writer.labels(group.labels)
                writer.labels(bound)
                writer.value(cumulative)
            }
            let total = group.bins.reduce(0, &+)
            writer.sample(.bucket)
            writer.labels(identity)
            writer.labels(group.labels)
            writer.labels(MetricsSnapshot.infinityBound)
            writer.value(total)
            writer.sample(.sum)
            writer.labels(identity)
            writer.labels(group.labels)
            if seconds { writer.value(signedSecondsFromNanoseconds: group.sum) } else { writer.value(Int(group.sum)) }
            writer.sample(.count)
            writer.labels(identity)
            writer.labels(group.labels)
            writer.value(total)
        }
    }

    /// One native histogram (schema 0) per group, for ``nativeEligible`` tables: the bin of
    /// bound 1 (slot 0) is the zero bucket, the bin of bound 2^(s+1)-1 (slot s) bucket s+1,
    /// and the bin past every bound (slots 62 and up, to Int64.max) bucket 63.
    func writeNative<W: MetricsSink>(identity: LabelSet, into writer: inout W) {
        let indices: [Int] = uppers.map { $0 <= 1 ? 0 : Int64.bitWidth - 1 - ($0 &+ 1).leadingZeroBitCount }
        for group in groups {
            var zero: UInt64 = 0
            var byIndex: [(index: Int, count: UInt64)] = []
            for (i, count) in group.bins.enumerated() where count > 0 {
                let index = i < indices.count ? indices[i] : 63
                if index == 0 { zero &+= count } else { byIndex.append((index, count)) }
            }
            var counts: [UInt64] = []
            let first = byIndex.first?.index ?? 0
            if let last = byIndex.last?.index {
                counts = [UInt64](repeating: 0, count: last - first + 1)
                for (index, count) in byIndex { counts[index - first] &+= count }
            }
            writer.nativeHistogram([identity, group.labels], zeroCount: zero, firstIndex: first, counts: counts, sum: Double(group.sum))
        }
    }
}
