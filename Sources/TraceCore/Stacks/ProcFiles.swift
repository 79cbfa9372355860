import Glibc

/// Small file helpers for procfs, where sizes are unknown until read.
enum ProcFiles {
    /// The whole content of `path`, read until end of file; nil when it cannot be opened
    /// or read.
    static func read(_ path: String, sizeHint: Int = 1 << 16) -> [UInt8]? {
        let fd = path.withCString { open($0, O_RDONLY | O_CLOEXEC) }
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var bytes: [UInt8] = []
        bytes.reserveCapacity(sizeHint)
        let chunkSize = 1 << 16
        let chunk = UnsafeMutableRawBufferPointer.allocate(byteCount: chunkSize, alignment: 8)
        defer { chunk.deallocate() }
        while true {
            let got = Glibc.read(fd, chunk.baseAddress, chunkSize)
            if got < 0 {
                if errno == EINTR { continue }
                return nil
            }
            if got == 0 { return bytes }
            bytes.append(contentsOf: UnsafeRawBufferPointer(rebasing: chunk[0..<got]))
        }
    }

    /// Monotonic seconds, for refresh intervals and retention.
    static func monotonicNow() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
