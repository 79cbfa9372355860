import CBPFLayouts
import Dispatch
import Synchronization

/// A `kstack` or `ustack` key part as the kernel packs it (`TP_K_KSTACK`, `TP_K_USTACK`):
/// the hash its frames are stored under in the probe's stack map, or why there are none,
/// and for a user stack the process its addresses belong to.
public struct StackRef: Sendable, Hashable {
    public enum Space: String, Sendable, Hashable { case kernel, user }
    public var space: Space
    /// The frames' hash (odd); `TP_STACK_NONE` or `TP_STACK_FULL` when none were stored.
    public var hash: UInt64
    /// The process (tgid) of a user stack; 0 for kernel stacks.
    public var tgid: UInt32

    public init(space: Space, hash: UInt64, tgid: UInt32 = 0) {
        self.space = space
        self.hash = hash
        self.tgid = tgid
    }

    /// Why no frames were recorded, as a frame of its own; nil for a recorded stack and for
    /// none at all (a kernel thread has no user stack; the sample is still counted).
    public var lossFrame: String? {
        hash == UInt64(TP_STACK_FULL) ? "[\(space == .kernel ? "kernel" : "user") stack lost: the stack map is full]" : nil
    }

    /// Whether frames were stored under it.
    public var isRecorded: Bool { hash & 1 == 1 }
}

/// A probe's stack map, symbolized: the frames of every stack its key table names,
/// innermost first. A stack is resolved once (its id keeps naming the same frames while the
/// map lives) and kept while a key names it, so the stacks of a process that exited keep
/// the names they had while it ran. While the probe is attached, new stacks are resolved
/// every ``period`` in the background, not only when someone asks.
final class StackTable: Sendable {
    /// The frames stored under a stack hash, nil when the map has none.
    typealias Lookup = (UInt64) -> [UInt64]?
    /// The stack parts the key table names now, and how to look their frames up.
    typealias Reader = @Sendable () throws(KernelError) -> (refs: Set<StackRef>, lookup: Lookup)

    static let period: DispatchTimeInterval = .seconds(1)
    /// Most stacks kept resolved (a key table holds at most 65,536 keys of up to 3 stacks).
    static let maxResolved = 3 * AggregateSpec.maxMaxKeys

    private let resolved = Mutex<[StackRef: [StackFrame]]>([:])
    private let timer = Mutex<Timer?>(nil)
    /// A dispatch timer: thread-safe to cancel from anywhere (Dispatch does not say Sendable).
    private struct Timer: @unchecked Sendable { let source: any DispatchSourceTimer }
    private let kernel: KernelSymbolizer
    private let user: UserSymbolizer

    /// Whether the tracer's own innermost kernel frames are left out (tracing flavours; a
    /// profile's sample may have interrupted any BPF program, which is CPU worth seeing).
    private let stripsTracer: Bool

    init(kernel: KernelSymbolizer = .shared, user: UserSymbolizer = .shared, stripsTracer: Bool = true) {
        self.kernel = kernel
        self.user = user
        self.stripsTracer = stripsTracer
    }

    deinit { stop() }

    /// Resolves what `read` finds now and every ``period`` until ``stop()``.
    func start(_ read: @escaping Reader) {
        let source = DispatchSource.makeTimerSource(queue: .global(qos: .utility))
        source.schedule(deadline: .now() + Self.period, repeating: Self.period, leeway: .milliseconds(500))
        source.setEventHandler { [weak self] in
            guard let self, let (refs, lookup) = try? read() else { return }
            _ = self.frames(for: refs, lookup: lookup)
        }
        let old = timer.withLock { t -> Timer? in
            defer { t = Timer(source: source) }
            return t
        }
        old?.source.cancel()
        source.resume()
    }

    /// Stops the background resolution (idempotent).
    func stop() {
        let old = timer.withLock { t -> Timer? in
            defer { t = nil }
            return t
        }
        old?.source.cancel()
    }

    /// The frames (innermost first) of each of `refs`, resolving those not seen before with
    /// the stack map's frames (looked up only for those); resolved stacks no key names any
    /// more are forgotten.
    func frames(for refs: Set<StackRef>, lookup: Lookup) -> [StackRef: [StackFrame]] {
        let known = resolved.withLock { $0 }
        var out: [StackRef: [StackFrame]] = [:]
        out.reserveCapacity(refs.count)
        var fresh: [StackRef: [StackFrame]] = [:]
        // First the mappings of every process with a new stack (cheap), then the ELF files
        // (slow for large binaries): a process that exits meanwhile is still named.
        for tgid in Set(refs.filter { $0.space == .user && known[$0] == nil }.map(\.tgid)) { user.remember(tgid: tgid) }
        if refs.contains(where: { $0.space == .kernel && known[$0] == nil }) { kernel.refresh() }
        for ref in refs {
            if let frames = known[ref] { out[ref] = frames; continue }
            guard ref.isRecorded, let stack = lookup(ref.hash) else { out[ref] = []; continue }
            let frames: [StackFrame]
            switch ref.space {
            case .kernel:
                let all = kernel.symbolize(stack)
                frames = stripsTracer ? Self.withoutTracer(all) : all
            case .user:
                frames = user.symbolize(tgid: ref.tgid, ips: stack)
            }
            out[ref] = frames
            fresh[ref] = frames
        }
        resolved.withLock { table in
            for (ref, frames) in fresh where table.count < Self.maxResolved { table[ref] = frames }
            if table.count > refs.count { table = table.filter { refs.contains($0.key) || fresh[$0.key] != nil } }
        }
        return out
    }

    /// Prefixes of the frames the tracing itself adds at the innermost end of a kernel stack:
    /// the probe's program, its fentry trampoline, the raw tracepoint's BPF runner.
    static let tracerFramePrefixes = ["bpf_prog_", "bpf_trampoline_", "bpf_trace_run", "__bpf_trace_", "__bpf_prog_enter"]

    /// `frames` (innermost first) without the tracer's own frames at the innermost end:
    /// a stack begins where the traced code was (a BTF tracepoint's `__traceiter_X`, an
    /// fentry probe's function), as a kprobe's or perf tracepoint's stack does.
    static func withoutTracer(_ frames: [StackFrame]) -> [StackFrame] {
        let tracer = frames.prefix { frame in
            guard let symbol = frame.symbol else { return false }
            return tracerFramePrefixes.contains { symbol.hasPrefix($0) }
        }
        return tracer.count < frames.count ? Array(frames.dropFirst(tracer.count)) : frames
    }

    /// Looks stacks up in `object`'s stack map `map`, one lookup per stack asked for.
    static func lookup(in object: any LoadedObject, map: BPFMapID) -> Lookup {
        { hash in
            let key = withUnsafeBytes(of: hash.littleEndian) { Array($0) }
            guard let values = try? object.lookup(map: map, key: key), let value = values.first else { return nil }
            return instructionPointers(value)
        }
    }

    /// The instruction pointers of a stack map value (`TP_STACK_DEPTH` u64s, zero after the
    /// last frame).
    static func instructionPointers(_ value: [UInt8]) -> [UInt64] {
        var ips: [UInt64] = []
        value.withUnsafeBytes { raw in
            let n = raw.count / 8
            ips.reserveCapacity(min(n, 32))
            for i in 0..<n {
                let ip = raw.loadUnaligned(fromByteOffset: 8 * i, as: UInt64.self)
                if ip == 0 { break }
                ips.append(ip)
            }
        }
        return ips
    }
}
