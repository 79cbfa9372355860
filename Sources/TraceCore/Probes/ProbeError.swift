/// Why a probe operation failed.
public struct ProbeError: Error, Sendable {
    public enum Kind: Sendable, Hashable {
        /// The spec is wrong (400).
        case invalid
        /// No probe of that name (404).
        case notFound
        /// The name holds another spec (POST), or the probe is not attached (409).
        case conflict
        /// The probe limit is reached (429).
        case tooMany
        /// No flavour attached: the target cannot be traced here (422, with `attempts`).
        case attachFailed
        /// The agent ran out of its own resources (file descriptors, memory) while
        /// attaching; nothing was kept and the request can work later (503 + Retry-After).
        case exhausted
        /// The change could not be saved durably in the state directory, so it was not made
        /// (nothing changed, kernel included): 507 when the disk is full, else 503.
        case notSaved
        /// The agent cannot do it now: capabilities not probed yet, shutting down, maps
        /// unreadable (503).
        case unavailable
    }
    public var kind: Kind
    public var detail: String
    public var fieldErrors: [FieldError] = []
    public var attempts: [AttachAttempt] = []
    /// For `notSaved`: the errno of the failed save.
    public var errno: Errno?

    public init(kind: Kind, detail: String, fieldErrors: [FieldError] = [], attempts: [AttachAttempt] = [], errno: Errno? = nil) {
        self.kind = kind
        self.detail = detail
        self.fieldErrors = fieldErrors
        self.attempts = attempts
        self.errno = errno
    }
}
