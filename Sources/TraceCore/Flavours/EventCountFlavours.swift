extension FlavourDescriptor {
    /// Tracepoint targets count events (no latency): a BTF raw tracepoint first, bound at
    /// load time to `btf_trace_<event>`.
    static let eventTpBTF = FlavourDescriptor(
        id: .eventTpBTF, flavour: .tpBTF, places: [.tracepoint: .init(position: 0, via: "BTF tracepoint")], needs: [.tpBTF],
        measures: .events,
        btfRequirement: { target, _ in .tracepoints([target.tracepointParts.event]) },
        keySupport: { plan in AggregatePlan.fieldsNeedRecord(plan, "a BTF tracepoint") },
        recipe: { input in
            let p = LatencyBPF.Programs.self
            return Recipe(load: LatencyObject.load([.init(p.cntTpBtf, loadTimeTarget: input.spec.target.tracepointParts.event)], input),
                          attachments: [.init(program: p.cntTpBtf, point: .loadTimeTarget, mechanism: .tpBTF)])
        })

    /// …then a raw tracepoint (untyped arguments, no BTF needed)…
    static let eventRawTracepoint = FlavourDescriptor(
        id: .eventRawTracepoint, flavour: .rawTracepoint, places: [.tracepoint: .init(position: 1, via: "raw tracepoint")], needs: [.rawTracepoint],
        measures: .events,
        keySupport: { plan in AggregatePlan.fieldsNeedRecord(plan, "a raw tracepoint") },
        recipe: { input in
            let p = LatencyBPF.Programs.self
            return Recipe(load: LatencyObject.load([.init(p.cntRawTp)], input),
                          attachments: [.init(program: p.cntRawTp, point: .rawTracepoint(name: input.spec.target.tracepointParts.event),
                                              mechanism: .rawTracepoint)])
        })

    /// …then the perf tracepoint (tracefs).
    static let eventTracepoint = FlavourDescriptor(
        id: .eventTracepoint, flavour: .tracepoint, places: [.tracepoint: .init(position: 2, via: "perf tracepoint")], needs: [.tracepoint],
        measures: .events,
        recipe: { input in
            let p = LatencyBPF.Programs.self
            let parts = input.spec.target.tracepointParts
            return Recipe(load: LatencyObject.load([.init(p.cntTracepoint)], input),
                          attachments: [.init(program: p.cntTracepoint, point: .tracepoint(category: parts.category, name: parts.event),
                                              mechanism: .tracepoint)])
        })
}
