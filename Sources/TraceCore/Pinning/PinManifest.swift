import Foundation

/// What a pinned probe is, saved next to the desired state (bpffs holds no regular
/// files): enough to decide whether a restarted agent may adopt the pins, and to rebuild
/// the probe over them. One file per probe, `<state-dir>/pins/<name>.json`, replaced
/// atomically before the change that pinned is acknowledged.
public struct PinManifest: Sendable, Codable, Hashable {
    /// The version of this file's shape.
    public static let currentVersion = 1

    public enum ObjectKind: String, Sendable, Codable, Hashable {
        /// The probe's own object, pinned under `<pin-dir>/<name>/<directory>/`.
        case own
        /// A slot of the shared syscall hook, pinned once under `<pin-dir>/.hub-<flavour>/`.
        case hub
    }

    /// A hub member's place in the hub.
    public struct HubSlot: Sendable, Codable, Hashable {
        public var slot: Int
        /// The slot's claim (in its filter in the kernel): another owner's claim differs.
        public var claim: UInt32
        /// The syscall number the slot is listed under.
        public var nr: UInt32
        /// How many slots the hub was loaded with.
        public var slots: Int
        /// How the hub checks cgroup filters (``CgroupFilterMode`` raw value).
        public var cgroupMode: UInt32

        enum CodingKeys: String, CodingKey {
            case slot, claim, nr, slots
            case cgroupMode = "cgroup_mode"
        }
    }

    public var manifestVersion: Int
    public var layoutVersion: Int
    public var name: String
    public var generation: Int
    /// The flavour's descriptor (``FlavourDescriptor/ID`` raw value, e.g. `syscallHubBTF`).
    public var flavour: String
    public var object: ObjectKind
    /// The embedded BPF object (`latency`, `syscall_hub`).
    public var bpfObject: String
    /// The subdirectory of `<pin-dir>/<name>/` holding an own object's pins.
    public var directory: String?
    /// The programs the object loaded (pinned as `prog.<name>`).
    public var programs: [String]
    /// How many links it attached (pinned as `link.0` …).
    public var links: Int
    public var taskStorage: Bool
    /// Whether its programs were built with budget control (they sample and read the
    /// budget map): a build that would build it the other way does not adopt it.
    public var budgeted: Bool
    public var boundTo: String?
    public var hub: HubSlot?
    /// The attempts of the attach that made the pins (shown again once adopted).
    public var attempts: [AttachAttempt]
    /// The normalized spec, name included.
    public var spec: ProbeSpec
    public var pinnedAt: Date

    enum CodingKeys: String, CodingKey {
        case name, generation, flavour, object, directory, programs, links, hub, attempts, spec, budgeted
        case manifestVersion = "manifest_version"
        case layoutVersion = "layout_version"
        case bpfObject = "bpf_object"
        case taskStorage = "task_storage"
        case boundTo = "bound_to"
        case pinnedAt = "pinned_at"
    }

    /// Why the pins this manifest describes may not be adopted for `saved` (nil: they may,
    /// if every pin is present). `spec` is the saved spec, normalized; `budgeted`, whether
    /// this agent builds it with budget control (a `budget`, or `serve --max-cpu-percent`).
    public func mismatch(saved generation: Int, spec: ProbeSpec, budgeted expected: Bool,
                         layoutVersion current: Int = PinLayout.version) -> String? {
        if manifestVersion != Self.currentVersion { return "manifest version \(manifestVersion), this build reads \(Self.currentVersion)" }
        if layoutVersion != current { return "layout version \(layoutVersion) pinned, this build uses \(current)" }
        if FlavourDescriptor.ID(rawValue: flavour) == nil { return "flavour \(flavour) is unknown to this build" }
        if spec.name != name { return "the manifest names probe '\(name)'" }
        if self.generation != generation { return "generation \(self.generation) pinned, \(generation) saved" }
        if self.spec != spec { return "the saved spec differs from the pinned one" }
        if budgeted != expected {
            return budgeted ? "it was pinned with budget control and this agent builds it without (no budget, no --max-cpu-percent)"
                            : "it was pinned without budget control and this agent builds it with (--max-cpu-percent)"
        }
        switch object {
        case .own where directory == nil: return "the manifest names no pin directory"
        case .hub where hub == nil: return "the manifest names no hub slot"
        default: return nil
        }
    }

    /// The manifest's JSON.
    public func encoded() throws -> Data {
        try ReportJSON.encoder(pretty: true).encode(self)
    }

    /// A manifest from its JSON.
    public static func decode(_ data: Data) throws -> PinManifest {
        try ReportJSON.decoder().decode(PinManifest.self, from: data)
    }
}
