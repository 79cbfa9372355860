import Foundation

/// Where a probe stands.
public enum ProbeState: String, Sendable, Codable, Hashable, CaseIterable {
    /// Attached and counting.
    case active
    /// A restored probe that no longer attaches: kept, so the desired state is not lost;
    /// a PUT retries it.
    case failed
    /// Attached, recording one call in N to stay within its budget (see ``BudgetPolicy``).
    case throttled
    /// Attached, recording nothing: even sampled it was over its budget. Resumes by itself
    /// once under half of it, after a hold-off, or on a PUT.
    case suspended
}

/// A probe as the API shows it.
public struct Probe: Sendable, Codable, Hashable {
    public var name: String
    public var spec: ProbeSpec
    public var state: ProbeState
    /// The flavour attached; nil when the probe is not attached.
    public var mechanism: Flavour?
    public var attempts: [AttachAttempt]
    public var createdAt: Date
    public var updatedAt: Date
    public var expiresAt: Date?
    public var generation: Int
    /// Why the probe is throttled, suspended or failed (nil when active).
    public var stateReason: String?
    /// What the probe costs and how its budget holds it, for budgeted probes.
    public var cost: BudgetStatus?
    /// With `serve --pin-dir`, how the agent's start-up restored it: `adopted` (its pinned
    /// maps and links, counting on), or `replaced: why` (attached anew). Nil otherwise.
    public var restore: String? = nil

    enum CodingKeys: String, CodingKey {
        case name, spec, state, mechanism, attempts, generation, cost, restore
        case stateReason = "state_reason"
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case expiresAt = "expires_at"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(spec, forKey: .spec)
        try c.encode(state, forKey: .state)
        try c.encode(stateReason, forKey: .stateReason)
        try c.encode(mechanism, forKey: .mechanism)
        try c.encode(attempts, forKey: .attempts)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(updatedAt, forKey: .updatedAt)
        try c.encode(expiresAt, forKey: .expiresAt)
        try c.encode(generation, forKey: .generation)
        try c.encodeIfPresent(cost, forKey: .cost)
        try c.encodeIfPresent(restore, forKey: .restore)
    }
}

/// How a PUT ended. The API says it in the `Probe-Outcome` response header.
public enum PutOutcome: String, Sendable, Hashable {
    /// No probe had the name: it was attached (201).
    case created
    /// The same spec: nothing changed but the lease, which was renewed (200).
    case unchanged
    /// Another spec: the new one attached, then the old one was detached (200).
    case replaced
}
