import CLibBPF
import Foundation
import Glibc
import TraceCore

/// What the kernel holds, seen through BPF_PROG_GET_NEXT_ID (not through our objects).
public enum KernelCensus {
    /// The kernel's names of the probes' programs (BPF keeps 15 characters of a name).
    static let probeProgramNames = Set((LatencyBPF.Programs.all + SyscallHubBPF.Programs.all).map { String($0.name.prefix(15)) })

    /// Our probes' programs (latency.bpf.c, syscall_hub.bpf.c) loaded now but not in `before`, after giving the kernel up
    /// to 120 s to free closed programs: the kernel tears perf-event links down lazily
    /// (RCU grace periods), which under churn was seen to take about 40 s here.
    public static func settledPrograms(excluding before: Set<UInt32> = []) async -> Set<UInt32> {
        var leaked: Set<UInt32> = []
        let started = ContinuousClock.now
        defer { print("kernel released our programs after \(ContinuousClock.now - started) (left: \(leaked.count))") }
        for _ in 0..<1_200 {
            leaked = programIDs().subtracting(before).filter { probeProgramNames.contains(programName($0)) }
            if leaked.isEmpty { break }
            try? await Task.sleep(for: .milliseconds(100))
        }
        return leaked
    }

    public static func programIDs() -> Set<UInt32> {
        var ids = Set<UInt32>()
        var id: UInt32 = 0
        while bpf_prog_get_next_id(id, &id) == 0 { ids.insert(id) }
        return ids
    }

    /// Every BPF program, map and link the kernel holds now (system-wide ids): the oracle of
    /// the fault suite, which runs alone, so anything new that stays is ours.
    public struct Objects: Sendable, Equatable, CustomStringConvertible {
        public var programs: Set<UInt32>
        public var maps: Set<UInt32>
        public var links: Set<UInt32>
        public var isEmpty: Bool { programs.isEmpty && maps.isEmpty && links.isEmpty }
        public var count: Int { programs.count + maps.count + links.count }
        public func subtracting(_ other: Objects) -> Objects {
            Objects(programs: programs.subtracting(other.programs), maps: maps.subtracting(other.maps), links: links.subtracting(other.links))
        }
        public var description: String {
            "programs \(programs.sorted().map { "\($0) \(KernelCensus.programName($0))" }), maps \(maps.sorted()), links \(links.sorted())"
        }
    }

    public static func objects() -> Objects {
        func ids(_ next: (UInt32, UnsafeMutablePointer<UInt32>) -> Int32) -> Set<UInt32> {
            var ids = Set<UInt32>()
            var id: UInt32 = 0
            while next(id, &id) == 0 { ids.insert(id) }
            return ids
        }
        return Objects(programs: ids(bpf_prog_get_next_id), maps: ids(bpf_map_get_next_id), links: ids(bpf_link_get_next_id))
    }

    /// The objects made since `before` that are still there after giving the kernel up to
    /// `seconds` to free closed ones (links and programs go after RCU grace periods).
    public static func settledObjects(since before: Objects, seconds: Double = 120) async -> Objects {
        var left = objects().subtracting(before)
        let started = ContinuousClock.now
        while !left.isEmpty, ContinuousClock.now - started < .milliseconds(Int(seconds * 1000)) {
            try? await Task.sleep(for: .milliseconds(100))
            left = objects().subtracting(before)
        }
        return left
    }

    public static func programName(_ id: UInt32) -> String {
        let fd = bpf_prog_get_fd_by_id(id)
        guard fd >= 0 else { return "" }
        defer { close(fd) }
        var info = bpf_prog_info()
        var len = UInt32(MemoryLayout<bpf_prog_info>.size)
        guard bpf_obj_get_info_by_fd(fd, &info, &len) == 0 else { return "" }
        return withUnsafeBytes(of: &info.name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
    }
}
