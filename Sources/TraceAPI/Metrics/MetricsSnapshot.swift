import TraceCore

/// Everything one scrape exposes, collected from the agent, and its rendering as the
/// Prometheus text format (see ``render(into:scrapeStarted:)`` for the families).
public struct MetricsSnapshot: Sendable {
    /// One probe: its identity, user labels and aggregates.
    public struct ProbeSeries: Sendable {
        public var metrics: ProbeMetrics
        /// The probe spec's user labels; exposed only on `traceplane_probe_info`.
        public var userLabels: [String: String]
        /// Its budget state and measured cost, for budgeted probes.
        public var budget: BudgetStatus?

        public init(metrics: ProbeMetrics, userLabels: [String: String] = [:], budget: BudgetStatus? = nil) {
            self.metrics = metrics
            self.userLabels = userLabels
            self.budget = budget
        }
    }

    /// Probes, sorted by name.
    public var probes: [ProbeSeries]
    /// Probe counts by state (`active`, `failed`: kept but not attached), sorted by state.
    public var probesByState: [(state: String, count: Int)]
    /// Every mechanism and feature of the capability report; empty before the first probe run.
    public var capabilities: [(name: String, supported: Bool)]
    /// Attach attempts since start, by mechanism and outcome, sorted.
    public var attachAttempts: [(mechanism: String, outcome: String, count: Int)]
    public var httpRequests: HTTPRequestCounts
    /// Failed saves of the desired probes (nil: no state directory, no series).
    public var stateSaveFailures: Int?
    public var process: ProcessStats
    /// The agent's own CPU over the last second (percent of one CPU), and the BPF stats
    /// windows the budget controller took (nil: no budgeted probe ever).
    public var budgets: (agentCPUPercent: Double, windows: Int, windowTime: Duration)?
    public var build: BuildInfo
    /// Most series one probe's key table exports (`serve --max-series-per-probe`): the top
    /// keys by calls are kept such that they and one `other="true"` group fit, and the
    /// rest are summed into that group (the full rule is on `KeySeries`).
    public var maxSeriesPerProbe: Int

    /// What `serve --max-series-per-probe` defaults to.
    public static let defaultMaxSeriesPerProbe = 500

    public init(probes: [ProbeSeries] = [], probesByState: [(state: String, count: Int)] = [],
                capabilities: [(name: String, supported: Bool)] = [],
                attachAttempts: [(mechanism: String, outcome: String, count: Int)] = [],
                httpRequests: HTTPRequestCounts = HTTPRequestCounts(), stateSaveFailures: Int? = nil,
                process: ProcessStats = ProcessStats(), budgets: (agentCPUPercent: Double, windows: Int, windowTime: Duration)? = nil,
                build: BuildInfo, maxSeriesPerProbe: Int = MetricsSnapshot.defaultMaxSeriesPerProbe) {
        self.budgets = budgets
        precondition(maxSeriesPerProbe > 0, "The series budget per probe must be at least 1, not \(maxSeriesPerProbe).")
        self.maxSeriesPerProbe = maxSeriesPerProbe
        self.probes = probes
        self.probesByState = probesByState
        self.capabilities = capabilities
        self.attachAttempts = attachAttempts
        self.stateSaveFailures = stateSaveFailures
        self.httpRequests = httpRequests
        self.process = process
        self.build = build
    }

    /// Latency histogram buckets exposed per probe: log2 slots 0 through 35, so `le` runs
    /// from 1 ns to 2^36 − 1 ns (68.719476735 s). The set is fixed, the same on every scrape;
    /// slower calls count only in `+Inf`.
    public static let latencyBucketSlots = 36

    /// Label set `le="<upper bound of slot i in seconds>"` for each exposed slot.
    static let bucketBounds: [LabelSet] = (0..<latencyBucketSlots).map { slot in
        var text: [UInt8] = []
        ExpositionWriter.appendSeconds(nanoseconds: ProbeCounters.bounds(slot: slot).upper, to: &text)
        return LabelSet(["le": String(decoding: text, as: UTF8.self)])
    }
    static let infinityBound = LabelSet(["le": "+Inf"])

    /// Renders every family, each with HELP and TYPE, in a fixed order:
    ///
    /// - `traceplane_probe_info` (gauge 1): `probe`, `target`, `mechanism` and the user labels
    ///   as `label_<key>` (so they never collide); the only series with user labels.
    /// - `traceplane_probe_calls_total`, `traceplane_probe_errors_total` (the latter only for
    ///   targets that return: not tracepoints), `traceplane_probe_latency_seconds` (histogram,
    ///   not for tracepoints), `traceplane_probe_bpf_run_seconds_total` and
    ///   `traceplane_probe_bpf_runs_total`: `probe`, `target`, `mechanism`.
    /// - For probes with a key table (`aggregate`): `traceplane_probe_key_calls_total`,
    ///   `traceplane_probe_key_errors_total` (not for tracepoints) and the histogram
    ///   `traceplane_probe_key_value` (not for a value of `none`; seconds for latency, else
    ///   the value's unit): the probe's labels plus one label per key part, within the
    ///   series budget (`KeySeries`); `traceplane_probe_dropped_keys_total`: the probe's labels.
    /// - `traceplane_probes{state}`, `traceplane_capability_supported{capability}`,
    ///   `traceplane_attach_attempts_total{mechanism,outcome}`,
    ///   `traceplane_http_requests_total{method,code}`, `traceplane_state_save_failures_total`
    ///   (with a state directory),
    ///   `traceplane_process_resident_memory_bytes`, `traceplane_process_open_fds`,
    ///   `traceplane_build_info{version,libbpf_version,swift_version}`.
    /// - Last, `traceplane_scrape_duration_seconds` (gauge): the time from `scrapeStarted`
    ///   to that line, i.e. this scrape's map reads and rendering.
    public func render<W: MetricsSink>(into writer: inout W, scrapeStarted: ContinuousClock.Instant) {
        let identities = probes.map { p in
            LabelSet(["probe": p.metrics.name, "target": p.metrics.target, "mechanism": p.metrics.mechanism.rawValue])
        }

        writer.family("traceplane_probe_info", type: .gauge,
                      help: "Always 1 for each probe; carries the probe's user labels as label_<key>.")
        for probe in probes {
            var pairs: [(name: String, value: String)] = [
                ("probe", probe.metrics.name), ("target", probe.metrics.target), ("mechanism", probe.metrics.mechanism.rawValue),
            ]
            for (key, value) in probe.userLabels.sorted(by: { $0.key < $1.key }) { pairs.append(("label_" + key, value)) }
            writer.sample()
            writer.labels(LabelSet(pairs))
            writer.value(1)
        }

        writer.family("traceplane_probe_calls_total", type: .counter,
                      help: "Calls traced by the probe (events, for tracepoints).")
        for (probe, identity) in zip(probes, identities) {
            writer.sample()
            writer.labels(identity)
            writer.value(probe.metrics.calls)
        }

        writer.family("traceplane_probe_errors_total", type: .counter,
                      help: "Traced calls that returned a negative value (probes on targets that return: not tracepoints).")
        for (probe, identity) in zip(probes, identities) where probe.metrics.latencyNanoseconds != nil {
            writer.sample()
            writer.labels(identity)
            writer.value(probe.metrics.errors)
        }

        writer.family("traceplane_probe_latency_seconds", type: .histogram,
                      help: "Latency of traced calls, from the in-kernel log2 histogram: le is the inclusive upper bound of log2 slot i (2^(i+1)-1 ns) in seconds, up to 2^36-1 ns. Tracepoint probes have none.")
        for (probe, identity) in zip(probes, identities) {
            guard let latency = probe.metrics.latencyNanoseconds else { continue }
            Self.renderHistogram(latency, identity: identity, into: &writer)
        }

        if writer.servesNativeHistograms {
            writer.family("traceplane_probe_latency_nanoseconds", type: .histogram,
                          help: "Latency of traced calls in nanoseconds, as a native histogram of schema 0: the kernel's log2 slot s (2^s to 2^(s+1)-1 ns) is bucket s+1, slot 0 (0-1 ns) the zero bucket. Exact; in seconds it could not be (1e-9 is no power of two). Tracepoint probes have none.")
            for (probe, identity) in zip(probes, identities) {
                guard let latency = probe.metrics.latencyNanoseconds else { continue }
                Self.renderNativeHistogram(latency, identity: identity, into: &writer)
            }
        }

        writer.family("traceplane_probe_bpf_run_seconds_total", type: .counter,
                      help: "Time the kernel spent running the probe's BPF programs (kernel BPF stats, on while the agent runs).")
        for (probe, identity) in zip(probes, identities) {
            writer.sample()
            writer.labels(identity)
            writer.value(secondsFromNanoseconds: probe.metrics.overhead.runTimeNanoseconds)
        }

        writer.family("traceplane_probe_bpf_runs_total", type: .counter,
                      help: "Runs of the probe's BPF programs (kernel BPF stats); run seconds over runs is the cost per run.")
        for (probe, identity) in zip(probes, identities) {
            writer.sample()
            writer.labels(identity)
            writer.value(probe.metrics.overhead.runCount)
        }

        let keyed = probes.map { probe in
            probe.metrics.aggregate.map {
                KeySeries($0.foldingStacks(), errors: probe.metrics.latencyNanoseconds != nil, maxSeries: maxSeriesPerProbe)
            }
        }

        writer.family("traceplane_probe_key_calls_total", type: .counter,
                      help: "Calls traced by the probe per key of its aggregate (one label per key part); past the series budget, the keys with fewest calls are summed into one series with other=\"true\".")
        for case let (keys?, identity) in zip(keyed, identities) {
            keys.writeCounter(\.calls, identity: identity, into: &writer)
        }

        writer.family("traceplane_probe_key_errors_total", type: .counter,
                      help: "Traced calls that returned a negative value, per key of the probe's aggregate (targets that return: not tracepoints).")
        for case let (keys?, identity) in zip(keyed, identities) where keys.hasErrors {
            keys.writeCounter(\.errors, identity: identity, into: &writer)
        }

        writer.family("traceplane_probe_key_value", type: .histogram,
                      help: "The aggregate's value per key, from the in-kernel histogram: seconds for latency, else the value's own unit. le is the inclusive upper bound of a slot; log2 buckets run from the lowest to the highest slot any key of the probe has values in.")
        let native = writer.servesNativeHistograms
        for case let (keys?, identity) in zip(keyed, identities) where keys.hasHistogram && !(native && keys.nativeEligible) {
            keys.writeValue(identity: identity, into: &writer)
        }
        if native {
            writer.family("traceplane_probe_key_value_native", type: .histogram,
                          help: "The aggregate's value per key as a native histogram of schema 0, in the kernel's unit (nanoseconds for latency, else the value's own): log2 slot s is bucket s+1, slot 0 the zero bucket. Log2 histograms with no negative value; the others stay in traceplane_probe_key_value.")
            for case let (keys?, identity) in zip(keyed, identities) where keys.hasHistogram && keys.nativeEligible {
                keys.writeNative(identity: identity, into: &writer)
            }
        }

        writer.family("traceplane_probe_dropped_keys_total", type: .counter,
                      help: "Calls whose key found no room in the probe's key table (aggregate.max_keys); they still count in traceplane_probe_calls_total.")
        for (probe, identity) in zip(probes, identities) {
            guard let table = probe.metrics.aggregate else { continue }
            writer.sample()
            writer.labels(identity)
            writer.value(table.droppedKeys)
        }

        writer.family("traceplane_probe_stacks_lost_total", type: .counter,
                      help: "kstack/ustack key parts not recorded because the probe's stack map was full; their calls are counted under a marker stack.")
        for (probe, identity) in zip(probes, identities) {
            guard let table = probe.metrics.aggregate, table.hasStacks else { continue }
            writer.sample()
            writer.labels(identity)
            writer.value(table.stackFull)
        }

        let streaming = zip(probes, identities).compactMap { probe, identity in probe.metrics.events.map { ($0, identity) } }
        for (name, help, value) in [
            ("traceplane_probe_events_total", "Events (calls over events.min_latency_ns, or tracepoint events) written to the probe's ring buffer.",
             { (e: ProbeCounters.EventCounts) in e.emitted }),
            ("traceplane_probe_events_throttled_total", "Events not written: over the probe's events.max_per_second (counted in the kernel).",
             { $0.throttled }),
            ("traceplane_probe_events_lost_total", "Events not written: the probe's ring buffer was full (the agent did not drain it in time).",
             { $0.lost }),
            ("traceplane_probe_events_missed_total", "Events that did not reach a subscriber that read too slowly or resumed too late (the gap counts sent).",
             { $0.missed }),
        ] as [(String, String, (ProbeCounters.EventCounts) -> UInt64)] {
            writer.family(name, type: .counter, help: help)
            for (events, identity) in streaming {
                writer.sample()
                writer.labels(identity)
                writer.value(value(events))
            }
        }
        writer.family("traceplane_probe_event_subscribers", type: .gauge, help: "Event streams (GET /v1/probes/{name}/events) open now.")
        for (events, identity) in streaming {
            writer.sample()
            writer.labels(identity)
            writer.value(UInt64(events.subscribers))
        }

        // One info series per cgroup that a kept key names: joins the key series (by
        // `cgroup`) or kube-state-metrics (`pod_uid` = kube_pod_info's `uid`).
        var cgroups: [String: CgroupIdentity] = [:]
        for case let keys? in keyed {
            for group in keys.groups { if let c = group.cgroup { cgroups[c.path] = c.identity } }
        }
        writer.family("traceplane_cgroup_info", type: .gauge,
                      help: "Always 1: what the path of a cgroup that a keyed series names says runs there (systemd unit, container id, kubelet pod UID and QoS class; empty when not applicable).")
        for (path, identity) in cgroups.sorted(by: { $0.key < $1.key }) {
            writer.sample()
            writer.label("cgroup", path)
            writer.label("container_id", identity.containerID ?? "")
            writer.label("pod_uid", identity.podUID ?? "")
            writer.label("qos", identity.qos ?? "")
            writer.label("runtime", identity.runtime ?? "")
            writer.label("unit", identity.unit ?? "")
            writer.value(1)
        }

        let budgeted = zip(probes, identities).compactMap { probe, identity in probe.budget.map { ($0, identity) } }
        writer.family("traceplane_probe_budget_state", type: .gauge,
                      help: "1 for the budget state a budgeted probe is in (active, throttled: recording 1 call in N, suspended: recording nothing), 0 for the others.")
        for (budget, identity) in budgeted {
            for state in BudgetPolicy.State.allCases {
                writer.sample()
                writer.labels(identity)
                writer.label("state", state.rawValue)
                writer.value(budget.state == state ? 1 : 0)
            }
        }
        writer.family("traceplane_probe_budget_transitions_total", type: .counter,
                      help: "Changes of a budgeted probe's state or sampling, by the state entered (a change of N while throttled counts as throttled).")
        for (budget, identity) in budgeted {
            for state in BudgetPolicy.State.allCases {
                writer.sample()
                writer.labels(identity)
                writer.label("to", state.rawValue)
                writer.value(budget.transitions[state.rawValue] ?? 0)
            }
        }
        writer.family("traceplane_probe_sample_every", type: .gauge,
                      help: "A budgeted probe records 1 call in this many and counts each recorded call this many times (1: every call; its counts are then exact).")
        for (budget, identity) in budgeted {
            writer.sample()
            writer.labels(identity)
            writer.value(UInt64(budget.sampleEvery))
        }
        writer.family("traceplane_probe_cost_cpu_ratio", type: .gauge,
                      help: "A budgeted probe's estimated cost now, in CPUs: its calls per second times its BPF run time per call (from the latest BPF stats window, the stats' own cost taken off).")
        for (budget, identity) in budgeted {
            guard let cpu = budget.cpuPercent else { continue }
            writer.sample()
            writer.labels(identity)
            writer.value(double: cpu / 100)
        }

        writer.family("traceplane_probes", type: .gauge, help: "Probes held by the agent, by state.")
        for (state, count) in probesByState {
            writer.sample()
            writer.label("state", state)
            writer.value(count)
        }

        writer.family("traceplane_capability_supported", type: .gauge,
                      help: "1 when the mechanism or feature loaded, attached and fired on this kernel, else 0.")
        for (name, supported) in capabilities {
            writer.sample()
            writer.label("capability", name)
            writer.value(supported ? 1 : 0)
        }

        writer.family("traceplane_attach_attempts_total", type: .counter,
                      help: "Attempts to attach a probe with a mechanism, by outcome (attached, unsupported, denied, error).")
        for attempt in attachAttempts {
            writer.sample()
            writer.label("mechanism", attempt.mechanism)
            writer.label("outcome", attempt.outcome)
            writer.value(attempt.count)
        }

        writer.family("traceplane_http_requests_total", type: .counter, help: "HTTP requests answered, by method and status code.")
        for (key, count) in httpRequests.sorted {
            writer.sample()
            writer.label("method", key.method)
            writer.label("code", String(key.status))
            writer.value(count)
        }

        if let failures = stateSaveFailures {
            writer.family("traceplane_state_save_failures_total", type: .counter,
                          help: "Saves of the desired probes to the state directory that failed (each refused change and each retry); while saves fail, changes are refused and /readyz answers 503.")
            writer.sample()
            writer.value(failures)
        }

        writer.family("traceplane_process_resident_memory_bytes", type: .gauge, help: "Resident memory of the agent process in bytes.")
        if let rss = process.residentMemoryBytes {
            writer.sample()
            writer.value(rss)
        }

        writer.family("traceplane_process_open_fds", type: .gauge,
                      help: "Open file descriptors of the agent process (BPF programs, maps and links included).")
        if let fds = process.openFileDescriptors {
            writer.sample()
            writer.value(fds)
        }

        writer.family("traceplane_process_cpu_seconds_total", type: .counter, help: "CPU time (user and system) the agent process used.")
        if let cpu = process.cpuSeconds {
            writer.sample()
            writer.value(seconds: cpu)
        }

        if let budgets {
            writer.family("traceplane_agent_cpu_ratio", type: .gauge,
                          help: "The agent's own CPU over the last second, in CPUs (scrapes, symbolization, events): it counts against serve --max-cpu-percent.")
            writer.sample()
            writer.value(double: budgets.agentCPUPercent / 100)
            writer.family("traceplane_budget_stats_windows_total", type: .counter,
                          help: "Short windows with BPF run-time stats on, taken to measure budgeted probes' cost per call.")
            writer.sample()
            writer.value(budgets.windows)
            writer.family("traceplane_budget_stats_window_seconds_total", type: .counter,
                          help: "Time BPF run-time stats were on for those windows (every BPF program of the host pays two clock reads per run meanwhile).")
            writer.sample()
            writer.value(seconds: budgets.windowTime)
        }

        writer.family("traceplane_build_info", type: .gauge, help: "Always 1; the agent, libbpf and Swift versions.")
        writer.sample()
        writer.label("version", build.version)
        writer.label("libbpf_version", build.libbpfVersion)
        writer.label("swift_version", build.swiftVersion)
        writer.value(1)

        writer.family("traceplane_scrape_duration_seconds", type: .gauge,
                      help: "Time this scrape took, from its start to this line: reading every probe's maps and rendering.")
        writer.sample()
        writer.value(seconds: ContinuousClock.now - scrapeStarted)
    }

    /// Cumulative buckets over the fixed slot set, `+Inf`, `_sum` and `_count`. `+Inf` and
    /// `_count` are both the total of the kernel's buckets, so they always agree.
    static func renderHistogram<W: MetricsSink>(_ latency: ProbeMetrics.Latency, identity: LabelSet, into writer: inout W) {
        var cumulative: UInt64 = 0
        var next = latency.buckets.startIndex
        for slot in 0..<latencyBucketSlots {
            while next < latency.buckets.endIndex, Self.slot(of: latency.buckets[next]) <= slot {
                cumulative &+= latency.buckets[next].count
                next += 1
            }
            writer.sample(.bucket)
            writer.labels(identity)
            writer.labels(bucketBounds[slot])
            writer.value(cumulative)
        }
        let total = latency.buckets.reduce(UInt64(0)) { $0 &+ $1.count }
        writer.sample(.bucket)
        writer.labels(identity)
        writer.labels(infinityBound)
        writer.value(total)
        writer.sample(.sum)
        writer.labels(identity)
        writer.value(secondsFromNanoseconds: latency.sum)
        writer.sample(.count)
        writer.labels(identity)
        writer.value(total)
    }

    /// One native histogram (schema 0) of the kernel's log2 slots: slot 0 is the zero
    /// bucket, slot s ≥ 1 (2^s to 2^(s+1)-1 ns) bucket s+1, i.e. (2^s, 2^(s+1)].
    static func renderNativeHistogram<W: MetricsSink>(_ latency: ProbeMetrics.Latency, identity: LabelSet, into writer: inout W) {
        var zero: UInt64 = 0
        var first = Int.max, last = Int.min
        for bucket in latency.buckets where bucket.count > 0 {
            let slot = Self.slot(of: bucket)
            if slot == 0 { zero &+= bucket.count } else {
                first = min(first, slot + 1)
                last = max(last, slot + 1)
            }
        }
        var counts: [UInt64] = []
        if first <= last {
            counts = [UInt64](repeating: 0, count: last - first + 1)
            for bucket in latency.buckets where bucket.count > 0 {
                let slot = Self.slot(of: bucket)
                if slot > 0 { counts[slot + 1 - first] &+= bucket.count }
            }
        }
        writer.nativeHistogram([identity], zeroCount: zero, firstIndex: first <= last ? first : 0, counts: counts, sum: Double(latency.sum))
    }

    /// The log2 slot of a kernel bucket: 0 for [0, 1], else log2 of its lower bound.
    static func slot(of bucket: ProbeCounters.Bucket) -> Int {
        bucket.lower <= 1 ? 0 : UInt64.bitWidth - 1 - bucket.lower.leadingZeroBitCount
    }
}
