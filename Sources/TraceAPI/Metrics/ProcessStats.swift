import TraceCore
#if canImport(Glibc)
import Glibc
#endif

/// The agent's own resource use, read from `/proc/self` at each scrape.
public struct ProcessStats: Sendable, Hashable {
    /// Resident set size in bytes (`/proc/self/statm`), nil when it cannot be read.
    public var residentMemoryBytes: UInt64?
    /// Open file descriptors (entries of `/proc/self/fd`), nil when it cannot be read.
    public var openFileDescriptors: UInt64?
    /// CPU time used, user and system (getrusage).
    public var cpuSeconds: Duration?

    public init(residentMemoryBytes: UInt64? = nil, openFileDescriptors: UInt64? = nil, cpuSeconds: Duration? = nil) {
        self.residentMemoryBytes = residentMemoryBytes
        self.openFileDescriptors = openFileDescriptors
        self.cpuSeconds = cpuSeconds
    }

    /// Reads this process's figures now.
    public static func current() -> ProcessStats {
        ProcessStats(residentMemoryBytes: residentMemory(), openFileDescriptors: openFDs(), cpuSeconds: BudgetController.processCPU())
    }

    /// The second field of `/proc/self/statm` (resident pages) times the page size.
    static func residentMemory() -> UInt64? {
        #if os(Linux)
        let fd = open("/proc/self/statm", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var buffer = [UInt8](repeating: 0, count: 256)
        var n: Int
        repeat {
            n = read(fd, &buffer, buffer.count)
        } while n < 0 && errno == EINTR
        guard n > 0 else { return nil }
        let fields = buffer[..<n].split(separator: UInt8(ascii: " "))
        guard fields.count >= 2, let pages = UInt64(String(decoding: fields[1], as: UTF8.self)) else { return nil }
        let pageSize = sysconf(Int32(_SC_PAGESIZE))
        return pageSize > 0 ? pages * UInt64(pageSize) : nil
        #else
        return nil
        #endif
    }

    /// Entries of `/proc/self/fd`, not counting the one used to read it.
    static func openFDs() -> UInt64? {
        #if os(Linux)
        guard let dir = opendir("/proc/self/fd") else { return nil }
        defer { closedir(dir) }
        let own = dirfd(dir)
        var count: UInt64 = 0
        while let entry = readdir(dir) {
            let name = withUnsafeBytes(of: entry.pointee.d_name) { raw in
                String(decoding: raw.prefix { $0 != 0 }, as: UTF8.self)
            }
            guard name != ".", name != "..", Int32(name) != own else { continue }
            count += 1
        }
        return count
        #else
        return nil
        #endif
    }
}
