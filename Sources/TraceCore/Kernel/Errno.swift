import Glibc

/// An errno value, named the way the kernel and the API name it (`EPERM`, `ENOTSUPP`).
///
/// The one errno vocabulary of the agent: kernel errors, attach attempts, capability
/// results and state-save failures carry this value; only their JSON encoding turns it
/// into a name (`E<n>` for values without one), and decoding reads either form back.
public struct Errno: RawRepresentable, Hashable, Sendable, CustomStringConvertible, Codable {
    public var rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public static let EPERM = Errno(rawValue: Glibc.EPERM)
    public static let ENOENT = Errno(rawValue: Glibc.ENOENT)
    public static let ESRCH = Errno(rawValue: Glibc.ESRCH)
    public static let EINTR = Errno(rawValue: Glibc.EINTR)
    public static let EIO = Errno(rawValue: Glibc.EIO)
    public static let E2BIG = Errno(rawValue: Glibc.E2BIG)
    public static let ENOEXEC = Errno(rawValue: Glibc.ENOEXEC)
    public static let EBADF = Errno(rawValue: Glibc.EBADF)
    public static let EAGAIN = Errno(rawValue: Glibc.EAGAIN)
    public static let ENOMEM = Errno(rawValue: Glibc.ENOMEM)
    public static let EACCES = Errno(rawValue: Glibc.EACCES)
    public static let EFAULT = Errno(rawValue: Glibc.EFAULT)
    public static let EBUSY = Errno(rawValue: Glibc.EBUSY)
    public static let EEXIST = Errno(rawValue: Glibc.EEXIST)
    public static let ENODEV = Errno(rawValue: Glibc.ENODEV)
    public static let ENOTDIR = Errno(rawValue: Glibc.ENOTDIR)
    public static let EISDIR = Errno(rawValue: Glibc.EISDIR)
    public static let EINVAL = Errno(rawValue: Glibc.EINVAL)
    public static let ENFILE = Errno(rawValue: Glibc.ENFILE)
    public static let EMFILE = Errno(rawValue: Glibc.EMFILE)
    public static let EFBIG = Errno(rawValue: Glibc.EFBIG)
    public static let ENOSPC = Errno(rawValue: Glibc.ENOSPC)
    public static let EROFS = Errno(rawValue: Glibc.EROFS)
    public static let ERANGE = Errno(rawValue: Glibc.ERANGE)
    public static let ENAMETOOLONG = Errno(rawValue: Glibc.ENAMETOOLONG)
    public static let ENOSYS = Errno(rawValue: Glibc.ENOSYS)
    public static let ELOOP = Errno(rawValue: Glibc.ELOOP)
    public static let EOPNOTSUPP = Errno(rawValue: Glibc.EOPNOTSUPP)
    public static let EDQUOT = Errno(rawValue: Glibc.EDQUOT)
    public static let EAFNOSUPPORT = Errno(rawValue: Glibc.EAFNOSUPPORT)
    public static let EADDRINUSE = Errno(rawValue: Glibc.EADDRINUSE)
    public static let EADDRNOTAVAIL = Errno(rawValue: Glibc.EADDRNOTAVAIL)
    public static let ENOBUFS = Errno(rawValue: Glibc.ENOBUFS)
    /// The kernel's "operation not supported" (524), which glibc does not name.
    public static let ENOTSUPP = Errno(rawValue: 524)

    public static let named: [(Errno, String)] = [
        (.EPERM, "EPERM"), (.ENOENT, "ENOENT"), (.ESRCH, "ESRCH"), (.EINTR, "EINTR"), (.EIO, "EIO"), (.E2BIG, "E2BIG"),
        (.ENOEXEC, "ENOEXEC"), (.EBADF, "EBADF"), (.EAGAIN, "EAGAIN"), (.ENOMEM, "ENOMEM"), (.EACCES, "EACCES"),
        (.EFAULT, "EFAULT"), (.EBUSY, "EBUSY"), (.EEXIST, "EEXIST"), (.ENODEV, "ENODEV"), (.ENOTDIR, "ENOTDIR"),
        (.EISDIR, "EISDIR"), (.EINVAL, "EINVAL"), (.ENFILE, "ENFILE"), (.EMFILE, "EMFILE"), (.EFBIG, "EFBIG"),
        (.ENOSPC, "ENOSPC"), (.EROFS, "EROFS"), (.ERANGE, "ERANGE"), (.ENAMETOOLONG, "ENAMETOOLONG"), (.ENOSYS, "ENOSYS"),
        (.ELOOP, "ELOOP"), (.EOPNOTSUPP, "EOPNOTSUPP"), (.EDQUOT, "EDQUOT"), (.ENOTSUPP, "ENOTSUPP"),
        (.EAFNOSUPPORT, "EAFNOSUPPORT"), (.EADDRINUSE, "EADDRINUSE"), (.EADDRNOTAVAIL, "EADDRNOTAVAIL"), (.ENOBUFS, "ENOBUFS"),
    ]
    private static let names = Dictionary(named.map { ($0.0.rawValue, $0.1) }, uniquingKeysWith: { a, _ in a })
    private static let values = Dictionary(named.map { ($0.1, $0.0) }, uniquingKeysWith: { a, _ in a })

    /// `EPERM`, or `E<n>` for a value without a name here.
    public var name: String { Self.names[rawValue] ?? "E\(rawValue)" }

    /// The name when this vocabulary has one, else nil.
    public var knownName: String? { Self.names[rawValue] }
    public var description: String { name }

    /// The C library's sentence for it (`Operation not permitted`).
    public var message: String {
        self == .ENOTSUPP ? "Operation not supported" : String(cString: strerror(rawValue))
    }

    /// Parses a name (`EPERM`) or the `E<n>` form.
    public init?(name: String) {
        if let known = Self.values[name] {
            self = known
        } else if name.hasPrefix("E"), let value = Int32(name.dropFirst()), value > 0 {
            self.init(rawValue: value)
        } else {
            return nil
        }
    }

    /// The calling thread's `errno` now.
    public static var current: Errno { Errno(rawValue: Glibc.errno) }

    /// The agent itself ran out of something (file descriptors, memory): retrying later can
    /// work, and the request was not at fault.
    public var isResourceExhaustion: Bool { self == .EMFILE || self == .ENFILE || self == .ENOMEM }

    public init(from decoder: any Decoder) throws {
        let text = try decoder.singleValueContainer().decode(String.self)
        guard let value = Errno(name: text) else {
            throw DecodingError.dataCorrupted(.init(codingPath: decoder.codingPath, debugDescription: "'\(text)' is not an errno name"))
        }
        self = value
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.singleValueContainer()
        try c.encode(name)
    }
}
