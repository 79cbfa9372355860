import CLibBPF
import Glibc

/// Reads whole BPF maps: batched where the kernel allows it, else key by key.
///
/// A batched read costs a few `bpf()` calls per map whatever it holds, so a scrape costs
/// the same at 10 or 10 million events per second. Kernels before 5.6, and map types with
/// no batch operation, answer EINVAL, ENOTSUPP or EOPNOTSUPP; the map is then read key by key.
enum MapReader {
    static let possibleCPUs: Int = {
        let n = libbpf_num_possible_cpus()
        precondition(n > 0, "libbpf could not count the possible CPUs (\(n)).")
        return Int(n)
    }()

    /// Where a map lives and how its entries are laid out.
    struct Layout {
        var fd: Int32
        var keySize: Int
        var valueSize: Int
        var maxEntries: Int
        var perCPU: Bool

        /// Values of one key: one per possible CPU for per-CPU maps, each padded to 8 bytes.
        var cpus: Int { perCPU ? MapReader.possibleCPUs : 1 }
        var stride: Int { perCPU ? (valueSize + 7) & ~7 : valueSize }
    }

    static func layout(of map: OpaquePointer) -> Layout {
        let type = bpf_map__type(map)
        return Layout(
            fd: bpf_map__fd(map), keySize: Int(bpf_map__key_size(map)), valueSize: Int(bpf_map__value_size(map)),
            maxEntries: Int(bpf_map__max_entries(map)),
            perCPU: type == BPF_MAP_TYPE_PERCPU_ARRAY || type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_LRU_PERCPU_HASH)
    }

    static func readAll(_ map: OpaquePointer, name: String) throws(KernelError) -> [MapEntry] {
        let type = bpf_map__type(map)
        let layout = layout(of: map)
        if supportsBatch(type), let entries = try readBatched(layout, name: name) {
            return entries
        }
        return try readKeyByKey(layout, name: name)
    }

    /// Map types with a batch lookup in the kernel (5.6+).
    static func supportsBatch(_ type: bpf_map_type) -> Bool {
        switch type {
        case BPF_MAP_TYPE_ARRAY, BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_HASH, BPF_MAP_TYPE_PERCPU_HASH,
             BPF_MAP_TYPE_LRU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH:
            return true
        default:
            return false
        }
    }

    /// Reads the map with `BPF_MAP_LOOKUP_BATCH`.
    /// - Returns: the entries, or nil when this kernel has no batch lookup for the map
    ///   (the caller then reads key by key).
    /// - Throws: ``KernelError`` for any other failure.
    static func readBatched(_ layout: Layout, name: String) throws(KernelError) -> [MapEntry]? {
        let valueBytes = layout.stride * layout.cpus
        // Small batches, read on from the cursor: a key table of 1,024 entries
        // of 552 bytes on each CPU would otherwise cost a megabyte per probe per scrape,
        // however few keys it holds. Hash maps return whole buckets, and fail with ENOSPC
        // when a bucket does not fit: grow then. The buffers are not zeroed: the kernel
        // writes the `count` entries that are read.
        // At most 64 KiB of values per batch: larger buffers come from mmap, and their page
        // faults and unmapping (TLB shootdowns) cost more than the extra bpf() calls.
        var capacity = max(1, min(layout.maxEntries, 256, 65_536 / max(valueBytes, 1)))
        // The batch cursor: a key for arrays, a bucket index for hashes.
        var inBatch = [UInt8](repeating: 0, count: max(layout.keySize, 8))
        var outBatch = inBatch
        func buffer(_ n: Int) -> [UInt8] { [UInt8](unsafeUninitializedCapacity: n) { _, initialized in initialized = n } }
        var keys = buffer(layout.keySize * capacity)
        var values = buffer(valueBytes * capacity)
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        var entries: [MapEntry] = []
        var first = true
        while true {
            var count = UInt32(capacity)
            let rc = first
                ? bpf_map_lookup_batch(layout.fd, nil, &outBatch, &keys, &values, &count, &opts)
                : bpf_map_lookup_batch(layout.fd, &inBatch, &outBatch, &keys, &values, &count, &opts)
            let code = rc < 0 ? -rc : 0
            if code == ENOSPC && count == 0 && capacity < 2 * max(layout.maxEntries, 1) {
                capacity *= 2
                keys = buffer(layout.keySize * capacity)
                values = buffer(valueBytes * capacity)
                continue
            }
            if code != 0 && code != ENOENT {
                if first && (code == EINVAL || code == Errno.ENOTSUPP.rawValue || code == EOPNOTSUPP) { return nil }
                throw KernelError(stage: .read, code: code, operation: "batch-read map \(name)")
            }
            // ENOENT ends the map, and still returns its last `count` entries.
            for i in 0..<Int(count) {
                let key = Array(keys[(i * layout.keySize)..<((i + 1) * layout.keySize)])
                let base = i * valueBytes
                let perCPU = (0..<layout.cpus).map { cpu in
                    Array(values[(base + cpu * layout.stride)..<(base + cpu * layout.stride + layout.valueSize)])
                }
                entries.append(MapEntry(key: key, values: perCPU))
            }
            if code == ENOENT { return entries }
            first = false
            inBatch = outBatch
        }
    }

    /// The values of entries `first ..< first + count` of a plain array map, back to back:
    /// one `BPF_MAP_LOOKUP_BATCH` (its cursor is the key before the first wanted), else one
    /// lookup per key. Entries past the end of the map are zeros.
    static func readArrayValues(_ layout: Layout, first: UInt32, count: Int, name: String) throws(KernelError) -> [UInt8] {
        var values = [UInt8](repeating: 0, count: layout.valueSize * count)
        let count = max(0, min(count, layout.maxEntries - Int(first)))
        guard count > 0 else { return values }
        var keys = [UInt8](repeating: 0, count: 4 * count)
        var cursor = withUnsafeBytes(of: (first &- 1).littleEndian, Array.init)
        var outBatch = [UInt8](repeating: 0, count: 8)
        var got = UInt32(count)
        var opts = bpf_map_batch_opts()
        opts.sz = MemoryLayout<bpf_map_batch_opts>.size
        let rc = first == 0
            ? bpf_map_lookup_batch(layout.fd, nil, &outBatch, &keys, &values, &got, &opts)
            : bpf_map_lookup_batch(layout.fd, &cursor, &outBatch, &keys, &values, &got, &opts)
        let code = rc < 0 ? -rc : 0
        if code == 0 || code == ENOENT { return values }
        guard code == EINVAL || code == Errno.ENOTSUPP.rawValue || code == EOPNOTSUPP else {
            throw KernelError(stage: .read, code: code, operation: "batch-read map \(name)")
        }
        var value = [UInt8](repeating: 0, count: layout.valueSize)
        for i in 0..<count {
            var key = first + UInt32(i)
            if bpf_map_lookup_elem(layout.fd, &key, &value) != 0 {
                throw KernelError(stage: .read, errno: .current, operation: "read map \(name)")
            }
            values.replaceSubrange((i * layout.valueSize)..<((i + 1) * layout.valueSize), with: value)
        }
        return values
    }

    /// Reads the map with `BPF_MAP_GET_NEXT_KEY` and one lookup per key.
    static func readKeyByKey(_ layout: Layout, name: String) throws(KernelError) -> [MapEntry] {
        var entries: [MapEntry] = []
        var key = [UInt8](repeating: 0, count: layout.keySize)
        var next = [UInt8](repeating: 0, count: layout.keySize)
        var value = [UInt8](repeating: 0, count: layout.stride * layout.cpus)
        var first = true
        while true {
            let rc = first
                ? bpf_map_get_next_key(layout.fd, nil, &next)
                : bpf_map_get_next_key(layout.fd, key, &next)
            first = false
            if rc != 0 {
                if errno == ENOENT { break }
                throw KernelError(stage: .read, errno: .current, operation: "iterate map \(name)")
            }
            key = next
            if bpf_map_lookup_elem(layout.fd, key, &value) != 0 {
                if errno == ENOENT { continue }  // deleted meanwhile
                throw KernelError(stage: .read, errno: .current, operation: "read map \(name)")
            }
            let values = (0..<layout.cpus).map { cpu in
                Array(value[(cpu * layout.stride)..<(cpu * layout.stride + layout.valueSize)])
            }
            entries.append(MapEntry(key: key, values: values))
        }
        return entries
    }
}

