import ArgumentParser
import CLibBPF
import Foundation
import Glibc
import TraceCore

/// `traceplane bench-symbolize`: times the real symbolizers on many distinct stacks, so
/// that `bench/` can hold them to their budget (issue #16: 10,000 stacks in ≤ 1 s, ≤ 50 MB
/// more RSS). Hidden: a benchmarking aid, not a feature.
///
/// Kernel frames are text symbols of /proc/kallsyms plus a small offset; user frames are
/// random addresses in this process's executable mappings of libc and of its own binary.
/// Each stack is symbolized by fresh symbolizers (kallsyms read and ELF files parsed inside
/// the timed part, as for the first scrape of an agent), then rendered as folded text as
/// `GET /v1/probes/{name}/stacks?format=folded` does (RSS is read before, after the
/// symbolization and after the folding); a second pass over the same stacks
/// times the warm symbolizers. Prints one JSON object.
struct BenchSymbolize: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-symbolize",
        abstract: "Symbolize many distinct synthetic stacks with the real symbolizers and report time and RSS (for bench/).",
        shouldDisplay: false)

    @Option(help: "Distinct stacks to build.")
    var stacks = 10_000

    @Option(help: "Kernel frames per stack.")
    var kernelFrames = 10

    @Option(help: "User frames per stack.")
    var userFrames = 10

    func run() throws {
        guard stacks > 0, kernelFrames >= 0, userFrames >= 0, kernelFrames + userFrames > 0 else {
            throw ValidationError("--stacks must be positive and a stack needs at least one frame")
        }
        // The agent's own allocator settings (`serve` sets them first), so that RSS means the same.
        _ = tp_malloc_bound_retention(256 * 1024, 2)

        let kernelTargets = try Self.kernelTextAddresses()
        let (userTargets, modules) = try Self.ownTextRanges()
        var random = SystemRandomNumberGenerator()
        var seen = Set<[UInt64]>()
        var built: [(kernel: [UInt64], user: [UInt64])] = []
        built.reserveCapacity(stacks)
        while built.count < stacks {
            let kernel = (0..<kernelFrames).map { _ in kernelTargets.randomElement(using: &random)! + UInt64.random(in: 0..<16, using: &random) }
            let user = (0..<userFrames).map { _ in
                let range = userTargets.randomElement(using: &random)!
                return UInt64.random(in: range, using: &random)
            }
            if seen.insert(kernel + user).inserted { built.append((kernel, user)) }
        }
        seen = []

        let before = Self.memory()
        let me = UInt32(getpid())
        let started = ContinuousClock.now
        let kernelSymbolizer = KernelSymbolizer()
        let userSymbolizer = UserSymbolizer()
        var symbolized: [(kernel: [StackFrame], user: [StackFrame])] = []
        symbolized.reserveCapacity(built.count)
        for stack in built {
            symbolized.append((kernelSymbolizer.symbolize(stack.kernel), userSymbolizer.symbolize(tgid: me, ips: stack.user)))
        }
        let symbolizedAt = ContinuousClock.now
        let whenSymbolized = Self.memory()
        // As StackSamples does: process name, user frames outermost first, then kernel frames.
        let samples = symbolized.map { stack in
            FlameGraph.Sample(frames: ["bench"] + stack.user.reversed().map(\.text) + stack.kernel.reversed().map(\.text), count: 1)
        }
        let folded = FlameGraph.folded(samples)
        let foldedAt = ContinuousClock.now
        let after = Self.memory()

        var warmNamed = 0
        let warmStarted = ContinuousClock.now
        for stack in built {
            warmNamed += kernelSymbolizer.symbolize(stack.kernel).count { $0.symbol != nil }
            warmNamed += userSymbolizer.symbolize(tgid: me, ips: stack.user).count { $0.symbol != nil }
        }
        let warm = ContinuousClock.now - warmStarted

        let named = symbolized.reduce(0) { sum, stack in
            sum + stack.kernel.count { $0.symbol != nil } + stack.user.count { $0.symbol != nil }
        }
        let report: [String: Any] = [
            "stacks": built.count, "kernel_frames": kernelFrames, "user_frames": userFrames,
            "frames": built.count * (kernelFrames + userFrames), "named": named, "warm_named": warmNamed,
            "kernel_text_symbols": kernelTargets.count, "user_modules": modules,
            "symbolize_s": Self.seconds(symbolizedAt - started), "fold_s": Self.seconds(foldedAt - symbolizedAt),
            "warm_symbolize_s": Self.seconds(warm), "folded_bytes": folded.utf8.count,
            "elf_cache_bytes": userSymbolizer.cacheBytes,
            "rss_before_mb": before.rss, "rss_symbolized_mb": whenSymbolized.rss, "rss_after_mb": after.rss, "hwm_before_mb": before.hwm, "hwm_after_mb": after.hwm,
        ]
        let data = try JSONSerialization.data(withJSONObject: report, options: [.sortedKeys])
        FileHandle.standardOutput.write(data + Data("\n".utf8))
        // Kept alive until measured.
        withExtendedLifetime((symbolized, samples, folded)) {}
    }

    static func seconds(_ d: Duration) -> Double {
        Double(d.components.seconds) + Double(d.components.attoseconds) / 1e18
    }

    /// The start addresses of the text symbols (`t`, `T`, `w`, `W`) in /proc/kallsyms.
    static func kernelTextAddresses() throws -> [UInt64] {
        guard let text = readProcFile("/proc/kallsyms") else { throw ValidationError("cannot read /proc/kallsyms") }
        var out: [UInt64] = []
        for line in text.split(separator: "\n") {
            let fields = line.split(separator: " ", maxSplits: 2)
            guard fields.count == 3, ["t", "T", "w", "W"].contains(fields[1]),
                  let address = UInt64(fields[0], radix: 16), address != 0 else { continue }
            out.append(address)
        }
        guard out.count > 1000 else {
            throw ValidationError("/proc/kallsyms lists \(out.count) text symbols with addresses (run as root: kptr_restrict hides them)")
        }
        return out
    }

    /// The executable mappings of libc and of this binary in this process, and their paths.
    static func ownTextRanges() throws -> ([ClosedRange<UInt64>], [String]) {
        let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        guard let maps = readProcFile("/proc/self/maps") else { throw ValidationError("cannot read /proc/self/maps") }
        var ranges: [ClosedRange<UInt64>] = []
        var modules = Set<String>()
        for line in maps.split(separator: "\n") {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 6, fields[1].hasPrefix("r-x") else { continue }
            let path = fields[5...].joined(separator: " ")
            guard path == executable || path.hasSuffix("/libc.so.6") else { continue }
            let bounds = fields[0].split(separator: "-")
            guard bounds.count == 2, let start = UInt64(bounds[0], radix: 16), let end = UInt64(bounds[1], radix: 16), end > start else { continue }
            ranges.append(start...(end - 1))
            modules.insert(path)
        }
        guard modules.count == 2 else {
            throw ValidationError("found executable mappings of \(modules.sorted()) only, not of both libc and \(executable)")
        }
        return (ranges, modules.sorted())
    }

    /// The whole of a /proc file (they report size 0, so read to the end rather than by size).
    static func readProcFile(_ path: String) -> String? {
        guard let handle = FileHandle(forReadingAtPath: path) else { return nil }
        defer { try? handle.close() }
        guard let data = try? handle.readToEnd() else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// VmRSS and VmHWM of this process in MB.
    static func memory() -> (rss: Double, hwm: Double) {
        var rss = 0.0, hwm = 0.0
        let status = readProcFile("/proc/self/status") ?? ""
        for line in status.split(separator: "\n") {
            // "VmRSS:\t   12345 kB"
            let parts = line.split(whereSeparator: { $0 == " " || $0 == "\t" })
            guard parts.count >= 2, let kb = Double(parts[1]) else { continue }
            if parts[0] == "VmRSS:" { rss = kb / 1024 }
            if parts[0] == "VmHWM:" { hwm = kb / 1024 }
        }
        return (rss, hwm)
    }
}
