/// Where in a BPF program's life something happened.
public enum KernelStage: String, Sendable, Codable, Hashable {
    case open, load, attach, read
}

/// A failed kernel operation: what was being done, at which stage, and the errno.
public struct KernelError: Error, Sendable, Hashable, CustomStringConvertible {
    public var stage: KernelStage
    /// The errno (nil when the failure has none).
    public var errno: Errno?
    /// The operation, e.g. `load cap_fentry` or `attach kprobe __x64_sys_read`.
    public var operation: String
    /// libbpf's or the verifier's last words, if any.
    public var detail: String

    public init(stage: KernelStage, errno: Errno?, operation: String, detail: String = "") {
        self.stage = stage
        self.errno = errno
        self.operation = operation
        self.detail = detail
    }

    /// A failure from a raw positive errno value (0: none).
    public init(stage: KernelStage, code: Int32, operation: String, detail: String = "") {
        self.init(stage: stage, errno: code == 0 ? nil : Errno(rawValue: code), operation: operation, detail: detail)
    }

    public var description: String {
        var text = "\(operation) failed"
        if let errno { text += ": \(errno.name) (\(errno.message))" }
        if !detail.isEmpty { text += " — \(detail)" }
        return text
    }
}
