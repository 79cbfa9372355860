import Glibc

/// One flavour tried for a probe. Typed inside; the JSON names the flavour (`mechanism`),
/// the stage and the errno.
public struct AttachAttempt: Sendable, Codable, Hashable, Error {
    public enum Outcome: String, Sendable, Codable, Hashable {
        case attached, unsupported, denied, error
    }
    public var flavour: Flavour
    public var outcome: Outcome
    /// `load` or `attach`; nil when the kernel was not asked (disabled by configuration,
    /// ruled out by the capability probe, refused by the agent before any load).
    public var stage: KernelStage?
    public var errno: Errno?
    public var message: String

    public init(flavour: Flavour, outcome: Outcome, stage: KernelStage?, errno: Errno?, message: String) {
        self.flavour = flavour
        self.outcome = outcome
        self.stage = stage
        self.errno = errno
        self.message = message
    }

    /// The attempt that `error` ended, classified for the mechanism that failed.
    static func failed(_ flavour: Flavour, _ mechanism: Mechanism, _ error: KernelError, facts: KernelFacts) -> AttachAttempt {
        let verdict = Classifier.classify(mechanism, error, facts: facts)
        return AttachAttempt(flavour: flavour, outcome: Outcome(verdict.status), stage: error.stage == .attach ? .attach : .load,
                             errno: error.errno, message: verdict.message)
    }

    enum CodingKeys: String, CodingKey {
        case flavour = "mechanism"
        case outcome, stage, errno, message
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(flavour, forKey: .flavour)
        try c.encode(outcome, forKey: .outcome)
        try c.encode(stage, forKey: .stage)
        try c.encode(errno, forKey: .errno)
        try c.encode(message, forKey: .message)
    }
}

extension AttachAttempt.Outcome {
    init(_ status: CapabilityStatus) {
        switch status {
        case .supported: self = .attached
        case .unsupported: self = .unsupported
        case .denied: self = .denied
        case .error: self = .error
        }
    }
}

/// No flavour attached; nothing was kept.
public struct AttachFailure: Error, Sendable {
    public var attempts: [AttachAttempt]
    /// Why no flavour was tried, when the host lacks what the spec names (a cgroup that
    /// is not there); the one attempt says it too.
    public var refusal: String? = nil

    /// The chain stopped because the agent ran out of file descriptors or memory: the
    /// request was not at fault, and the same request can work later (503, not 422).
    public var exhausted: Bool { attempts.last?.errno?.isResourceExhaustion == true }
}
