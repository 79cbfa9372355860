import Dispatch

/// The cached capability report. Probing runs off the cooperative pool; concurrent
/// refreshes share one probe run.
public actor CapabilityStore {
    private let prober: CapabilityProber
    private var report: CapabilityReport?
    private var running: Task<CapabilityReport, Never>?

    public init(prober: CapabilityProber) {
        self.prober = prober
    }

    /// The cached report, nil until the first probe finished.
    public var current: CapabilityReport? { report }

    /// Probes again (or joins a probe already running) and caches the result.
    ///
    /// The report is cached (and the agent ready) once the prober's reaper has detached the
    /// probe's programs too (give the prober a reaper of its own so that this waits for
    /// nothing else): perf events detach one at a time under a kernel-wide mutex, so probes
    /// attached right after, such as restored ones, would otherwise queue behind that
    /// cleanup. `duration_ms` does not include it.
    @discardableResult
    public func refresh() async -> CapabilityReport {
        if let running { return await running.value }
        let prober = self.prober
        let task = Task {
            await BlockingWork.attach.run {
                let report = prober.probe()
                prober.reaper.drain()
                return report
            }
        }
        running = task
        let fresh = await task.value
        report = fresh
        running = nil
        return fresh
    }

    /// The cached report, probing first if there is none.
    public func get() async -> CapabilityReport {
        if let report { return report }
        return await refresh()
    }
}
