import CLibBPF
import Glibc
import Synchronization

/// Names kernel instruction pointers from /proc/kallsyms.
///
/// The text symbols (`t`/`T`/`w`/`W`) of the kernel and its modules are loaded on first use
/// into one sorted table. An address gets the symbol with the greatest start address at
/// or below it. When /proc/modules or the set of loaded BPF programs changes (checked at
/// most once a second, on lookup), kallsyms is read again: a BPF program (`[bpf]`, where
/// tracing stacks begin) loaded after the table was read would otherwise be named after
/// whatever symbol precedes it. Safe to use from any thread.
public final class KernelSymbolizer: Sendable {
    /// The host's symbolizer, loaded on its first lookup.
    public static let shared = KernelSymbolizer()

    private struct State {
        var table: SymbolTable?
        var restricted = false
        var modules: [UInt8]?
        var programs: [UInt32]?
        var checkedAt = -Double.infinity
    }

    private enum Source {
        case files(kallsyms: String, modules: String)
        case text([UInt8])
    }

    private let source: Source
    private let clock: @Sendable () -> Double
    private let state = Mutex(State())

    /// A symbolizer reading `kallsymsPath`, reloading it when `modulesPath` changes.
    public init(kallsymsPath: String = "/proc/kallsyms", modulesPath: String = "/proc/modules") {
        source = .files(kallsyms: kallsymsPath, modules: modulesPath)
        clock = { ProcFiles.monotonicNow() }
    }

    /// A symbolizer over fixed kallsyms text (never reloaded).
    init(kallsymsText: String) {
        source = .text(Array(kallsymsText.utf8))
        clock = { ProcFiles.monotonicNow() }
    }

    /// True when kallsyms lists its symbols with address zero: `kptr_restrict` hides the
    /// addresses from this process (it is not root, or lacks CAP_SYSLOG). Every frame is then
    /// unknown.
    public var restricted: Bool {
        _ = currentTable()
        return state.withLock { $0.restricted }
    }

    /// Reads kallsyms again now if modules or BPF programs changed since it was read (not
    /// waiting for the once-a-second check): for a batch of new stacks, whose first frames
    /// may be in a program loaded a moment ago.
    public func refresh() {
        state.withLock { $0.checkedAt = -Double.infinity }
        _ = currentTable()
    }

    /// The current table (loaded first when needed).
    var table: SymbolTable { currentTable() }

    /// One frame per nonzero ip, in order. A frame without a symbol has module `[kernel]`
    /// and the ip as its offset.
    public func symbolize(_ ips: [UInt64]) -> [StackFrame] {
        let table = currentTable()
        var frames: [StackFrame] = []
        frames.reserveCapacity(ips.count)
        for ip in ips where ip != 0 {
            frames.append(Self.frame(ip, in: table))
        }
        return frames
    }

    static func frame(_ ip: UInt64, in table: SymbolTable) -> StackFrame {
        guard let index = table.index(containing: ip) else {
            return StackFrame(symbol: nil, module: "[kernel]", offset: ip, address: ip)
        }
        return StackFrame(symbol: table.name(at: index), module: table.moduleNames[table.module(at: index)],
                          offset: ip - table.addresses[index], address: ip)
    }

    private func currentTable() -> SymbolTable {
        state.withLock { state in
            switch source {
            case .text(let text):
                if state.table == nil {
                    (state.table, state.restricted) = Self.parse(text)
                }
            case .files(let kallsyms, let modules):
                let now = clock()
                if state.table == nil || now - state.checkedAt >= 1 {
                    state.checkedAt = now
                    let current = ProcFiles.read(modules, sizeHint: 1 << 14)
                    let programs = Self.programIDs()
                    if state.table == nil || current != state.modules || programs != state.programs {
                        state.modules = current
                        state.programs = programs
                        (state.table, state.restricted) = Self.parse(ProcFiles.read(kallsyms, sizeHint: 16 << 20) ?? [])
                    }
                }
            }
            return state.table ?? .empty
        }
    }

    /// The ids of the BPF programs loaded now (empty without the privilege to list them).
    static func programIDs() -> [UInt32] {
        var ids: [UInt32] = []
        var id: UInt32 = 0
        while ids.count < 1 << 16, bpf_prog_get_next_id(id, &id) == 0 { ids.append(id) }
        return ids
    }

    /// The table of kallsyms `text`, and whether every address in it was zero.
    static func parse(_ text: [UInt8]) -> (SymbolTable, restricted: Bool) {
        var builder = SymbolTableBuilder(withSizes: false, withModules: true,
                                         expectedCount: text.count / 40, expectedNameBytes: text.count / 2)
        let kernel = builder.module(named: "[kernel]")
        var sawText = false
        var sawAddress = false
        text.withUnsafeBytes { bytes in
            let n = bytes.count
            var lastModule: Range<Int> = 0..<0
            var lastModuleIndex = kernel
            var i = 0
            while i < n {
                var lineEnd = i
                while lineEnd < n, bytes[lineEnd] != UInt8(ascii: "\n") { lineEnd += 1 }
                defer { i = lineEnd + 1 }
                var address: UInt64 = 0
                var p = i
                while p < lineEnd, let digit = hexValue(bytes[p]) {
                    address = address &<< 4 | UInt64(digit)
                    p += 1
                }
                guard p > i, p + 3 < lineEnd, bytes[p] == UInt8(ascii: " "), bytes[p + 2] == UInt8(ascii: " ") else { continue }
                let kind = bytes[p + 1]
                let bindingRank: UInt8
                switch kind {
                case UInt8(ascii: "T"): bindingRank = 0
                case UInt8(ascii: "W"), UInt8(ascii: "w"): bindingRank = 1
                case UInt8(ascii: "t"): bindingRank = 2
                default: continue
                }
                let nameStart = p + 3
                var nameEnd = nameStart
                while nameEnd < lineEnd, bytes[nameEnd] != UInt8(ascii: "\t"), bytes[nameEnd] != UInt8(ascii: " ") { nameEnd += 1 }
                guard nameEnd > nameStart else { continue }
                var module = kernel
                var m = nameEnd
                while m < lineEnd, bytes[m] == UInt8(ascii: "\t") || bytes[m] == UInt8(ascii: " ") { m += 1 }
                if m < lineEnd, bytes[m] == UInt8(ascii: "[") {
                    var close = m
                    while close < lineEnd, bytes[close] != UInt8(ascii: "]") { close += 1 }
                    let range = m..<min(close + 1, lineEnd)
                    if range.count == lastModule.count,
                       memcmp(bytes.baseAddress! + range.lowerBound, bytes.baseAddress! + lastModule.lowerBound, range.count) == 0 {
                        module = lastModuleIndex
                    } else {
                        module = builder.module(named: String(decoding: UnsafeRawBufferPointer(rebasing: bytes[range]), as: UTF8.self))
                        lastModule = range
                        lastModuleIndex = module
                    }
                }
                sawText = true
                guard address != 0 else { continue }
                sawAddress = true
                let name = UnsafeRawBufferPointer(rebasing: bytes[nameStart..<nameEnd])
                builder.append(address: address, name: name, module: module,
                               rank: bindingRank << 2 | SymbolTableBuilder.underscores(name))
            }
        }
        return (builder.build(), sawText && !sawAddress)
    }

    @inline(__always)
    private static func hexValue(_ byte: UInt8) -> UInt8? {
        switch byte {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): byte - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): byte - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): byte - UInt8(ascii: "A") + 10
        default: nil
        }
    }
}
