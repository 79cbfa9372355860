import CBPFLayouts
import Glibc

extension AttachedProbe {
    /// What pinning needs to know of a probe's kernel resources.
    enum PinShape {
        case own(object: any LoadedObject, links: [any AttachedLink])
        case hub(SyscallHub.Membership)
        case detached
    }

    var pinShape: PinShape {
        switch resources.withLock({ $0 }) {
        case .own(let object, let links): .own(object: object, links: links)
        case .hub(let membership): .hub(membership)
        case .detached: .detached
        }
    }

    /// Pins the probe's own object (maps, programs) and its links in `directory`, which
    /// exists. A hub member has nothing of its own to pin (its hub pins itself).
    ///
    /// - Throws: ``KernelError`` when the kernel refuses a pin.
    func pinOwn(in directory: String) throws(KernelError) {
        guard case .own(let object, let links) = pinShape else { return }
        try object.pin(in: directory)
        for (index, link) in links.enumerated() { try link.pin(at: "\(directory)/\(PinName.link(index))") }
        markPinned()
    }

    /// Lets go of the probe without detaching anything: its pins keep it attached and
    /// counting (shutdown with `--pin-dir`). A hub member leaves its slot listed; the hub
    /// is let go of as a whole (``SyscallHub/release()``). Idempotent.
    func release() {
        stackTable?.stop()
        events?.finish(.shutdown)
        notices?.close()
        let taken = resources.withLock { r -> Resources in
            defer { r = .detached }
            return r
        }
        if case .own(let object, let links) = taken {
            for link in links { link.release() }
            object.close()
        }
    }
}

extension SyscallHub {
    /// Pins a hub just loaded; the attempt to report when the kernel refuses (the hub is
    /// then disposed of: a hub that is not pinned would not survive a restart).
    func pinLoaded(_ made: ObjectAttacher.Attached, facts: KernelFacts) -> AttachAttempt? {
        guard let pinDirectory else { return nil }
        do throws(KernelError) {
            PinStore.removeTree(pinDirectory)
            do { try PinStore.makeDirectories(pinDirectory) } catch {
                throw KernelError(stage: .attach, errno: .current, operation: "create \(pinDirectory)", detail: error.description)
            }
            try made.object.pin(in: pinDirectory)
            for (index, link) in made.links.enumerated() { try link.pin(at: "\(pinDirectory)/\(PinName.link(index))") }
            return nil
        } catch {
            PinStore.removeTree(pinDirectory)
            attacher.reaper.dispose(links: made.links, objects: [made.object])
            return .failed(descriptor.flavour, descriptor.needs[0], error, facts: facts)
        }
    }

    /// Lets go of the hub without unlisting any slot or detaching: its pins keep it
    /// counting for every member (shutdown with `--pin-dir`).
    func release() {
        state.withLock { s in
            guard let loaded = s.loaded else { return }
            for link in loaded.links { link.release() }
            loaded.object.close()
            s.loaded = nil
            s.members = [:]
            s.memberClaims = [:]
            s.generation += 1
        }
    }

    /// The programs the loaded hub runs and its number of links, for members' manifests.
    var pinnedShape: (programs: [String], links: Int, taskStorage: Bool, cgroupMode: CgroupFilterMode)? {
        state.withLock { s in
            guard let loaded = s.loaded else { return nil }
            return (loaded.object.programStats().map(\.name), loaded.links.count, loaded.taskStorage, loaded.cgroupMode)
        }
    }

    /// A saved probe whose manifest places it in this hub.
    struct AdoptionCandidate {
        var name: String
        var spec: ProbeSpec
        var plan: AggregatePlan
        var manifest: PinManifest
        var slot: PinManifest.HubSlot
    }

    /// Takes over the hub pinned in ``pinDirectory`` for `candidates`: each whose slot still
    /// holds its claim and is listed under its syscall keeps counting where it is; every
    /// other listed slot is unlisted. Nothing is loaded or attached. When no candidate can
    /// be adopted, the pins are removed.
    ///
    /// - Returns: per candidate name, its probe or why it was not adopted.
    func adopt(_ candidates: [AdoptionCandidate]) -> [String: Result<AttachedProbe, PinRefusal>] {
        var results: [String: Result<AttachedProbe, PinRefusal>] = [:]
        func refuseAll(_ why: String) -> [String: Result<AttachedProbe, PinRefusal>] {
            if let pinDirectory { PinStore.removeTree(pinDirectory) }
            return Dictionary(uniqueKeysWithValues: candidates.map { ($0.name, .failure(PinRefusal(why))) })
        }
        guard let pinDirectory, let first = candidates.first else { return refuseAll("no pin directory") }
        guard let backend = attacher.backend as? any PinnableBackend else { return refuseAll("this kernel backend cannot adopt pins") }
        if let other = candidates.first(where: { $0.slot.slots != slots }) {
            return refuseAll("the shared hook was pinned with \(other.slot.slots) slots and this agent sizes it for \(slots) (--max-probes)")
        }
        if state.withLock({ $0.loaded != nil }) { return refuseAll("the shared hook is loaded already") }
        let adopted: (object: any LoadedObject, links: [any AttachedLink])
        do {
            adopted = try backend.adopt(SyscallHubBPF.object, programs: first.manifest.programs, links: first.manifest.links, from: pinDirectory)
        } catch {
            return refuseAll("the shared hook's pins are missing or unusable: \(error)")
        }
        let maps = SyscallHubBPF.Maps.self
        let object = adopted.object
        var accepted: [(AdoptionCandidate, SyscallHub.Membership)] = []
        state.withLock { s in
            var maxClaim: UInt32 = 0
            for slot in 0..<slots {
                if let filter = (try? object.lookup(maps.filters, index: UInt32(slot), as: hub_filter.self))?.first {
                    maxClaim = max(maxClaim, filter.claim)
                }
            }
            s.claims = maxClaim
            s.loaded = Loaded(object: object, links: adopted.links, taskStorage: first.manifest.taskStorage,
                              cgroupMode: CgroupFilterMode(rawValue: first.slot.cgroupMode) ?? .ancestor)
            for candidate in candidates {
                let place = candidate.slot
                let filter = (try? object.lookup(maps.filters, index: UInt32(place.slot), as: hub_filter.self))?.first
                let listed = (try? object.lookup(maps.byNr, index: place.nr, as: hub_nr.self))?.first.map(Self.listedSlots) ?? []
                guard place.slot < slots, s.members[place.slot] == nil else {
                    results[candidate.name] = .failure(PinRefusal("slot \(place.slot) is not free in the adopted shared hook"))
                    continue
                }
                guard filter?.claim == place.claim else {
                    results[candidate.name] = .failure(PinRefusal("slot \(place.slot) of the shared hook holds another claim (\(filter?.claim ?? 0), pinned \(place.claim))"))
                    continue
                }
                guard listed.contains(place.slot) else {
                    results[candidate.name] = .failure(PinRefusal("slot \(place.slot) is not listed under syscall \(place.nr) in the shared hook"))
                    continue
                }
                var ring: (any EventRing)?
                if candidate.spec.events != nil {
                    guard let opened = try? object.openRing(maps.slotEvents, index: UInt32(place.slot)) else {
                        results[candidate.name] = .failure(PinRefusal("the ring buffer of slot \(place.slot) cannot be opened"))
                        continue
                    }
                    ring = opened
                }
                s.members[place.slot] = place.nr
                s.memberClaims[place.slot] = place.claim
                accepted.append((candidate, Membership(hub: self, slot: place.slot, nr: place.nr, generation: s.generation,
                                                        taskStorage: first.manifest.taskStorage, plan: candidate.plan, claim: place.claim,
                                                        ring: ring)))
            }
            // Slots listed for probes that are not adopted stop counting now.
            for entry in (try? object.readMap(maps.byNr)) ?? [] {
                guard entry.key.count == 4, let value = entry.values.first, value.count == MemoryLayout<hub_nr>.size else { continue }
                let nr = entry.key.load(as: UInt32.self)
                let listed = Self.listedSlots(value.load(as: hub_nr.self))
                let kept = listed.filter { s.members[$0] == nr }
                if kept != listed { try? object.update(maps.byNr, index: nr, to: Self.nrValue(kept)) }
            }
            if s.members.isEmpty {
                PinStore.removeTree(pinDirectory)
                attacher.reaper.dispose(links: adopted.links, objects: [object])
                s.loaded = nil
                s.generation += 1
            }
        }
        for (candidate, membership) in accepted {
            var events: ProbeEvents?
            if let ring = membership.ring, let spec = candidate.spec.events {
                events = ProbeEvents(ring: ring, spec: spec, plan: candidate.plan, layout: .hub, kind: "call")
            }
            let probe = AttachedProbe(descriptor: descriptor, hub: membership, boundTo: "syscall nr \(membership.nr), slot \(membership.slot)",
                                      plan: candidate.plan, reportsAggregate: candidate.spec.aggregate != nil, events: events,
                                      budgeted: candidate.manifest.budgeted)
            probe.attempts = candidate.manifest.attempts
            results[candidate.name] = .success(probe)
        }
        return results
    }

    static func listedSlots(_ value: hub_nr) -> [Int] {
        withUnsafeBytes(of: value.slots) { raw in
            (0..<min(Int(value.count), perSyscall)).map { Int(raw.load(fromByteOffset: 4 * $0, as: UInt32.self)) }
        }
    }
}

/// Why pins were not adopted.
public struct PinRefusal: Error, Sendable, Hashable, CustomStringConvertible {
    public var description: String
    init(_ description: String) { self.description = description }
}

extension SyscallHubs {
    /// Every hub of the planner.
    var all: [SyscallHub] { FlavourDescriptor.ID.allCases.compactMap { self[$0] } }
}
