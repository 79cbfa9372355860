import CLibBPF
import Glibc
import Testing
import TraceCoreTestSupport

@testable import TraceCore

/// Batched map reads (what a scrape uses) against key-by-key reads, on real kernel maps.
@Suite(.serialized, .enabled(if: RootRequirement.check("MapReaderBatchTests") || RootRequirement.mustRun,
                             "needs root and a real kernel"))
struct MapReaderBatchTests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    static let types: [(bpf_map_type, String)] = [
        (BPF_MAP_TYPE_ARRAY, "array"), (BPF_MAP_TYPE_PERCPU_ARRAY, "percpu_array"), (BPF_MAP_TYPE_HASH, "hash"),
        (BPF_MAP_TYPE_PERCPU_HASH, "percpu_hash"), (BPF_MAP_TYPE_LRU_HASH, "lru_hash"),
        (BPF_MAP_TYPE_LRU_PERCPU_HASH, "lru_percpu_hash"),
    ]

    @Test("A batched read returns exactly what a key-by-key read returns, across several batches",
          arguments: [(0, 64), (1, 64), (2, 1_024), (3, 1_024), (4, 1_024), (5, 1_024), (2, 10_000), (1, 10_000)])
    func batchEqualsKeyByKey(typeIndex: Int, entries: Int) throws {
        let (type, name) = Self.types[typeIndex]
        let perCPU = [BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_PERCPU_HASH, BPF_MAP_TYPE_LRU_PERCPU_HASH].contains(type)
        let valueSize = 24
        let fd = bpf_map_create(type, "tp_batch_test", 4, UInt32(valueSize), UInt32(entries), nil)
        try #require(fd >= 0, "bpf_map_create(\(name)) failed: errno \(errno)")
        defer { close(fd) }
        let layout = MapReader.Layout(fd: fd, keySize: 4, valueSize: valueSize, maxEntries: entries, perCPU: perCPU)
        // Fill: LRU maps may evict under pressure, so leave them some room.
        let filled = type == BPF_MAP_TYPE_LRU_HASH || type == BPF_MAP_TYPE_LRU_PERCPU_HASH ? entries / 2 : entries
        var value = [UInt8](repeating: 0, count: layout.stride * layout.cpus)
        for key in 0..<UInt32(filled) {
            for cpu in 0..<layout.cpus {
                for i in 0..<valueSize { value[cpu * layout.stride + i] = UInt8(truncatingIfNeeded: Int(key) &* 31 &+ cpu &* 7 &+ i) }
            }
            var k = key
            try #require(bpf_map_update_elem(fd, &k, &value, 0) == 0, "update \(name) key \(key): errno \(errno)")
        }
        let batched = try #require(try MapReader.readBatched(layout, name: name), "the kernel has no batch lookup for \(name)")
        let oneByOne = try MapReader.readKeyByKey(layout, name: name)
        func sorted(_ e: [MapEntry]) -> [MapEntry] { e.sorted { $0.key.lexicographicallyPrecedes($1.key) } }
        #expect(batched.count == (type == BPF_MAP_TYPE_ARRAY || type == BPF_MAP_TYPE_PERCPU_ARRAY ? entries : filled))
        #expect(sorted(batched) == sorted(oneByOne))
        #expect(batched.allSatisfy { $0.values.count == layout.cpus && $0.values.allSatisfy { $0.count == valueSize } })
    }

    @Test("An empty hash map reads as no entries")
    func emptyHash() throws {
        let fd = bpf_map_create(BPF_MAP_TYPE_HASH, "tp_batch_empty", 4, 8, 16, nil)
        try #require(fd >= 0)
        defer { close(fd) }
        let layout = MapReader.Layout(fd: fd, keySize: 4, valueSize: 8, maxEntries: 16, perCPU: false)
        #expect(try MapReader.readBatched(layout, name: "empty")?.isEmpty == true)
    }
}
