import Foundation
import Glibc

/// Gate for tests that need root and a real kernel. They never pass silently without it:
/// under CI (env `CI` set) a missing root is a failure; elsewhere the skip is announced
/// loudly on stderr.
public enum RootRequirement {
    public static var isRoot: Bool { geteuid() == 0 }

    public static var isCI: Bool { ProcessInfo.processInfo.environment["CI"].map { !$0.isEmpty } ?? false }

    /// True when the real-kernel tests should run. Prints a loud skip reason otherwise.
    public static func check(_ suite: String) -> Bool {
        if isRoot { return true }
        FileHandle.standardError.write(Data("SKIPPED \(suite): not root (uid \(geteuid())); real-kernel tests need root. CI runs them as root.\n".utf8))
        return false
    }

    /// Whether a non-root run must fail instead of skipping.
    public static var mustRun: Bool { isCI }
}

/// Counts this process's open file descriptors by kind (BPF programs, maps, links, perf events).
public enum FDCensus {
    public struct Counts: Sendable, Hashable, CustomStringConvertible {
        public var total = 0
        public var bpfProgs = 0
        public var bpfMaps = 0
        public var bpfLinks = 0
        public var perfEvents = 0
        /// The kernel-object kinds only (other fds come and go with the test runtime).
        public var kernelObjects: [Int] { [bpfProgs, bpfMaps, bpfLinks, perfEvents] }
        public var description: String {
            "fds \(total) (bpf-prog \(bpfProgs), bpf-map \(bpfMaps), bpf_link \(bpfLinks), perf_event \(perfEvents))"
        }
    }

    public static func take() -> Counts {
        var counts = Counts()
        let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        for entry in entries {
            guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)") else { continue }
            counts.total += 1
            switch target {
            case "anon_inode:bpf-prog": counts.bpfProgs += 1
            case "anon_inode:bpf-map": counts.bpfMaps += 1
            case "anon_inode:bpf_link": counts.bpfLinks += 1
            case "anon_inode:[perf_event]": counts.perfEvents += 1
            default: break
            }
        }
        return counts
    }
}
