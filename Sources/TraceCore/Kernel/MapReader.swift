import CLibBPF
import Glibc

/// Reads whole BPF maps: batched where the kernel allows it, else key by key.
enum MapReader {
    static let possibleCPUs: Int = {
        let n = libbpf_num_possible_cpus()
        precondition(n > 0, "libbpf could not count the possible CPUs (\(n)).")
        return Int(n)
    }()

    static func readAll(_ map: OpaquePointer, name: String) throws(KernelError) -> [MapEntry] {
        let fd = bpf_map__fd(map)
        let keySize = Int(bpf_map__key_size(map))
        let valueSize = Int(bpf_map__value_size(map))
        let type = bpf_map__type(map)
        let perCPU = type == BPF_MAP_TYPE_PERCPU_ARRAY || type == BPF_MAP_TYPE_PERCPU_HASH || type == BPF_MAP_TYPE_LRU_PERCPU_HASH
        let cpus = perCPU ? possibleCPUs : 1
        let stride = perCPU ? (valueSize + 7) & ~7 : valueSize
        var entries: [MapEntry] = []
        var key = [UInt8](repeating: 0, count: keySize)
        var next = [UInt8](repeating: 0, count: keySize)
        var value = [UInt8](repeating: 0, count: stride * cpus)
        var first = true
        while true {
            let rc = first
                ? bpf_map_get_next_key(fd, nil, &next)
                : bpf_map_get_next_key(fd, key, &next)
            first = false
            if rc != 0 {
                if errno == ENOENT { break }
                throw KernelError(stage: .read, errno: errno, operation: "iterate map \(name)")
            }
            key = next
            if bpf_map_lookup_elem(fd, key, &value) != 0 {
                if errno == ENOENT { continue }  // deleted meanwhile
                throw KernelError(stage: .read, errno: errno, operation: "read map \(name)")
            }
            let values = (0..<cpus).map { cpu in Array(value[(cpu * stride)..<(cpu * stride + valueSize)]) }
            entries.append(MapEntry(key: key, values: values))
        }
        return entries
    }
}
