import Glibc

/// The name of an errno value (`EPERM`, `ENOENT`, …), or `E<n>` for values we do not name.
public func errnoName(_ code: Int32) -> String {
    switch code {
    case EPERM: "EPERM"
    case ENOENT: "ENOENT"
    case ESRCH: "ESRCH"
    case EINTR: "EINTR"
    case EIO: "EIO"
    case E2BIG: "E2BIG"
    case EBADF: "EBADF"
    case EAGAIN: "EAGAIN"
    case ENOMEM: "ENOMEM"
    case EACCES: "EACCES"
    case EFAULT: "EFAULT"
    case EBUSY: "EBUSY"
    case EEXIST: "EEXIST"
    case ENODEV: "ENODEV"
    case ENOTDIR: "ENOTDIR"
    case EINVAL: "EINVAL"
    case EMFILE: "EMFILE"
    case ENOSPC: "ENOSPC"
    case ERANGE: "ERANGE"
    case ENOSYS: "ENOSYS"
    case EOPNOTSUPP: "EOPNOTSUPP"
    case ENOEXEC: "ENOEXEC"
    case ELOOP: "ELOOP"
    case ENAMETOOLONG: "ENAMETOOLONG"
    case 524: "ENOTSUPP"
    default: "E\(code)"
    }
}

/// A failed kernel operation: what was being done, at which stage, and the errno.
public struct KernelError: Error, Sendable, Hashable, CustomStringConvertible {
    /// Where in a program's life the failure happened.
    public enum Stage: String, Sendable, Codable, Hashable {
        case open, load, attach, read
    }

    public var stage: Stage
    /// Positive errno value (0 when the failure has none).
    public var errno: Int32
    /// The operation, e.g. `load cap_fentry` or `attach kprobe __x64_sys_read`.
    public var operation: String
    /// libbpf's or the verifier's last words, if any.
    public var detail: String

    public init(stage: Stage, errno: Int32, operation: String, detail: String = "") {
        self.stage = stage
        self.errno = errno
        self.operation = operation
        self.detail = detail
    }

    public var errnoName: String? { errno == 0 ? nil : TraceCore.errnoName(errno) }

    public var description: String {
        var text = "\(operation) failed"
        if errno != 0 { text += ": \(TraceCore.errnoName(errno)) (\(String(cString: strerror(errno))))" }
        if !detail.isEmpty { text += " — \(detail)" }
        return text
    }
}
