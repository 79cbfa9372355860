import Foundation

/// Kernel symbol facts that self-tests predict with, read independently of the planner:
/// /proc/kallsyms, ftrace's filter list, and the function and typedef names of vmlinux BTF.
public struct KernelSymbols: Sendable {
    /// Text symbols of /proc/kallsyms.
    public var kallsyms: Set<String>
    /// ftrace's `available_filter_functions` (nil when tracefs is not readable).
    public var ftrace: Set<String>?
    /// Function and typedef names of vmlinux BTF (nil without BTF).
    public var btf: (functions: Set<String>, typedefs: Set<String>)?

    public static func read() -> KernelSymbols {
        let btf = VmlinuxBTF.read()
        return KernelSymbols(kallsyms: names(path: "/proc/kallsyms", field: 2) ?? [],
                             ftrace: names(path: "/sys/kernel/tracing/available_filter_functions", field: 0),
                             btf: btf.map { ($0.functions, $0.typedefs) })
    }

    /// The `field`-th whitespace-separated word of every line (text symbols only for kallsyms).
    static func names(path: String, field: Int) -> Set<String>? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.readToEnd() else { return nil }
        var set = Set<String>()
        for line in data.split(separator: UInt8(ascii: "\n")) {
            let words = line.split(separator: UInt8(ascii: " "), omittingEmptySubsequences: true)
            guard words.count > field else { continue }
            if field == 2, let kind = words[1].first, kind != UInt8(ascii: "T") && kind != UInt8(ascii: "t") { continue }
            set.insert(String(decoding: words[field], as: UTF8.self))
        }
        return set
    }
}
