import Foundation
import Logging

/// Owns every probe of the agent: the desired specs and their kernel attachments.
///
/// Contract:
/// - **Linearizable per name.** Operations that change a name (POST, PUT, DELETE, restore)
///   take that name's lock in arrival order and hold it until they answer, the kernel work
///   included; expiry skips a name while an operation holds it. The final state is always
///   the one the last answered operation implies.
/// - **Durable before acknowledged.** With a state store, a change is made (committed to
///   the list, the old attachment detached) only once the desired state that includes it is
///   on disk. If the save fails, nothing changes (a probe attached for it is detached again)
///   and the caller gets ``ProbeError/Kind-swift.enum/notSaved``; the manager then saves
///   the current state again every second until it works.
/// - Reads (list, get, metrics) never wait for kernel work: BPF loads run off the actor, on
///   ``BlockingWork``, and reads see only committed probes.
public actor ProbeManager {
    struct Entry {
        var spec: ProbeSpec
        /// Nil for a restored probe that no longer attaches.
        var probe: AttachedProbe?
        var failedAttempts: [AttachAttempt] = []
        var createdAt: Date
        var updatedAt: Date
        /// Wall-clock expiry, as shown and saved: when the wall clock will show `deadline`
        /// (moved when the wall clock steps, see ``followWallClock()``).
        var expiresAt: Date?
        /// Monotonic expiry, which a wall clock step does not move.
        var deadline: Duration?
        var generation: Int
        /// Its manifest, while its attachment is pinned (`--pin-dir`).
        var pinned: PinManifest?
        /// How the last start-up restored it with `--pin-dir`: `adopted`, or `replaced: why`.
        var restore: String?

        func view(name: String, budget: BudgetStatus? = nil) -> Probe {
            var state: ProbeState = probe == nil ? .failed : .active
            if probe != nil, let budget {
                switch budget.state {
                case .active: break
                case .throttled: state = .throttled
                case .suspended: state = .suspended
                }
            }
            var view = Probe(name: name, spec: spec, state: state, mechanism: probe?.flavour,
                             attempts: probe?.attempts ?? failedAttempts,
                             createdAt: createdAt, updatedAt: updatedAt, expiresAt: expiresAt, generation: generation,
                             stateReason: state == .throttled || state == .suspended ? budget?.reason : nil, cost: budget)
            view.restore = restore
            return view
        }
    }

    /// How restoring one saved probe ended.
    public struct RestoreOutcome: Sendable {
        public var name: String
        public var probe: Probe?
        /// Why it was not restored as active (expired while the agent was down, or no mechanism attached).
        public var problem: String?
        /// With `--pin-dir`: `adopted`, or `replaced: why` (nil without pinning).
        public var pinning: String?
    }

    /// What start-up with `--pin-dir` did besides restoring probes (pins and manifests removed or kept aside).
    public private(set) var pinNotes: [String] = []

    public nonisolated let maxProbes: Int
    private let planner: Planner
    private let reaper: Reaper
    private let clock: any ProbeClock
    private let logger: Logger
    private let report: @Sendable () async -> CapabilityReport?
    private let state: StateStore?
    /// Enforces budgets on the probes built with budget control (nil: no budgets).
    public nonisolated let budgets: BudgetController?
    /// Pinned state (`--pin-dir`); nil: nothing is pinned.
    private let pins: ProbePinning?

    /// Committed probes: what reads see and what is on disk.
    private var entries: [String: Entry] = [:]
    /// Changes being saved: included in every snapshot saved meanwhile, committed (or
    /// dropped) when their own save answers.
    private enum Change { case set(Entry), remove }
    private var proposals: [String: Change] = [:]
    /// Names an operation holds, and the operations waiting for each, in arrival order.
    private var held: Set<String> = []
    private var waiting: [String: [CheckedContinuation<Void, Never>]] = [:]
    /// Creations between their capacity check and their commit.
    private var creating = 0
    private var shuttingDown = false
    private var expiryTask: Task<Void, Never>?
    private var recoveryTask: Task<Void, Never>?
    private var stateWatch: Task<Void, Never>?
    /// What ``watchStateFile(every:)`` last found wrong with the state file (logged once).
    private var stateDamage: String?
    /// How often expiry ran (tests check it does not spin on a held name).
    private(set) var expiryRuns = 0
    /// Attach attempts by flavour and outcome, for self-metrics.
    public private(set) var attemptCounts: [String: Int] = [:]

    /// - Parameter report: the current capability report (syscall prefix, task storage,
    ///   disabled mechanisms); nil while capabilities are not probed yet.
    /// - Parameter state: where desired probes are saved before a change is acknowledged (nil: nowhere).
    /// - Parameter pins: pinned state (`--pin-dir`): attachments are pinned and their
    ///   manifests written before a change is acknowledged, and adopted at restore.
    public init(planner: Planner, maxProbes: Int = 256, state: StateStore? = nil, pins: ProbePinning? = nil,
                clock: any ProbeClock = SystemClock(), logger: Logger = Logger(label: "traceplane.probes"),
                budgets: BudgetController? = nil, report: @escaping @Sendable () async -> CapabilityReport?) {
        self.planner = planner
        self.budgets = budgets
        self.pins = pins
        reaper = planner.reaper
        self.maxProbes = maxProbes
        self.state = state
        self.clock = clock
        self.logger = logger
        self.report = report
    }

    // MARK: - Reads

    public func list() -> [Probe] {
        followWallClock()
        return entries.sorted { $0.key < $1.key }.map { view($0.key, $0.value) }
    }

    public func get(_ name: String) throws(ProbeError) -> Probe {
        followWallClock()
        guard let entry = entries[name] else { throw Self.notFound(name) }
        return view(name, entry)
    }

    /// The probe as the API shows it, with its budget state.
    private func view(_ name: String, _ entry: Entry) -> Probe {
        entry.view(name: name, budget: entry.probe == nil ? nil : budgets?.status(name))
    }

    public var count: Int { entries.count }

    /// A committed probe's spec and its events (nil when it has no `events` spec or is not
    /// attached), for a subscriber.
    public func events(_ name: String) throws(ProbeError) -> (spec: ProbeSpec, events: ProbeEvents?) {
        guard let entry = entries[name] else { throw Self.notFound(name) }
        return (entry.spec, entry.probe?.events)
    }

    /// Why changes cannot be saved now (nil when they can, or when nothing is saved).
    public nonisolated var stateProblem: String? {
        guard let state, case .failing(let since, let error) = state.health else { return nil }
        return "saving the desired probes to \(state.path) fails since \(ReportJSON.rfc3339(since)) (\(error)); changes are refused until it works again"
    }

    /// Failed state saves since start-up.
    public nonisolated var stateSaveFailures: Int { state?.failureCount ?? 0 }

    /// Reads a probe's aggregates, off the actor: symbolizing a profile's new stacks can take
    /// a while (the ELF files of every process sampled), and must not hold up the other
    /// probes' requests meanwhile.
    public func metrics(_ name: String) async throws(ProbeError) -> ProbeMetrics {
        guard let entry = entries[name] else { throw Self.notFound(name) }
        let budget = budgets?.status(name)
        let read = await BlockingWork.reads.run { () -> Result<ProbeMetrics, ProbeError> in
            do throws(ProbeError) { return .success(try Self.metrics(name: name, entry: entry, budget: budget)) } catch { return .failure(error) }
        }
        switch read {
        case .success(let metrics): return metrics
        case .failure(let error):
            // Deleted while it was read: as if the read came after (replaced: 503, retry).
            if entries[name] == nil { throw Self.notFound(name) }
            throw error
        }
    }

    /// Aggregates of every probe (for the Prometheus endpoint, which has no per-process
    /// series: `topProcesses` 0 skips reading the process tables; and no stack labels:
    /// without `symbolizingStacks` stack key parts have no frames).
    public func allMetrics(topProcesses: Int = 10, symbolizingStacks: Bool = true) -> [(Probe, ProbeMetrics)] {
        entries.sorted { $0.key < $1.key }.compactMap { name, entry in
            guard let m = try? Self.metrics(name: name, entry: entry, topProcesses: topProcesses, symbolizingStacks: symbolizingStacks,
                                            budget: budgets?.status(name)) else { return nil }
            return (view(name, entry), m)
        }
    }

    // MARK: - Changes

    /// POST: creates a probe; the same spec under an existing name returns the existing probe.
    /// - Returns: the probe and whether it was created.
    public func create(_ input: ProbeSpec) async throws(ProbeError) -> (Probe, Bool) {
        var spec = try normalize(input)
        let name = spec.name ?? generateName()
        spec.name = name
        await lock(name)
        defer { unlock(name) }
        try refuseIfShuttingDown()
        if let existing = entries[name] {
            guard existing.spec == spec else {
                throw ProbeError(kind: .conflict, detail: "a probe named '\(name)' exists with another spec; PUT /v1/probes/\(name) replaces it")
            }
            return (view(name, existing), false)
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
        let spec = try normalize(input)
        await lock(name)
        defer { unlock(name) }
        try refuseIfShuttingDown()
        guard let existing = entries[name] else {
            return (try await attachNew(name: name, spec: spec), .created)
        }
        // A uprobe whose file was replaced since it attached is attached again, to the file
        // the path names now, even by a PUT of the same spec.
        if let probe = existing.probe, existing.spec == spec || Self.sameAttachment(existing.spec, spec),
           !probe.uprobeFileReplaced(spec.target) {
            // Only the lease (and perhaps the labels) changed: keep the kernel attachment.
            var kept = existing
            leased(&kept, spec.ttlSeconds)
            let outcome: PutOutcome = existing.spec == spec ? .unchanged : .replaced
            if outcome == .replaced {
                kept.spec = spec
                kept.generation += 1
                kept.updatedAt = clock.now()
                if let pins, var manifest = existing.pinned {
                    manifest.spec = spec
                    manifest.generation = kept.generation
                    let renewed = manifest
                    try await offActor { () throws(ProbeError) in try pins.write(renewed) }
                    kept.pinned = renewed
                }
            }
            do {
                try await commit(name, .set(kept))
            } catch {
                if let pins, outcome == .replaced, existing.pinned != nil {
                    await offActor { pins.restoreManifest(existing.pinned, name: name) }
                }
                throw error
            }
            // A PUT that changes the spec resumes a throttled or suspended probe, with the
            // budget it gives; one that only renews the lease (a controller's heartbeat)
            // leaves the budget's state alone.
            if outcome == .replaced { budgets?.put(name, spec: spec.budget) }
            return (view(name, kept), outcome)
        }
        let attached = try await plan(spec)
        var replacement = Entry(spec: spec, probe: attached, createdAt: existing.createdAt, updatedAt: clock.now(),
                                generation: existing.generation + 1)
        leased(&replacement, spec.ttlSeconds)
        do {
            replacement.pinned = try await pin(attached, name: name, spec: spec, generation: replacement.generation)
            try await commit(name, .set(replacement))
        } catch {
            await discard(attached, pinned: replacement.pinned, name: name, restoring: existing.pinned)
            throw error
        }
        // The old attachment goes only once the new one works and is saved: a failed replace
        // keeps it. Its pins go first (they would keep its links attached).
        if let pins, let old = existing.pinned, old.directory != replacement.pinned?.directory {
            await offActor { pins.unpin(old) }
        }
        existing.probe?.detach(reaper: reaper, reason: .replaced)
        budgets?.track(name, probe: attached, spec: spec.budget)
        return (view(name, replacement), .replaced)
    }

    /// DELETE: forgets the probe once that is saved; the kernel detach happens in the background.
    public func delete(_ name: String) async throws(ProbeError) {
        await lock(name)
        defer { unlock(name) }
        guard let entry = entries[name] else { throw Self.notFound(name) }
        try await commit(name, .remove)
        budgets?.untrack(name)
        if let pins { await offActor { pins.forget(name) } }
        entry.probe?.detach(reaper: reaper)
    }

    /// Re-plans saved probes on the current kernel, keeping their names, labels, generation
    /// and remaining TTL. A probe that no longer attaches is kept as `failed` with its attempts.
    public func restore(_ saved: PersistedState) async -> [RestoreOutcome] {
        var outcomes: [RestoreOutcome] = []
        var adoptions: [String: ProbePinning.Adoption] = [:]
        if let pins {
            // Adopt first, before anything attaches: a replaced probe's slot in an adopted
            // shared hook must be unlisted before its new attachment is counted.
            let now = clock.now()
            let host = planner.host
            let candidates = saved.probes.compactMap { item -> ProbePinning.Candidate? in
                guard let name = item.spec.name, item.expiresAt.map({ $0 > now }) ?? true,
                      let spec = try? Self.normalize(item.spec, host: host) else { return nil }
                return ProbePinning.Candidate(name: name, generation: item.generation, spec: spec)
            }
            let (adopted, notes) = await offActor { pins.adopt(candidates) }
            adoptions = adopted
            pinNotes = notes
        }
        for item in saved.probes {
            guard let name = item.spec.name else { continue }
            await lock(name)
            defer { unlock(name) }
            if shuttingDown { break }
            let now = clock.now()
            if let expiry = item.expiresAt, expiry <= now {
                outcomes.append(RestoreOutcome(name: name, probe: nil, problem: "its TTL expired while the agent was down",
                                               pinning: pins == nil ? nil : "removed: its TTL expired while the agent was down"))
                continue
            }
            if entries[name] != nil || entries.count + creating >= maxProbes {
                outcomes.append(RestoreOutcome(name: name, probe: nil, problem: entries[name] != nil ? "a probe with this name already exists" : "the probe limit (\(maxProbes)) is reached"))
                continue
            }
            let spec: ProbeSpec
            do { spec = try normalize(item.spec) } catch {
                outcomes.append(RestoreOutcome(name: name, probe: nil, problem: "the saved spec is no longer valid: \(error.detail)"))
                continue
            }
            var entry = Entry(spec: spec, probe: nil, createdAt: item.createdAt, updatedAt: now, expiresAt: item.expiresAt,
                              deadline: item.expiresAt.map { clock.uptime() + .seconds($0.timeIntervalSince(now)) },
                              generation: item.generation)
            var problem: String?
            switch adoptions[name] {
            case .adopted(let probe, let manifest)?:
                entry.probe = probe
                entry.pinned = manifest
                entry.restore = "adopted"
                // Its counts began when it was pinned, not now.
                entry.updatedAt = manifest.pinnedAt
                // The budget starts over, as the controller does: every call recorded until
                // it measures again (the counts so far stay estimates, already scaled).
                if probe.budgeted { try? probe.setBudget(sampleEvery: 1, suspended: false) }
                logger.notice("probe \(name): adopted its pinned \(manifest.object == .hub ? "slot \(manifest.hub?.slot ?? -1) of the shared hook" : "object") (generation \(manifest.generation), layout \(manifest.layoutVersion))")
            case .replaced(let why)?:
                entry.restore = "replaced: " + (why ?? "nothing was pinned for it")
                if let why { logger.warning("probe \(name): its pins were not adopted (\(why)); attaching it anew") }
                fallthrough
            case nil:
                do {
                    let probe = try await plan(spec)
                    entry.probe = probe
                    if pins != nil {
                        do { entry.pinned = try await pin(probe, name: name, spec: spec, generation: entry.generation) } catch {
                            // Attached but not pinned: it counts until the agent stops, and is detached then.
                            logger.error("probe \(name): \(error.detail)")
                            entry.restore = (entry.restore ?? "replaced") + "; not pinned: \(error.detail)"
                        }
                    }
                } catch {
                    entry.failedAttempts = error.attempts
                    problem = error.detail
                }
            }
            if shuttingDown {
                if entry.pinned != nil { entry.probe?.release() } else { entry.probe?.detach(reaper: reaper) }
                continue
            }
            // Restoring changes nothing the disk does not already say; a later save brings
            // the rest (remaining TTLs are the same instants).
            entries[name] = entry
            if let probe = entry.probe { budgets?.track(name, probe: probe, spec: spec.budget) }
            outcomes.append(RestoreOutcome(name: name, probe: view(name, entry), problem: problem, pinning: entry.restore))
        }
        rescheduleExpiry()
        await saveOrRecover()
        return outcomes
    }

    /// Detaches everything (shutdown) and refuses later changes. The saved desired state is
    /// left as it is, so a restart with the same state directory brings the probes back.
    /// With pinned state, pinned probes are let go of instead: they stay attached and
    /// counting in the kernel until the next start adopts them.
    public func removeAll() {
        shuttingDown = true
        for (name, entry) in entries {
            budgets?.untrack(name)
            if pins != nil, entry.pinned != nil { entry.probe?.release() } else { entry.probe?.detach(reaper: reaper, reason: .shutdown) }
        }
        pins?.releaseHubs()
        entries.removeAll()
        budgets?.stop()
        expiryTask?.cancel()
        expiryTask = nil
        recoveryTask?.cancel()
        recoveryTask = nil
        stateWatch?.cancel()
        stateWatch = nil
    }

    // MARK: - Per-name locks

    private func lock(_ name: String) async {
        if held.insert(name).inserted { return }
        await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
            waiting[name, default: []].append(continuation)
        }
        // Handed over by unlock: the name stays held.
    }

    private func unlock(_ name: String) {
        if var queue = waiting[name], !queue.isEmpty {
            let next = queue.removeFirst()
            waiting[name] = queue.isEmpty ? nil : queue
            next.resume()
        } else {
            held.remove(name)
            // Expiry skipped this name while it was held: its deadline counts again now.
            if entries[name]?.deadline != nil { rescheduleExpiry() }
        }
    }

    // MARK: - Durability

    /// Saves the state with `change` and commits it, or changes nothing and throws.
    ///
    /// The snapshot is submitted synchronously, on the actor, so the store sees states in
    /// the order they were made. A change saved while the agent shut down is reported as
    /// made (a restart brings it back), but its probe is detached: shutdown has run.
    private func commit(_ name: String, _ change: Change) async throws(ProbeError) {
        try refuseIfShuttingDown()
        if let state {
            proposals[name] = change
            let ticket = state.submit(snapshot())
            var failure: StateSaveError?
            do { try await ticket.value() } catch { failure = error as? StateSaveError ?? StateSaveError(errno: nil, description: "\(error)") }
            proposals[name] = nil
            if let failure {
                logger.warning("probe \(name): change refused, the desired state could not be saved: \(failure)")
                startRecovery()
                throw ProbeError(kind: .notSaved, detail: "the change was not made because the desired probes could not be saved to \(state.path): \(failure)",
                                 errno: failure.errno)
            }
            if shuttingDown {
                if case .set(let entry) = change {
                    if entry.pinned != nil { entry.probe?.release() } else { entry.probe?.detach(reaper: reaper) }
                }
                return
            }
        }
        switch change {
        case .set(let entry): entries[name] = entry
        case .remove: entries[name] = nil
        }
        rescheduleExpiry()
    }

    /// The committed probes with every change being saved.
    private func snapshot() -> PersistedState {
        var merged = entries
        for (name, change) in proposals {
            switch change {
            case .set(let entry): merged[name] = entry
            case .remove: merged[name] = nil
            }
        }
        let probes = merged.sorted { $0.key < $1.key }.map { name, entry in
            var spec = entry.spec
            spec.name = name
            return PersistedState.Probe(spec: spec, createdAt: entry.createdAt, expiresAt: entry.expiresAt, generation: entry.generation)
        }
        return PersistedState(savedAt: clock.now(), probes: probes)
    }

    /// Saves what is committed now (after expiry or restore: nothing to refuse); a failure
    /// starts the recovery loop.
    private func saveOrRecover() async {
        guard let state, !shuttingDown else { return }
        let ticket = state.submit(snapshot())
        do { try await ticket.value() } catch { startRecovery() }
    }

    /// Checks the state file every `interval` and saves the committed state again when it
    /// was removed (alone or with its directory) or replaced (by another file, a directory,
    /// a FIFO): what was acknowledged must stay on disk, not only in memory. A save that
    /// then fails (a directory in the way) refuses changes and retries, as any failed save.
    public func watchStateFile(every interval: Duration = .seconds(2)) {
        guard state != nil, stateWatch == nil, !shuttingDown else { return }
        stateWatch = Task { [clock, weak self] in
            while !Task.isCancelled {
                do { try await clock.sleep(until: clock.uptime() + interval) } catch { return }
                await self?.checkStateFile()
            }
        }
    }

    private func checkStateFile() async {
        guard let state, !shuttingDown, recoveryTask == nil else { return }
        guard let damage = state.damage() else {
            stateDamage = nil
            return
        }
        if damage != stateDamage { logger.warning("state: \(damage); saving the desired probes again") }
        stateDamage = damage
        await saveOrRecover()
    }

    /// Saves again every second until a save works, so the disk catches up by itself once
    /// the fault is gone (space freed, file system writable again).
    private func startRecovery() {
        guard recoveryTask == nil, let state, !shuttingDown else { return }
        recoveryTask = Task { [clock] in
            while !Task.isCancelled {
                do { try await clock.sleep(until: clock.uptime() + .seconds(1)) } catch { return }
                let ticket = state.submit(self.snapshot())
                if (try? await ticket.value()) != nil, self.recovered() { return }
            }
        }
    }

    /// Ends the recovery loop once saves work; false (keep going) when a save failed again
    /// meanwhile, whose own attempt to start a loop found this one running.
    private func recovered() -> Bool {
        guard state?.health == .ok else { return false }
        recoveryTask = nil
        return true
    }

    private func refuseIfShuttingDown() throws(ProbeError) {
        if shuttingDown { throw ProbeError(kind: .unavailable, detail: "the agent is shutting down") }
    }

    // MARK: - Expiry

    /// Sleeps until the earliest TTL deadline of a probe no operation holds, then detaches
    /// what expired (a held probe's deadline is scheduled again when it is released).
    private func rescheduleExpiry() {
        expiryTask?.cancel()
        expiryTask = nil
        guard !shuttingDown, entries.values.contains(where: { $0.deadline != nil }) else { return }
        let deadlines = entries.compactMap { held.contains($0.key) ? nil : $0.value.deadline }
        // At the next deadline, and every second while a probe has a TTL, to follow
        // wall-clock steps in what is shown and saved.
        let watch = clock.uptime() + Self.wallClockWatch
        let next = deadlines.min().map { min($0, watch) } ?? watch
        expiryTask = Task { [clock] in
            do { try await clock.sleep(until: next) } catch { return }
            await self.expire()
        }
    }

    /// Detaches every expired probe that no operation holds (an operation holding one
    /// reschedules expiry when it ends).
    func expire() async {
        expiryRuns += 1
        var changed = followWallClock(saving: false)
        let now = clock.uptime()
        for (name, entry) in entries where !held.contains(name) {
            guard let deadline = entry.deadline, deadline <= now else { continue }
            entries[name] = nil
            budgets?.untrack(name)
            if let pins { await offActor { pins.forget(name) } }
            entry.probe?.detach(reaper: reaper, reason: .expired)
            logger.info("probe \(name) expired (ttl_seconds \(entry.spec.ttlSeconds ?? 0)) and was detached")
            changed = true
        }
        rescheduleExpiry()
        if changed { await saveOrRecover() }
    }

    /// How often the wall clock is compared with the monotonic one while a probe has a TTL.
    static let wallClockWatch: Duration = .seconds(1)
    /// How far `expires_at` may be from the wall clock's now + what remains of the lease
    /// before it is moved: well above the jitter of reading two clocks, well under a second.
    static let wallStepTolerance: TimeInterval = 0.25

    /// A TTL runs on the monotonic clock, so a wall-clock step (NTP, `date -s`) moves no
    /// expiry; `expires_at` must still say when the wall clock will show it. Where a step
    /// made them disagree, each `expires_at` becomes now + what remains, and the step is
    /// logged and saved (a restart reads the saved wall time), by itself unless `saving` is
    /// false (the caller saves). True when something moved.
    @discardableResult
    private func followWallClock(saving: Bool = true) -> Bool {
        let now = clock.now()
        let uptime = clock.uptime()
        var step: TimeInterval?
        for (name, entry) in entries {
            guard let deadline = entry.deadline, let shown = entry.expiresAt else { continue }
            let remaining = deadline - uptime
            let due = now.addingTimeInterval(Double(remaining.components.seconds) + Double(remaining.components.attoseconds) / 1e18)
            guard abs(due.timeIntervalSince(shown)) > Self.wallStepTolerance else { continue }
            step = due.timeIntervalSince(shown)
            entries[name]?.expiresAt = due
        }
        guard let step else { return false }
        logger.notice("the wall clock stepped by \(String(format: "%+.3f", step)) s: expires_at follows it (TTLs run on the monotonic clock, no expiry moved)")
        if saving, state != nil { Task { await self.saveOrRecover() } }
        return true
    }

    private func leased(_ entry: inout Entry, _ ttl: Int?) {
        entry.expiresAt = ttl.map { clock.now().addingTimeInterval(TimeInterval($0)) }
        entry.deadline = ttl.map { clock.uptime() + .seconds($0) }
    }

    // MARK: - Attaching

    private func attachNew(name: String, spec: ProbeSpec) async throws(ProbeError) -> Probe {
        guard entries.count + creating < maxProbes else {
            throw ProbeError(kind: .tooMany, detail: "the agent holds at most \(maxProbes) probes; delete some first")
        }
        creating += 1
        defer { creating -= 1 }
        let attached = try await plan(spec)
        let now = clock.now()
        var entry = Entry(spec: spec, probe: attached, createdAt: now, updatedAt: now, generation: 1)
        leased(&entry, spec.ttlSeconds)
        do {
            entry.pinned = try await pin(attached, name: name, spec: spec, generation: entry.generation)
            try await commit(name, .set(entry))
        } catch {
            await discard(attached, pinned: entry.pinned, name: name, restoring: nil)
            throw error
        }
        budgets?.track(name, probe: attached, spec: spec.budget)
        return view(name, entry)
    }

    // MARK: - Pinning

    /// Pins a new attachment and writes its manifest (nil without `--pin-dir`); on failure
    /// the attachment is detached and nothing of it stays pinned.
    private func pin(_ probe: AttachedProbe, name: String, spec: ProbeSpec, generation: Int) async throws(ProbeError) -> PinManifest? {
        guard let pins else { return nil }
        return try await offActor { () throws(ProbeError) -> PinManifest in
            try pins.pin(probe, name: name, spec: spec, generation: generation)
        }
    }

    /// Undoes a change that was not made: the new attachment's pins go (before its links),
    /// the manifest the probe had before comes back, and the attachment is detached.
    private func discard(_ probe: AttachedProbe, pinned: PinManifest?, name: String, restoring previous: PinManifest?) async {
        if let pins {
            await offActor {
                if let pinned, pinned.directory != previous?.directory { pins.unpin(pinned) }
                pins.restoreManifest(previous, name: name)
            }
        }
        probe.detach(reaper: reaper)
    }

    /// Runs blocking file-system work (bpffs, fsync) off the actor's executor.
    private func offActor<T: Sendable>(_ work: @escaping @Sendable () -> T) async -> T {
        await BlockingWork.attach.run(work)
    }

    private func offActor<T: Sendable>(_ work: @escaping @Sendable () throws(ProbeError) -> T) async throws(ProbeError) -> T {
        let result = await BlockingWork.attach.run { () -> Result<T, ProbeError> in
            do throws(ProbeError) { return .success(try work()) } catch { return .failure(error) }
        }
        return try result.get()
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
        for attempt in attempts { attemptCounts["\(attempt.flavour.rawValue)|\(attempt.outcome.rawValue)", default: 0] += 1 }
        switch result {
        case .success(let probe):
            return probe
        case .failure(let failure):
            let summary = failure.attempts.map { "\($0.flavour.rawValue) \($0.outcome.rawValue)" }.joined(separator: ", ")
            if failure.exhausted {
                let errno = failure.attempts.last?.errno
                throw ProbeError(kind: .exhausted,
                                 detail: "the agent ran out of \(errno == .ENOMEM ? "memory" : "file descriptors") (\(errno?.name ?? "?")) while attaching \(spec.target.label); nothing was kept, retry later (\(summary))",
                                 attempts: failure.attempts, errno: errno)
            }
            if let refusal = failure.refusal {
                throw ProbeError(kind: .attachFailed, detail: "\(spec.target.label) cannot be traced as asked on this host: \(refusal)", attempts: failure.attempts)
            }
            throw ProbeError(kind: .attachFailed, detail: "no mechanism could attach \(spec.target.label): \(summary)", attempts: failure.attempts)
        }
    }

    // MARK: - Helpers

    static func metrics(name: String, entry: Entry, topProcesses: Int = 10, symbolizingStacks: Bool = true,
                        budget: BudgetStatus? = nil) throws(ProbeError) -> ProbeMetrics {
        guard let probe = entry.probe else {
            throw ProbeError(kind: .conflict, detail: "probe '\(name)' is not attached: restoring it failed; PUT it again to retry")
        }
        do {
            let counters = try probe.read(topProcesses: topProcesses, symbolizingStacks: symbolizingStacks)
            var metrics = ProbeMetrics(name: name, mechanism: probe.flavour, target: entry.spec.target.label,
                                       since: entry.updatedAt, counters: counters, countsOnly: probe.countsOnly)
            if probe.budgeted {
                metrics.sampling = ProbeMetrics.Sampling(sampled: budget?.sampleEvery ?? 1, estimatedCalls: counters.estimated,
                                                         seenCalls: counters.seen, state: budget?.state ?? .active)
            }
            return metrics
        } catch {
            throw ProbeError(kind: .unavailable, detail: "reading the probe's maps failed: \(error)")
        }
    }

    func normalize(_ spec: ProbeSpec) throws(ProbeError) -> ProbeSpec {
        try Self.normalize(spec, host: planner.host)
    }

    static func normalize(_ spec: ProbeSpec, host: any HostEnvironment) throws(ProbeError) -> ProbeSpec {
        var errors = spec.validate()
        if errors.isEmpty, case .failure(let planErrors) = AggregatePlan.resolve(spec, schema: host.schema(for: spec.target)) {
            errors = planErrors.list
        }
        if !errors.isEmpty {
            throw ProbeError(kind: .invalid, detail: "the probe spec is invalid: " + errors.map { "\($0.field) \($0.message)" }.joined(separator: "; "),
                             fieldErrors: errors)
        }
        var normalized = spec
        if spec.mechanisms != nil { normalized.mechanisms = spec.flavours.map(\.rawValue) }
        if normalized.labels?.isEmpty == true { normalized.labels = nil }
        return normalized
    }

    /// Whether two specs attach the same way (they differ at most in TTL and labels).
    static func sameAttachment(_ a: ProbeSpec, _ b: ProbeSpec) -> Bool {
        // A budget's numbers change without a new attachment; whether there is one decides
        // whether the programs are built to sample and suspend.
        a.target == b.target && a.mechanisms == b.mechanisms && a.filter == b.filter && a.aggregate == b.aggregate && a.events == b.events
            && (a.budget == nil) == (b.budget == nil)
    }

    private func generateName() -> String {
        while true {
            let candidate = "probe-" + String(UInt32.random(in: 0...UInt32.max), radix: 16)
            if entries[candidate] == nil && !held.contains(candidate) { return candidate }
        }
    }

    static func notFound(_ name: String) -> ProbeError {
        ProbeError(kind: .notFound, detail: "no probe named '\(name)'")
    }
}
