import CBPFLayouts

/// Unpacks a key table's raw entries (per-CPU values summed) with the probe's plan.
enum KeyTableReader {
    /// Where a key's parts are: a probe's own packed key, or the shared hook's `struct hub_key`.
    enum Layout { case own, hub }

    static func aggregate(_ entries: [MapEntry], plan: AggregatePlan, layout: Layout, droppedKeys: UInt64,
                          cgroups: CgroupPaths = .shared) -> KeyedAggregate {
        let head = MemoryLayout<tp_key_stats>.size
        let hasValue = plan.value.kind != UInt32(TP_V_NONE.rawValue)
        let slots = hasValue ? plan.histogram.slots : 0
        var out: [KeyedAggregate.Entry] = []
        out.reserveCapacity(entries.count)
        for entry in entries {
            var calls: UInt64 = 0, errors: UInt64 = 0, count: UInt64 = 0, sum: Int64 = 0
            var hist = [UInt64](repeating: 0, count: slots)
            for value in entry.values where value.count >= head + 8 * slots {
                value.withUnsafeBytes { raw in
                    calls &+= raw.loadUnaligned(fromByteOffset: 0, as: UInt64.self)
                    errors &+= raw.loadUnaligned(fromByteOffset: 8, as: UInt64.self)
                    count &+= raw.loadUnaligned(fromByteOffset: 16, as: UInt64.self)
                    sum &+= raw.loadUnaligned(fromByteOffset: 24, as: Int64.self)
                    for i in 0..<slots { hist[i] &+= raw.loadUnaligned(fromByteOffset: head + 8 * i, as: UInt64.self) }
                }
            }
            guard calls > 0 else { continue }
            let buckets = hist.enumerated().compactMap { i, n -> KeyedAggregate.Bucket? in
                guard n > 0 else { return nil }
                let b = plan.histogram.bounds(i)
                return KeyedAggregate.Bucket(lower: b.lower, upper: b.upper, count: n)
            }.sorted { $0.lower < $1.lower }
            let key = plan.parts.enumerated().map { i, part in
                value(of: part, at: layout == .own ? part.offset : part.hubOffset, in: entry.key, cgroups: cgroups)
            }
            out.append(KeyedAggregate.Entry(key: key, calls: calls, errors: errors, count: count, sum: sum, buckets: buckets))
        }
        // By calls, then by the key parts' text (made once per key, when it is decoded).
        out.sort { a, b in a.calls != b.calls ? a.calls > b.calls : a.texts.lexicographicallyPrecedes(b.texts) }
        // With `by: []` there is always the one key `{}`, before its first call too.
        if plan.parts.isEmpty && out.isEmpty { out = [KeyedAggregate.Entry(key: [], calls: 0, errors: 0)] }
        return KeyedAggregate(by: plan.parts.map(\.name), value: plan.value.name, histogram: hasValue ? plan.histogram : nil,
                              droppedKeys: droppedKeys, entries: out)
    }

    /// The aggregate of a probe without a key table: one entry, key `{}`, from its totals.
    static func totals(_ counters: ProbeCounters, plan: AggregatePlan) -> KeyedAggregate {
        let latency = plan.value.kind == UInt32(TP_V_LATENCY.rawValue)
        let buckets = latency ? counters.buckets.map { b in
            KeyedAggregate.Bucket(lower: Int64(clamping: b.lower), upper: Int64(clamping: b.upper), count: b.count)
        } : []
        let entry = KeyedAggregate.Entry(key: [], calls: counters.calls, errors: counters.errors,
                                         count: latency ? counters.latencyCount : 0, sum: latency ? Int64(clamping: counters.latencySumNanoseconds) : 0,
                                         buckets: buckets)
        return KeyedAggregate(by: [], value: plan.value.name, histogram: latency ? .log2 : nil, droppedKeys: counters.droppedKeys,
                              entries: [entry])
    }

    static func value(of part: AggregatePlan.Part, at offset: Int, in key: [UInt8], cgroups: CgroupPaths) -> KeyedAggregate.KeyValue {
        if part.display == .string {
            let size = part.kind == UInt32(TP_K_COMM.rawValue) || part.kind == UInt32(TP_K_THREAD.rawValue) ? 16 : part.size
            let end = min(key.count, offset + size)
            guard offset < end else { return .string("") }
            let bytes = key[offset..<end]
            let text = bytes.firstIndex(of: 0).map { bytes[bytes.startIndex..<$0] } ?? bytes
            return .string(String(decoding: text, as: UTF8.self))
        }
        guard offset + 8 <= key.count else { return .unsigned(0) }
        let raw = key.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset, as: UInt64.self) }
        switch part.display {
        case .signed: return .signed(Int64(bitPattern: raw))
        case .errno: return .errno(raw == 0 ? "ok" : Errno(rawValue: Int32(truncatingIfNeeded: raw)).name)
        case .kstack: return .stack(StackRef(space: .kernel, hash: raw), frames: [])
        case .ustack:
            let tgid = offset + 16 <= key.count ? key.withUnsafeBytes { $0.loadUnaligned(fromByteOffset: offset + 8, as: UInt64.self) } : 0
            return .stack(StackRef(space: .user, hash: raw, tgid: UInt32(truncatingIfNeeded: tgid)), frames: [])
        case .cgroup:
            let known = cgroups.resolve(raw)
            return .cgroup(id: raw, path: known?.path, container: known?.identity, removed: known?.removed ?? false)
        default: return .unsigned(raw)
        }
    }
}
