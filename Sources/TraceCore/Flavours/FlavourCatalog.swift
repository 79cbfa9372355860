/// The one table of attach flavours. Default chains, spec validation, the planner, the
/// capability report's chains and `selftest` all read it.
public enum FlavourCatalog {
    /// Every flavour this agent has.
    public static let all: [FlavourDescriptor] = [
        .fentry, .kprobe, .syscallHubBTF, .syscallHubRaw, .syscallTracepoints, .uprobe,
        .eventTpBTF, .eventRawTracepoint, .eventTracepoint, .profile,
    ]

    /// The flavours that can trace `type`, in default preference order.
    public static func chain(for type: TargetType) -> [FlavourDescriptor] {
        all.filter { $0.serves(type) }.sorted { $0.places[type]!.position < $1.places[type]!.position }
    }

    /// The flavour a spec's mechanism name picks for `type`, or nil when that name cannot
    /// trace such targets.
    public static func descriptor(_ flavour: Flavour, for type: TargetType) -> FlavourDescriptor? {
        chain(for: type).first { $0.flavour == flavour }
    }

    /// What a spec asks to try, in order: its `mechanisms` (each resolved for the target
    /// type, duplicates dropped) or the default chain.
    public static func chain(for spec: ProbeSpec) -> [FlavourDescriptor] {
        guard spec.mechanisms != nil else { return chain(for: spec.target.type) }
        return spec.flavours.compactMap { descriptor($0, for: spec.target.type) }
    }

    /// The chains the capability report shows, with what is usable on this kernel.
    static func reportChains(_ mechanisms: [CapabilityResult]) -> [String: [ChainStep]] {
        let supported = Set(mechanisms.filter { $0.status == .supported }.map(\.subject))
        var chains: [String: [ChainStep]] = [:]
        for type in TargetType.allCases {
            chains[type.rawValue] = chain(for: type).map { d in
                ChainStep(mechanism: d.flavour, requires: d.needs, via: d.via(for: type),
                          usable: d.unavailable == nil && d.needs.allSatisfy { supported.contains(.mechanism($0)) })
            }
        }
        return chains
    }
}
