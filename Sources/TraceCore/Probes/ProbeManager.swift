import Dispatch
import Foundation

/// A probe as the API shows it.
public struct Probe: Sendable, Codable, Hashable {
    public var name: String
    public var spec: ProbeSpec
    /// `active`, or `failed` for a restored probe that no longer attaches (kept, so the
    /// desired state is not lost; a PUT retries it).
    public var state: String
    /// The mechanism attached; null when the probe is not attached.
    public var mechanism: String?
    public var attempts: [AttachAttempt]
    public var createdAt: Date
    public var updatedAt: Date
    public var expiresAt: Date?
    public var generation: Int

    enum CodingKeys: String, CodingKey {
        case name, spec, state, mechanism, attempts, generation
        case createdAt = "created_at"
        case updatedAt = "updated_at"
        case expiresAt = "expires_at"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(spec, forKey: .spec)
        try c.encode(state, forKey: .state)
        try c.encode(mechanism, forKey: .mechanism)
        try c.encode(attempts, forKey: .attempts)
        try c.encode(createdAt, forKey: .createdAt)
        try c.encode(updatedAt, forKey: .updatedAt)
        try c.encode(expiresAt, forKey: .expiresAt)
        try c.encode(generation, forKey: .generation)
    }
}

/// A probe's aggregates as the API shows them.
public struct ProbeMetrics: Sendable, Codable, Hashable {
    public struct Latency: Sendable, Codable, Hashable {
        public var count: UInt64
        public var sum: UInt64
        public var buckets: [ProbeCounters.Bucket]
    }
    public struct Overhead: Sendable, Codable, Hashable {
        public var runTimeNanoseconds: UInt64
        public var runCount: UInt64
        enum CodingKeys: String, CodingKey {
            case runTimeNanoseconds = "run_time_ns"
            case runCount = "run_count"
        }
    }
    public var name: String
    public var mechanism: String
    public var target: String
    public var since: Date
    public var calls: UInt64
    public var errors: UInt64
    public var latencyNanoseconds: Latency?
    public var byProcess: [ProbeCounters.Process]
    public var overhead: Overhead

    enum CodingKeys: String, CodingKey {
        case name, mechanism, target, since, calls, errors, overhead
        case latencyNanoseconds = "latency_ns"
        case byProcess = "by_process"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(name, forKey: .name)
        try c.encode(mechanism, forKey: .mechanism)
        try c.encode(target, forKey: .target)
        try c.encode(since, forKey: .since)
        try c.encode(calls, forKey: .calls)
        try c.encode(errors, forKey: .errors)
        try c.encode(latencyNanoseconds, forKey: .latencyNanoseconds)
        try c.encode(byProcess, forKey: .byProcess)
        try c.encode(overhead, forKey: .overhead)
    }

    public init(name: String, mechanism: String, target: String, since: Date, counters: ProbeCounters, countsOnly: Bool) {
        self.name = name
        self.mechanism = mechanism
        self.target = target
        self.since = since
        calls = counters.calls
        errors = counters.errors
        latencyNanoseconds = countsOnly ? nil : Latency(count: counters.latencyCount, sum: counters.latencySumNanoseconds, buckets: counters.buckets)
        byProcess = counters.processes
        overhead = Overhead(runTimeNanoseconds: counters.runTimeNanoseconds, runCount: counters.runCount)
    }
}

/// Why a probe operation failed. Public struct over a private code so cases can grow.
public struct ProbeError: Error, Sendable {
    public enum Kind: Sendable, Hashable {
        case invalid, notFound, conflict, tooMany, attachFailed, unavailable
    }
    public var kind: Kind
    public var detail: String
    public var fieldErrors: [FieldError] = []
    public var attempts: [AttachAttempt] = []
}

/// How a PUT ended.
public enum PutOutcome: Sendable, Hashable {
    case created, unchanged, replaced
}

/// Owns every probe of the agent: the desired specs and their kernel attachments.
/// Kernel work runs off the actor (names are reserved first), so reads never wait on attach.
public actor ProbeManager {
    struct Entry {
        var spec: ProbeSpec
        /// Nil for a restored probe that no longer attaches.
        var probe: AttachedProbe?
        var failedAttempts: [AttachAttempt] = []
        var createdAt: Date
        var updatedAt: Date
        var expiresAt: Date?
        var generation: Int

        init(spec: ProbeSpec, probe: AttachedProbe?, failedAttempts: [AttachAttempt] = [], createdAt: Date, updatedAt: Date,
             expiresAt: Date?, generation: Int) {
            self.spec = spec
            self.probe = probe
            self.failedAttempts = failedAttempts
            self.createdAt = createdAt
            self.updatedAt = updatedAt
            self.expiresAt = expiresAt
            self.generation = generation
        }

        func view(name: String) -> Probe {
            Probe(name: name, spec: spec, state: probe == nil ? "failed" : "active", mechanism: probe?.flavour.rawValue,
                  attempts: probe?.attempts ?? failedAttempts,
                  createdAt: createdAt, updatedAt: updatedAt, expiresAt: expiresAt, generation: generation)
        }
    }

    /// How restoring one saved probe ended.
    public struct RestoreOutcome: Sendable {
        public var name: String
        public var probe: Probe?
        /// Why it was not restored as active (expired while the agent was down, or no mechanism attached).
        public var problem: String?
    }

    public nonisolated let maxProbes: Int
    private let planner: Planner
    private let reaper: Reaper
    private let report: @Sendable () async -> CapabilityReport?
    private let state: StateStore?
    private var entries: [String: Entry] = [:]
    private var pending: Set<String> = []
    private var expiryTask: Task<Void, Never>?
    /// Attach attempts by mechanism and outcome, for self-metrics.
    public private(set) var attemptCounts: [String: Int] = [:]

    /// - Parameter report: the current capability report (syscall prefix, task storage,
    ///   disabled mechanisms); nil while capabilities are not probed yet.
    /// - Parameter state: where desired probes are saved after every change (nil: nowhere).
    public init(planner: Planner, reaper: Reaper = .shared, maxProbes: Int = 256, state: StateStore? = nil,
                report: @escaping @Sendable () async -> CapabilityReport?) {
        self.planner = planner
        self.reaper = reaper
        self.maxProbes = maxProbes
        self.state = state
        self.report = report
    }

    /// Saves the desired probes and waits until they are on disk, so that an acknowledged
    /// change survives a crash (saves from concurrent changes share one write).
    private func persistDurably() async {
        persist()
        await state?.flushed()
    }

    /// Requests a save of the desired probes (active and failed) if a state store is configured.
    private func persist() {
        guard let state else { return }
        let probes = entries.sorted { $0.key < $1.key }.map { name, entry in
            var spec = entry.spec
            spec.name = name
            return PersistedState.Probe(spec: spec, createdAt: entry.createdAt, expiresAt: entry.expiresAt, generation: entry.generation)
        }
        state.save(PersistedState(savedAt: Date(), probes: probes))
    }

    /// Re-plans saved probes on the current kernel, keeping their names, labels, generation
    /// and remaining TTL. A probe that no longer attaches is kept as `failed` with its attempts.
    public func restore(_ saved: PersistedState) async -> [RestoreOutcome] {
        var outcomes: [RestoreOutcome] = []
        let now = Date()
        for item in saved.probes {
            guard let name = item.spec.name else { continue }
            if let expiry = item.expiresAt, expiry <= now {
                outcomes.append(RestoreOutcome(name: name, probe: nil, problem: "its TTL expired while the agent was down"))
                continue
            }
            if entries[name] != nil || entries.count >= maxProbes {
                outcomes.append(RestoreOutcome(name: name, probe: nil, problem: entries[name] != nil ? "a probe with this name already exists" : "the probe limit (\(maxProbes)) is reached"))
                continue
            }
            let spec: ProbeSpec
            do { spec = try Self.normalize(item.spec) } catch {
                outcomes.append(RestoreOutcome(name: name, probe: nil, problem: "the saved spec is no longer valid: \(error.detail)"))
                continue
            }
            var entry = Entry(spec: spec, probe: nil, createdAt: item.createdAt, updatedAt: now, expiresAt: item.expiresAt,
                              generation: item.generation)
            var problem: String?
            do {
                entry.probe = try await plan(spec)
            } catch {
                entry.failedAttempts = error.attempts
                problem = error.detail
            }
            entries[name] = entry
            outcomes.append(RestoreOutcome(name: name, probe: entry.view(name: name), problem: problem))
        }
        await persistDurably()
        return outcomes
    }

    /// Starts detaching expired probes (checked every 200 ms, so within a second of expiry).
    public func startExpiry() {
        guard expiryTask == nil else { return }
        expiryTask = Task { [weak self] in
            while !Task.isCancelled {
                try? await Task.sleep(for: .milliseconds(200))
                await self?.expire(now: Date())
            }
        }
    }

    func expire(now: Date) {
        var changed = false
        for (name, entry) in entries {
            if let expiry = entry.expiresAt, expiry <= now {
                entries[name] = nil
                entry.probe?.detach(reaper: reaper)
                changed = true
            }
        }
        if changed { persist() }
    }

    public func list() -> [Probe] {
        entries.sorted { $0.key < $1.key }.map { $0.value.view(name: $0.key) }
    }

    public func get(_ name: String) throws(ProbeError) -> Probe {
        guard let entry = entries[name] else { throw Self.notFound(name) }
        return entry.view(name: name)
    }

    public var count: Int { entries.count }

    /// POST: creates a probe; the same spec under an existing name returns the existing probe.
    /// - Returns: the probe and whether it was created.
    public func create(_ input: ProbeSpec) async throws(ProbeError) -> (Probe, Bool) {
        var spec = try Self.normalize(input)
        let name = spec.name ?? generateName()
        spec.name = name
        if let existing = entries[name] {
            guard Self.sameProbe(existing.spec, spec) else {
                throw ProbeError(kind: .conflict, detail: "a probe named '\(name)' exists with another spec; PUT /v1/probes/\(name) replaces it")
            }
            return (existing.view(name: name), false)
        }
        return (try await attachNew(name: name, spec: spec), true)
    }

    /// PUT: creates, leaves alone (renewing the lease), or replaces.
    public func put(name: String, spec input: ProbeSpec) async throws(ProbeError) -> (Probe, PutOutcome) {
        var input = input
        if let bodyName = input.name, bodyName != name {
            throw ProbeError(kind: .invalid, detail: "the body names '\(bodyName)' but the path names '\(name)'",
                             fieldErrors: [FieldError(field: "name", message: "must equal the name in the path")])
        }
        input.name = name
        let spec = try Self.normalize(input)
        guard var existing = entries[name] else {
            return (try await attachNew(name: name, spec: spec), .created)
        }
        let now = Date()
        if existing.spec == spec, existing.probe != nil {
            existing.expiresAt = spec.ttlSeconds.map { now.addingTimeInterval(TimeInterval($0)) }
            entries[name] = existing
            await persistDurably()
            return (existing.view(name: name), .unchanged)
        }
        if Self.sameAttachment(existing.spec, spec), existing.probe != nil {
            // Only the lease or labels changed: keep the kernel attachment.
            existing.spec = spec
            existing.generation += 1
            existing.updatedAt = now
            existing.expiresAt = spec.ttlSeconds.map { now.addingTimeInterval(TimeInterval($0)) }
            entries[name] = existing
            await persistDurably()
            return (existing.view(name: name), .replaced)
        }
        guard pending.insert(name).inserted else { throw Self.busy(name) }
        defer { pending.remove(name) }
        let attached = try await plan(spec)
        // The old attachment goes only once the new one works: a failed replace keeps it.
        if let old = entries[name] { old.probe?.detach(reaper: reaper) }
        let entry = Entry(spec: spec, probe: attached, createdAt: existing.createdAt, updatedAt: now,
                          expiresAt: spec.ttlSeconds.map { now.addingTimeInterval(TimeInterval($0)) },
                          generation: existing.generation + 1)
        entries[name] = entry
        await persistDurably()
        return (entry.view(name: name), .replaced)
    }

    /// DELETE: forgets the probe now; the kernel detach happens in the background.
    public func delete(_ name: String) async throws(ProbeError) {
        guard let entry = entries.removeValue(forKey: name) else { throw Self.notFound(name) }
        entry.probe?.detach(reaper: reaper)
        await persistDurably()
    }

    /// Reads a probe's aggregates.
    public func metrics(_ name: String) throws(ProbeError) -> ProbeMetrics {
        guard let entry = entries[name] else { throw Self.notFound(name) }
        return try Self.metrics(name: name, entry: entry)
    }

    /// Aggregates of every probe (for the Prometheus endpoint, which has no per-process
    /// series: `topProcesses` 0 skips reading the process tables).
    public func allMetrics(topProcesses: Int = 10) -> [(Probe, ProbeMetrics)] {
        entries.sorted { $0.key < $1.key }.compactMap { name, entry in
            guard let m = try? Self.metrics(name: name, entry: entry, topProcesses: topProcesses) else { return nil }
            return (entry.view(name: name), m)
        }
    }

    /// Detaches everything (shutdown). The saved desired state is left as it is, so a
    /// restart with the same state directory brings the probes back.
    public func removeAll() {
        for (_, entry) in entries { entry.probe?.detach(reaper: reaper) }
        entries.removeAll()
        expiryTask?.cancel()
        expiryTask = nil
    }

    // MARK: - Internals

    static func metrics(name: String, entry: Entry, topProcesses: Int = 10) throws(ProbeError) -> ProbeMetrics {
        guard let probe = entry.probe else {
            throw ProbeError(kind: .conflict, detail: "probe '\(name)' is not attached: restoring it failed; PUT it again to retry")
        }
        do {
            let counters = try probe.read(topProcesses: topProcesses)
            return ProbeMetrics(name: name, mechanism: probe.flavour.rawValue, target: entry.spec.target.label,
                                since: entry.updatedAt, counters: counters, countsOnly: probe.countsOnly)
        } catch {
            throw ProbeError(kind: .unavailable, detail: "reading the probe's maps failed: \(error)")
        }
    }

    private func attachNew(name: String, spec: ProbeSpec) async throws(ProbeError) -> Probe {
        guard entries.count + pending.count < maxProbes else {
            throw ProbeError(kind: .tooMany, detail: "the agent holds at most \(maxProbes) probes; delete some first")
        }
        guard pending.insert(name).inserted else { throw Self.busy(name) }
        defer { pending.remove(name) }
        let attached = try await plan(spec)
        let now = Date()
        let entry = Entry(spec: spec, probe: attached, createdAt: now, updatedAt: now,
                          expiresAt: spec.ttlSeconds.map { now.addingTimeInterval(TimeInterval($0)) }, generation: 1)
        entries[name] = entry
        await persistDurably()
        return entry.view(name: name)
    }

    private func plan(_ spec: ProbeSpec) async throws(ProbeError) -> AttachedProbe {
        guard let report = await report() else {
            throw ProbeError(kind: .unavailable, detail: "capabilities are not probed yet; retry when /readyz answers 200")
        }
        // Bound what is still being detached before attaching more (see Reaper).
        await reaper.waitForRoom(below: 16)
        let planner = self.planner
        // Loading and attaching block in the kernel: keep them off the threads of Swift tasks.
        let result = await BlockingWork.attach.run { planner.attach(spec, report: report) }
        let attempts: [AttachAttempt]
        switch result {
        case .success(let probe): attempts = probe.attempts
        case .failure(let failure): attempts = failure.attempts
        }
        for attempt in attempts { attemptCounts["\(attempt.mechanism)|\(attempt.outcome.rawValue)", default: 0] += 1 }
        switch result {
        case .success(let probe):
            return probe
        case .failure(let failure):
            throw ProbeError(kind: .attachFailed,
                             detail: "no mechanism could attach \(spec.target.label): " + failure.attempts.map { "\($0.mechanism) \($0.outcome.rawValue)" }.joined(separator: ", "),
                             attempts: failure.attempts)
        }
    }

    static func normalize(_ spec: ProbeSpec) throws(ProbeError) -> ProbeSpec {
        let errors = spec.validate()
        if !errors.isEmpty {
            throw ProbeError(kind: .invalid, detail: "the probe spec is invalid: " + errors.map { "\($0.field) \($0.message)" }.joined(separator: "; "),
                             fieldErrors: errors)
        }
        var normalized = spec
        if spec.mechanisms != nil { normalized.mechanisms = spec.flavours.map(\.rawValue) }
        if normalized.labels?.isEmpty == true { normalized.labels = nil }
        return normalized
    }

    static func sameAttachment(_ a: ProbeSpec, _ b: ProbeSpec) -> Bool {
        a.target == b.target && a.mechanisms == b.mechanisms && a.filter == b.filter
    }

    static func sameProbe(_ a: ProbeSpec, _ b: ProbeSpec) -> Bool { a == b }

    private func generateName() -> String {
        while true {
            let candidate = "probe-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
            if entries[candidate] == nil && !pending.contains(candidate) { return candidate }
        }
    }

    static func notFound(_ name: String) -> ProbeError {
        ProbeError(kind: .notFound, detail: "no probe named '\(name)'")
    }

    static func busy(_ name: String) -> ProbeError {
        ProbeError(kind: .conflict, detail: "another request is changing probe '\(name)' right now; retry")
    }
}
