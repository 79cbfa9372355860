import Foundation
import Logging

/// What every entry point configures the same way.
public struct CoreConfiguration: Sendable {
    /// Most probes at once (the shared syscall hook is sized to it).
    public var maxProbes: Int
    /// Mechanisms switched off agent-wide (`--disable-mechanism`).
    public var disabledMechanisms: Set<Mechanism>
    /// Where desired probes are saved before a change is acknowledged; nil: nowhere.
    public var stateDirectory: String?
    /// Where probes are pinned on bpffs so that they outlive the agent (`--pin-dir`); nil:
    /// nothing is pinned. Needs ``stateDirectory`` (the manifests live there).
    public var pinDirectory: String?
    /// Probe specs to apply at start, like PUTs, after restoring saved probes.
    public var probeFile: [ProbeSpec]
    public var clock: any ProbeClock
    /// How budgets are enforced (serve --max-cpu-percent and friends).
    public var budgets: BudgetController.Configuration

    public init(maxProbes: Int = 256, disabledMechanisms: Set<Mechanism> = [], stateDirectory: String? = nil,
                pinDirectory: String? = nil, probeFile: [ProbeSpec] = [], clock: any ProbeClock = SystemClock(),
                budgets: BudgetController.Configuration = BudgetController.Configuration()) {
        self.budgets = budgets
        self.maxProbes = maxProbes
        self.disabledMechanisms = disabledMechanisms
        self.stateDirectory = stateDirectory
        self.pinDirectory = pinDirectory
        self.probeFile = probeFile
        self.clock = clock
    }
}

/// TracePlane's core, wired in one place for `serve`, `selftest`, `trace` and the tests: the
/// kernel backend, the capability store (with a reaper of its own, so a refresh waits only
/// for its own programs), the planner and its shared syscall hooks, the state store and the
/// probe manager.
///
/// Life: ``start()`` probes capabilities, restores saved probes and applies the probe file;
/// ``shutdown()`` detaches every probe, flushes the saved state and waits until the kernel
/// holds nothing of ours. ``run(_:_:)`` does both around a body.
public final class TracingCore: Sendable {
    public let configuration: CoreConfiguration
    public let backend: any KernelBackend
    public let capabilities: CapabilityStore
    public let probes: ProbeManager
    /// The planner the probe manager attaches with (budget calibration attaches with it too).
    let planner: Planner
    public let state: StateStore?
    /// Pinned state (`--pin-dir`), nil when nothing is pinned.
    public let pins: ProbePinning?
    /// Detaches the probes' kernel resources in the background.
    public let reaper: Reaper
    private let logger: Logger

    /// - Throws: ``StateError`` when the state directory or the pin directory cannot be used.
    public init(_ configuration: CoreConfiguration, backend: (any KernelBackend)? = nil, reaper: Reaper = .shared,
                logger: Logger = Logger(label: "traceplane")) throws(StateError) {
        self.configuration = configuration
        let backend = backend ?? LibBPFBackend(logger: Logger(label: "traceplane.libbpf"))
        self.backend = backend
        self.reaper = reaper
        self.logger = logger
        let capabilities = CapabilityStore(prober: CapabilityProber(backend: backend, disabled: configuration.disabledMechanisms, reaper: Reaper()))
        self.capabilities = capabilities
        state = try configuration.stateDirectory.map { dir throws(StateError) in try StateStore(directory: dir, logger: Logger(label: "traceplane.state")) }
        let budgets = BudgetController(configuration: configuration.budgets, clock: configuration.clock)
        var store: PinStore?
        if let pinDirectory = configuration.pinDirectory {
            guard let stateDirectory = configuration.stateDirectory else {
                throw StateError(description: "--pin-dir needs --state-dir: the pins' manifests are saved there (bpffs holds no regular files)")
            }
            store = try PinStore(root: pinDirectory, stateDirectory: stateDirectory)
        }
        let planner = Planner(backend: backend, reaper: reaper, hubSlots: configuration.maxProbes,
                              budgetsEveryProbe: budgets.budgetsEveryProbe, pinRoot: store?.root)
        self.planner = planner
        pins = store.map { ProbePinning(store: $0, planner: planner, logger: Logger(label: "traceplane.pins")) }
        probes = ProbeManager(planner: planner,
                              maxProbes: configuration.maxProbes, state: state, pins: pins, clock: configuration.clock,
                              logger: Logger(label: "traceplane.probes"), budgets: budgets, report: { await capabilities.current })
    }

    /// Probes capabilities, then restores the saved probes and applies the probe file,
    /// logging each outcome. Returns the capability report.
    @discardableResult
    public func start() async -> CapabilityReport {
        let report = await capabilities.refresh()
        // Where BPF stats are refused (or serve --budget-cost calibration), budgets measure
        // each flavour's cost by calibration, on this kernel's capabilities.
        probes.budgets?.setCalibrator(BudgetCalibrator(planner: planner, report: report))
        let usable = report.mechanisms.filter { $0.status == .supported }.map(\.name).joined(separator: ", ")
        logger.notice("capabilities probed in \(Int(report.durationMilliseconds)) ms: \(usable) supported")
        if let state { await restore(from: state) }
        for spec in configuration.probeFile { await apply(spec) }
        let count = await probes.count
        logger.notice("ready: \(count) probes")
        return report
    }

    /// Detaches every probe (the saved state stays), finishes pending saves and waits until
    /// the kernel released everything of ours.
    public func shutdown() async {
        await probes.removeAll()
        state?.flush()
        await BlockingWork.attach.run { [reaper] in reaper.drain() }
    }

    /// Starts a core, runs `body` with it, and shuts it down whatever `body` does.
    public static func run<T: Sendable>(_ configuration: CoreConfiguration, backend: (any KernelBackend)? = nil,
                                        _ body: (TracingCore) async throws -> T) async throws -> T {
        let core = try TracingCore(configuration, backend: backend)
        await core.start()
        do {
            let value = try await body(core)
            await core.shutdown()
            return value
        } catch {
            await core.shutdown()
            throw error
        }
    }

    private func restore(from state: StateStore) async {
        switch state.load() {
        case .none:
            logger.info("no saved probes in \(state.directory)")
            if pins != nil { _ = await probes.restore(PersistedState(savedAt: Date(), probes: [])) }
        case .corrupt(let reason, let keptAt):
            logger.error("the state file \(state.path) is corrupt or unreadable (\(reason)); \(keptAt.map { "kept aside as \($0)" } ?? "left in place"); starting with no saved probes")
            if pins != nil { _ = await probes.restore(PersistedState(savedAt: Date(), probes: [])) }
        case .loaded(let saved):
            let outcomes = await probes.restore(saved)
            for outcome in outcomes {
                if let probe = outcome.probe, probe.state == .active {
                    logger.notice("restored probe \(outcome.name) via \(probe.mechanism?.rawValue ?? "?")\(outcome.pinning.map { " (\($0))" } ?? "")")
                } else {
                    let attempts = outcome.probe?.attempts.map { "\($0.flavour.rawValue) \($0.outcome.rawValue)\($0.errno.map { " \($0.name)" } ?? "")" } ?? []
                    logger.error("could not restore probe \(outcome.name): \(outcome.problem ?? "unknown reason")\(attempts.isEmpty ? "" : " [\(attempts.joined(separator: ", "))]")")
                }
            }
        }
        // Pins no saved probe claims (unknown probes, a state file that is gone) were removed.
        for note in await probes.pinNotes { logger.warning("pins: \(note)") }
        await probes.watchStateFile()
    }

    private func apply(_ spec: ProbeSpec) async {
        guard let name = spec.name else { return }
        do {
            let (probe, outcome) = try await probes.put(name: name, spec: spec)
            logger.notice("probe file: \(name) \(outcome.rawValue) via \(probe.mechanism?.rawValue ?? "?")")
        } catch {
            logger.error("probe file: \(name) not applied: \(error.detail)")
        }
    }
}
