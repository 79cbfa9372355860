import Foundation
import Glibc
import Synchronization
@testable import TraceCore

/// A C-callable function of the test binary itself, whose address the user symbolizer
/// must name.
@_cdecl("traceplane_stacks_probe_function")
@inline(never)
public func traceplaneStacksProbeFunction(_ x: Int32) -> Int32 {
    x &* 31 &+ 7
}

enum StackTestSupport {
    /// Where `traceplaneStacksProbeFunction` starts in this process.
    static var probeFunctionAddress: UInt64 {
        let pointer: @convention(c) (Int32) -> Int32 = traceplaneStacksProbeFunction
        return UInt64(UInt(bitPattern: unsafeBitCast(pointer, to: UnsafeRawPointer.self)))
    }

    /// Runs a program and returns its standard output; nil when it cannot run or fails.
    static func run(_ path: String, _ arguments: [String]) -> String? {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        let pipe = Pipe()
        process.standardOutput = pipe
        process.standardError = FileHandle.nullDevice
        guard (try? process.run()) != nil else { return nil }
        let data = pipe.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else { return nil }
        return String(decoding: data, as: UTF8.self)
    }

    /// The executable mappings of process `pid`.
    static func mappings(_ pid: pid_t) -> [Mapping] {
        ProcessMaps.parse(ProcFiles.read("/proc/\(pid)/maps") ?? [])
    }

    /// The file-backed executable mapping of this process holding `address`.
    static func ownMapping(of address: UInt64) -> Mapping? {
        let maps = mappings(getpid())
        return ProcessMaps.index(of: address, in: maps).map { maps[$0] }
    }

    /// The address in `mapping` where a symbol with virtual address `vaddr` of `image`
    /// lands, when that mapping holds it.
    static func address(ofVaddr vaddr: UInt64, image: ELFImage, mapping: Mapping) -> UInt64? {
        for segment in image.segments where vaddr >= segment.vaddr && vaddr - segment.vaddr < segment.fileSize {
            let fileOffset = vaddr - segment.vaddr + segment.fileOffset
            guard fileOffset >= mapping.offset, fileOffset - mapping.offset < mapping.end - mapping.start else { continue }
            return mapping.start + fileOffset - mapping.offset
        }
        return nil
    }

    /// A function pointer's address as an integer.
    static func address(of symbol: String) -> UInt64? {
        dlsym(nil, symbol).map { UInt64(UInt(bitPattern: $0)) }
    }

    /// The value `nm` (binutils) lists for `symbol` in `file` (its dynamic symbols when
    /// `dynamic`), an oracle independent of our ELF reader.
    static func nmValue(of symbol: String, in file: String, dynamic: Bool) -> UInt64? {
        guard let output = run("/usr/bin/nm", (dynamic ? ["-D"] : []) + ["--defined-only", file]) else { return nil }
        for line in output.split(separator: "\n") {
            let words = line.split(separator: " ")
            guard words.count == 3, words[2] == symbol || words[2].hasPrefix(symbol + "@") else { continue }
            return UInt64(words[0], radix: 16)
        }
        return nil
    }

    /// The symbol-table (virtual) address of this process's `address`, translated through
    /// the mapping and the program headers.
    static func vaddr(of address: UInt64) -> UInt64? {
        guard let mapping = ownMapping(of: address), case .file(let path) = mapping.kind,
              let (image, _) = ELFImage.load(path: path) else { return nil }
        return image.vaddr(fileOffset: address - mapping.start + mapping.offset)
    }

    /// Resident set size of this process, in bytes.
    static func residentBytes() -> Int {
        guard let text = ProcFiles.read("/proc/self/status").map({ String(decoding: $0, as: UTF8.self) }),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kb = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kb * 1024
    }
}

/// A clock tests move by hand.
final class SymbolizerClock: Sendable {
    private let seconds: Mutex<Double>

    init(_ start: Double = 1000) { seconds = Mutex(start) }

    var now: Double { seconds.withLock { $0 } }

    func advance(_ by: Double) { seconds.withLock { $0 += by } }
}
