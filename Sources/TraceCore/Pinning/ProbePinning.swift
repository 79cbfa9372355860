import BPFPrograms
import Foundation
import Logging

/// Pinned state for ``ProbeManager`` (`serve --pin-dir`): pins what a change attaches and
/// writes its manifest before the change is acknowledged, unpins what a change drops, and
/// at start-up adopts what matches the saved state. Blocking (bpffs and fsync): callers run
/// it off the actor, on ``BlockingWork``.
public final class ProbePinning: Sendable {
    public let store: PinStore
    let planner: Planner
    private let logger: Logger

    public init(store: PinStore, planner: Planner, logger: Logger = Logger(label: "traceplane.pins")) {
        self.store = store
        self.planner = planner
        self.logger = logger
    }

    // MARK: - Changes

    /// Pins `probe` (its own object under `<root>/<name>/g<generation>/`; a hub member's
    /// hub pinned itself when it loaded) and writes its manifest.
    ///
    /// - Throws: ``ProbeError`` of kind `notSaved` when a pin or the manifest cannot be
    ///   written; what was pinned for it is removed again.
    func pin(_ probe: AttachedProbe, name: String, spec: ProbeSpec, generation: Int) throws(ProbeError) -> PinManifest {
        // Checked first: else a directory tree would be made where bpffs was, and a member
        // of a loaded shared hook would be acknowledged as pinned with the hook's pins gone.
        if let why = store.unusable() {
            throw ProbeError(kind: .notSaved, detail: "the change was not made because probe '\(name)' cannot be pinned: \(why)")
        }
        if case .hub(let membership) = probe.pinShape, let directory = membership.hub.pinDirectory,
           LinuxHost.fsMagic(directory) != LinuxHost.bpffsMagic {
            throw ProbeError(kind: .notSaved, detail: "the change was not made because probe '\(name)' joins the shared hook \(membership.hub.descriptor.id.rawValue), whose pins in \(directory) are gone (was bpffs unmounted under the agent?); restart the agent to pin it again")
        }
        var manifest = PinManifest(manifestVersion: PinManifest.currentVersion, layoutVersion: PinLayout.version, name: name,
                                   generation: generation, flavour: probe.descriptor.id.rawValue, object: .own, bpfObject: LatencyBPF.object.name,
                                   directory: nil, programs: [], links: 0, taskStorage: probe.taskStorage, budgeted: probe.budgeted, boundTo: probe.boundTo, hub: nil,
                                   attempts: probe.attempts, spec: spec, pinnedAt: Date())
        var made: String?
        do throws(KernelError) {
            switch probe.pinShape {
            case .own(let object, let links):
                let directory = "g\(generation)"
                let path = store.ownDirectory(name, directory)
                PinStore.removeTree(path)
                do { try PinStore.makeDirectories(path) } catch {
                    throw KernelError(stage: .attach, errno: .current, operation: "create \(path)", detail: error.description)
                }
                made = path
                try probe.pinOwn(in: path)
                manifest.directory = directory
                manifest.programs = object.programStats().map(\.name)
                manifest.links = links.count
            case .hub(let membership):
                guard let shape = membership.hub.pinnedShape, membership.hub.pinDirectory != nil else {
                    throw KernelError(stage: .attach, errno: .ENOENT, operation: "pin a slot of the shared hook", detail: "the hook is not pinned")
                }
                manifest.object = .hub
                manifest.bpfObject = SyscallHubBPF.object.name
                manifest.programs = shape.programs
                manifest.links = shape.links
                manifest.hub = PinManifest.HubSlot(slot: membership.slot, claim: membership.claim, nr: membership.nr,
                                                   slots: membership.hub.slots, cgroupMode: shape.cgroupMode.rawValue)
            case .detached:
                throw KernelError(stage: .attach, errno: .EBADF, operation: "pin a detached probe")
            }
        } catch {
            if let made { PinStore.removeTree(made) }
            store.removeIfEmpty(name)
            throw ProbeError(kind: .notSaved, detail: "the change was not made because probe '\(name)' could not be pinned in \(store.root): \(error)",
                             errno: error.errno)
        }
        try write(manifest)
        return manifest
    }

    /// Replaces a manifest (a PUT that changed only labels or the lease).
    func write(_ manifest: PinManifest) throws(ProbeError) {
        do { try store.write(manifest) } catch {
            if let directory = manifest.directory { PinStore.removeTree(store.ownDirectory(manifest.name, directory)) }
            throw ProbeError(kind: .notSaved, detail: "the change was not made because the manifest of '\(manifest.name)' could not be saved to \(store.manifestPath(manifest.name)): \(error)",
                             errno: error.errno)
        }
    }

    /// Puts back the manifest of a probe a failed change left in place (nil: it had none).
    func restoreManifest(_ manifest: PinManifest?, name: String) {
        if let manifest { try? store.write(manifest) } else { store.removeManifest(name) }
    }

    /// Removes the pins of one attachment of a probe (the other generation stays). Must run
    /// before its links are closed: a pin keeps a link attached.
    func unpin(_ manifest: PinManifest) {
        if let directory = manifest.directory { PinStore.removeTree(store.ownDirectory(manifest.name, directory)) }
        store.removeIfEmpty(manifest.name)
    }

    /// Removes everything pinned for probe `name`, and its manifest.
    func forget(_ name: String) {
        let removed = PinStore.removeTree(store.probeDirectory(name))
        store.removeManifest(name)
        if !removed.isEmpty { logger.debug("unpinned probe \(name) (\(removed.count) entries)") }
    }

    /// Lets go of every shared hook without detaching it (shutdown).
    func releaseHubs() {
        for hub in planner.hubs.all { hub.release() }
    }

    // MARK: - Start-up

    /// A saved probe the restore may adopt: its name, saved generation and normalized spec.
    struct Candidate {
        var name: String
        var generation: Int
        var spec: ProbeSpec
    }

    /// What adopting one saved probe came to.
    enum Adoption {
        case adopted(AttachedProbe, PinManifest)
        /// Attach it anew; `why` says what did not match (nil: nothing was pinned for it).
        case replaced(why: String?)
    }

    /// Adopts the pins of every candidate whose manifest matches, removes every other pin
    /// and manifest (unknown probes, mismatches, pins of probes not saved), and moves a
    /// corrupt manifest aside. `notes` says what was removed.
    func adopt(_ candidates: [Candidate]) -> (adoptions: [String: Adoption], notes: [String]) {
        var adoptions: [String: Adoption] = [:]
        var notes: [String] = []
        var hubCandidates: [FlavourDescriptor.ID: [SyscallHub.AdoptionCandidate]] = [:]
        for candidate in candidates {
            let name = candidate.name
            let manifest: PinManifest
            switch store.read(name) {
            case .none:
                adoptions[name] = .replaced(why: nil)
                continue
            case .corrupt(let reason, let keptAt):
                let why = "its manifest \(reason)" + (keptAt.map { "; kept aside as \($0)" } ?? "")
                notes.append("probe \(name): \(why)")
                adoptions[name] = .replaced(why: why)
                continue
            case .manifest(var read):
                // Compared as the saved spec is: normalized on this build.
                if let spec = try? ProbeManager.normalize(read.spec, host: planner.host) { read.spec = spec }
                manifest = read
            }
            let budgeted = candidate.spec.budget != nil || planner.budgetsEveryProbe
            if let why = manifest.mismatch(saved: candidate.generation, spec: candidate.spec, budgeted: budgeted) {
                adoptions[name] = .replaced(why: why)
                continue
            }
            guard let descriptor = FlavourCatalog.all.first(where: { $0.id.rawValue == manifest.flavour }) else {
                adoptions[name] = .replaced(why: "flavour \(manifest.flavour) is unknown to this build")
                continue
            }
            let plan: AggregatePlan
            switch AggregatePlan.resolve(candidate.spec, schema: planner.host.schema(for: candidate.spec.target)) {
            case .success(let resolved): plan = resolved
            case .failure: adoptions[name] = .replaced(why: "its keys no longer resolve on this host"); continue
            }
            switch manifest.object {
            case .own:
                switch adoptOwn(manifest, descriptor: descriptor, spec: candidate.spec, plan: plan) {
                case .success(let probe): adoptions[name] = .adopted(probe, manifest)
                case .failure(let refusal): adoptions[name] = .replaced(why: refusal.description)
                }
            case .hub:
                guard let slot = manifest.hub, descriptor.strategy == .sharedSyscallHook else {
                    adoptions[name] = .replaced(why: "the manifest names no slot of a shared hook")
                    continue
                }
                hubCandidates[descriptor.id, default: []].append(.init(name: name, spec: candidate.spec, plan: plan, manifest: manifest, slot: slot))
            }
        }
        for (id, members) in hubCandidates {
            guard let hub = planner.hubs[id] else { continue }
            for (name, result) in hub.adopt(members) {
                switch result {
                case .success(let probe): adoptions[name] = .adopted(probe, members.first { $0.name == name }!.manifest)
                case .failure(let refusal): adoptions[name] = .replaced(why: refusal.description)
                }
            }
        }
        // What is not adopted goes: pins first, then manifests. An adopted probe keeps only
        // the pins its manifest names: an agent killed between pinning a replacement and
        // saving it leaves that replacement's generation pinned (attached and counting),
        // and nothing else would ever remove it.
        for (name, adoption) in adoptions {
            switch adoption {
            case .replaced: forget(name)
            case .adopted(_, let manifest):
                let keep = manifest.object == .own ? manifest.directory.map(PinName.escaped) : nil
                for entry in PinStore.list(store.probeDirectory(name)) where entry != keep {
                    let removed = PinStore.removeTree("\(store.probeDirectory(name))/\(entry)")
                    notes.append("probe \(name): pins of \(entry) removed, its manifest names \(keep ?? "no own object") (\(removed.count) entries)")
                }
                store.removeIfEmpty(name)
            }
        }
        let saved = Set(candidates.map(\.name))
        for name in store.pinnedProbes() where !saved.contains(name) {
            let removed = PinStore.removeTree(store.probeDirectory(name))
            notes.append("pins of probe \(name) removed: no saved probe to adopt them (\(removed.count) entries)")
        }
        for name in store.manifestNames() where !saved.contains(name) {
            store.removeManifest(name)
            notes.append("manifest of probe \(name) removed: no saved probe")
        }
        for hub in planner.hubs.all where !hub.isLoaded {
            if let directory = hub.pinDirectory, !PinStore.removeTree(directory).isEmpty {
                notes.append("pins of the shared hook \(hub.descriptor.id.rawValue) removed: no probe adopted it")
            }
        }
        for hubDirectory in store.pinnedHubs() where !planner.hubs.all.contains(where: { $0.pinDirectory == "\(store.root)/\(hubDirectory)" }) {
            PinStore.removeTree("\(store.root)/\(hubDirectory)")
            notes.append("pins of \(hubDirectory) removed: no shared hook of that name in this build")
        }
        return (adoptions, notes)
    }

    /// A probe over the pins of its own object.
    private func adoptOwn(_ manifest: PinManifest, descriptor: FlavourDescriptor, spec: ProbeSpec, plan: AggregatePlan) -> Result<AttachedProbe, PinRefusal> {
        guard let directory = manifest.directory else { return .failure(PinRefusal("the manifest names no pin directory")) }
        guard let backend = planner.attacher.backend as? any PinnableBackend else { return .failure(PinRefusal("this kernel backend cannot adopt pins")) }
        guard manifest.bpfObject == LatencyBPF.object.name else { return .failure(PinRefusal("object \(manifest.bpfObject) is not a probe object of this build")) }
        let path = store.ownDirectory(manifest.name, directory)
        let adopted: (object: any LoadedObject, links: [any AttachedLink])
        do {
            adopted = try backend.adopt(LatencyBPF.object, programs: manifest.programs, links: manifest.links, from: path)
        } catch {
            return .failure(PinRefusal("a pin is missing or unusable: \(error)"))
        }
        var events: ProbeEvents?
        var notices: KeyNotices?
        // The events ring: its events, or only a ustack probe's new-key notices (pinned
        // programs of an older build write none: the stack table's second still reads).
        do {
            if let eventsSpec = spec.events {
                let ring = try adopted.object.openRing(LatencyBPF.Maps.events, index: nil)
                events = ProbeEvents(ring: ring, spec: eventsSpec, plan: plan, layout: .own,
                                     kind: descriptor.measures == .events ? "tracepoint" : "call")
            } else {
                notices = try KeyNotices.open(adopted.object, plan: plan)
            }
        } catch {
            for link in adopted.links { link.release() }
            adopted.object.close()
            return .failure(PinRefusal("its events ring buffer cannot be opened: \(error)"))
        }
        let probe = AttachedProbe(descriptor: descriptor, object: adopted.object, links: adopted.links, taskStorage: manifest.taskStorage,
                                  boundTo: manifest.boundTo, plan: plan,
                                  reportsAggregate: spec.aggregate != nil || spec.target.type == .profile, events: events,
                                  notices: notices, budgeted: manifest.budgeted)
        probe.attempts = manifest.attempts
        probe.markPinned()
        return .success(probe)
    }
}
