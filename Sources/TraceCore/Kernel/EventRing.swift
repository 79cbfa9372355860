import CLibBPF
import Glibc
import Synchronization

/// A consumer of one BPF ring buffer map: the records a probe's programs wrote, in order.
/// One owner; `close()` unmaps it and is idempotent. The map stays alive while the ring
/// is open, even when its object or slot is gone.
public protocol EventRing: AnyObject, Sendable {
    /// Readable when the ring holds records (for epoll); -1 once closed.
    var pollFD: Int32 { get }
    /// Consumes up to `max` records of `recordSize` bytes, handing each to `body` (the
    /// bytes are valid only during the call). Returns how many were consumed.
    ///
    /// - Throws: ``KernelError`` with stage `.read`.
    func consume(max: Int, recordSize: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(KernelError) -> Int
    func close()
}

extension LoadedObject {
    /// A consumer of ring buffer `map`, or of the ring at `index` of array-of-maps `map`.
    ///
    /// - Throws: ``KernelError`` with stage `.attach`; `EOPNOTSUPP` where the backend has no rings.
    public func openRing(_ map: BPFMapID, index: UInt32?) throws(KernelError) -> any EventRing {
        guard let opener = self as? any EventRingOpener else {
            throw KernelError(stage: .attach, errno: .EOPNOTSUPP, operation: "open ring buffer \(map)")
        }
        return try opener.openRing(map, index: index)
    }
}

/// A ``LoadedObject`` whose ring buffer maps can be consumed.
public protocol EventRingOpener {
    func openRing(_ map: BPFMapID, index: UInt32?) throws(KernelError) -> any EventRing
}

/// libbpf's `ring_buffer` over one map fd (through the C shim).
final class LibBPFRing: EventRing {
    private struct Handle: ~Copyable, @unchecked Sendable {
        var ring: OpaquePointer?
        var buffer: [UInt8] = []
    }
    private let handle: Mutex<Handle>
    private let fd = Atomic<Int32>(-1)

    /// - Parameter mapFD: the ring buffer map; the ring keeps its own duplicate.
    init(mapFD: Int32, name: String) throws(KernelError) {
        guard let ring = tp_ring_open(mapFD) else {
            throw KernelError(stage: .attach, errno: .current, operation: "map ring buffer \(name)")
        }
        fd.store(tp_ring_poll_fd(ring), ordering: .releasing)
        handle = Mutex(Handle(ring: ring))
    }

    var pollFD: Int32 { fd.load(ordering: .acquiring) }

    func consume(max: Int, recordSize: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(KernelError) -> Int {
        try handle.withLock { (h) throws(KernelError) -> Int in
            guard let ring = h.ring else { return 0 }
            if h.buffer.count < max * recordSize { h.buffer = [UInt8](repeating: 0, count: max * recordSize) }
            var skipped: UInt64 = 0
            let n = h.buffer.withUnsafeMutableBytes { tp_ring_consume(ring, $0.baseAddress, recordSize, max, &skipped) }
            guard n >= 0 else { throw KernelError(stage: .read, code: Int32(-n), operation: "consume a ring buffer") }
            h.buffer.withUnsafeBytes { raw in
                for i in 0..<Int(n) { body(UnsafeRawBufferPointer(rebasing: raw[(i * recordSize)..<((i + 1) * recordSize)])) }
            }
            return Int(n) + Int(skipped)
        }
    }

    func close() {
        handle.withLock { h in
            fd.store(-1, ordering: .releasing)
            tp_ring_close(h.ring)
            h.ring = nil
            h.buffer = []
        }
    }

    deinit { close() }
}

extension LibBPFObject: EventRingOpener {
    func openRing(_ map: BPFMapID, index: UInt32?) throws(KernelError) -> any EventRing {
        try withMapFD(map, index: index) { (fd) throws(KernelError) -> any EventRing in
            try LibBPFRing(mapFD: fd, name: index.map { "\(map)[\($0)]" } ?? map.name)
        }
    }
}
