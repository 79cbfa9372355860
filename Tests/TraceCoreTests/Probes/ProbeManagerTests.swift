import Foundation
import Glibc
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// The probe manager on the fake kernel with a manual clock: TTLs, generations, per-name
/// linearizability and durable-before-acknowledged.
@Suite("ProbeManager (fake kernel, manual clock)")
struct ProbeManagerTests {
    let kernel = FakeKernel()
    let reaper = Reaper()
    let clock = ManualClock()

    func manager(maxProbes: Int = 256, state: StateStore? = nil) -> ProbeManager {
        let prober = CapabilityProber(backend: kernel, reaper: Reaper())
        let report = prober.probe()
        prober.reaper.drain()
        return ProbeManager(planner: Planner(backend: kernel, reaper: reaper), maxProbes: maxProbes, state: state, clock: clock,
                            report: { report })
    }

    func spec(_ name: String, syscall: String = "read", ttl: Int? = nil, labels: [String: String]? = nil, pid: Int? = nil) -> ProbeSpec {
        ProbeSpec(name: name, target: ProbeTarget(type: .syscall, name: syscall), mechanisms: ["tracepoint"],
                  filter: pid.map { ProbeFilter(pid: $0) }, ttlSeconds: ttl, labels: labels)
    }

    /// Lets the manager's own tasks (expiry, recovery) run until `condition` holds; bounded
    /// by scheduling turns, not by time.
    func settle(_ condition: () async -> Bool, sourceLocation: SourceLocation = #_sourceLocation) async {
        for _ in 0..<10_000 where !(await condition()) { await Task.yield() }
        #expect(await condition(), "the manager did not get there", sourceLocation: sourceLocation)
    }

    func openLatencyObjects() -> Int { kernel.openObjects.filter { $0.spec.object == LatencyBPF.object }.count }

    func stateDirectory() throws -> String {
        let dir = NSTemporaryDirectory() + "probe-manager-\(UUID().uuidString)"
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        return dir
    }

    // MARK: TTL

    @Test("A probe expires at its TTL on the monotonic clock: not a moment before; a wall-clock step moves no expiry, only expires_at (when the wall clock will show it)")
    func ttlOnTheMonotonicClock() async throws {
        let manager = manager()
        let created = try await manager.put(name: "short", spec: spec("short", ttl: 10)).0
        #expect(created.expiresAt == clock.now().addingTimeInterval(10))
        clock.stepWall(by: 3_600)  // an NTP step: the lease is the same
        clock.advance(by: .milliseconds(9_999))
        for _ in 0..<100 { await Task.yield() }
        #expect(await manager.count == 1)
        let shown = try #require(try await manager.get("short").expiresAt)
        #expect(abs(shown.timeIntervalSince(try #require(created.expiresAt)) - 3_600) < 0.001, "expires_at follows the step: \(shown)")
        clock.advance(by: .milliseconds(1))
        await settle { await manager.count == 0 }
        reaper.drain()
        #expect(openLatencyObjects() == 0, "expiry detaches: \(kernel.leakReport)")
        await manager.removeAll()
    }

    @Test("A PUT renews the lease: the new deadline counts from the PUT")
    func putRenewsTheLease() async throws {
        let manager = manager()
        _ = try await manager.put(name: "lease", spec: spec("lease", ttl: 10))
        clock.advance(by: .seconds(8))
        let (renewed, outcome) = try await manager.put(name: "lease", spec: spec("lease", ttl: 10))
        #expect(outcome == .unchanged)
        #expect(renewed.expiresAt == clock.now().addingTimeInterval(10))
        clock.advance(by: .seconds(8))
        for _ in 0..<100 { await Task.yield() }
        #expect(await manager.count == 1, "16 s after creation, 8 s after the renewal")
        clock.advance(by: .seconds(2))
        await settle { await manager.count == 0 }
        await manager.removeAll()
    }

    @Test("A TTL that runs out while a PUT of the name attaches waits for it (no busy expiry loop); the PUT's new lease counts")
    func expiryWaitsForAnOperationInFlight() async throws {
        let manager = manager()
        _ = try await manager.put(name: "busy", spec: spec("busy", ttl: 10))
        let gate = kernel.holdLoads()
        let replacing = Task { try await manager.put(name: "busy", spec: spec("busy", ttl: 10, pid: 99)) }
        #expect(await gate.waitForLoad(seconds: 60))
        let runs = await manager.expiryRuns
        clock.advance(by: .seconds(11))
        for _ in 0..<500 { await Task.yield() }
        #expect(await manager.count == 1, "expired while a PUT held it")
        #expect(await manager.expiryRuns - runs <= 1, "expiry ran again and again while the name was held")
        gate.open()
        #expect(try await replacing.value.1 == .replaced)
        clock.advance(by: .seconds(9))
        for _ in 0..<200 { await Task.yield() }
        #expect(await manager.count == 1, "the replacement's lease runs from the PUT")
        clock.advance(by: .seconds(1))
        await settle { await manager.count == 0 }
        await manager.removeAll()
    }

    // MARK: Generations and outcomes

    @Test("Generations: created 1; labels or TTL change keep the attachment (2); a filter change re-attaches (3); the same spec is unchanged")
    func generations() async throws {
        let manager = manager()
        let (first, created) = try await manager.put(name: "g", spec: spec("g"))
        #expect(created == .created && first.generation == 1 && first.state == .active && first.mechanism == .tracepoint)
        let loads = kernel.loadedSpecs.count
        let (labelled, relabel) = try await manager.put(name: "g", spec: spec("g", labels: ["owner": "me"]))
        #expect(relabel == .replaced && labelled.generation == 2)
        #expect(kernel.loadedSpecs.count == loads, "a label change loads nothing")
        let (refiltered, replaced) = try await manager.put(name: "g", spec: spec("g", labels: ["owner": "me"], pid: 7))
        #expect(replaced == .replaced && refiltered.generation == 3 && refiltered.createdAt == first.createdAt)
        #expect(kernel.loadedSpecs.count == loads + 1)
        reaper.drain()
        #expect(openLatencyObjects() == 1, "the old attachment is detached once the new one works")
        let (same, unchanged) = try await manager.put(name: "g", spec: spec("g", labels: ["owner": "me"], pid: 7))
        #expect(unchanged == .unchanged && same.generation == 3)
        await manager.removeAll()
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("POST: the same spec twice gives the existing probe; another spec under the name is a conflict")
    func postIsCreateOnly() async throws {
        let manager = manager()
        let (a, createdA) = try await manager.create(spec("c"))
        let (b, createdB) = try await manager.create(spec("c"))
        #expect(createdA && !createdB && a == b)
        await #expect(throws: ProbeError.self) { _ = try await manager.create(spec("c", syscall: "write")) }
        do throws(ProbeError) { _ = try await manager.create(spec("c", syscall: "write")) } catch { #expect(error.kind == .conflict) }
        await manager.removeAll()
    }

    @Test("The probe limit counts creations in flight: concurrent creates past it get tooMany, and nothing leaks")
    func limitCountsCreationsInFlight() async throws {
        kernel.slowLoads(microseconds: 2_000)
        let manager = manager(maxProbes: 3)
        let outcomes = await withTaskGroup(of: ProbeError.Kind?.self) { group in
            for i in 0..<8 {
                group.addTask {
                    do throws(ProbeError) { _ = try await manager.create(spec("lim-\(i)")); return nil } catch { return error.kind }
                }
            }
            return await group.reduce(into: [ProbeError.Kind?]()) { $0.append($1) }
        }
        #expect(outcomes.filter { $0 == nil }.count == 3)
        #expect(outcomes.filter { $0 == .tooMany }.count == 5)
        #expect(await manager.count == 3)
        await manager.removeAll()
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    // MARK: Linearizability

    @Test("A DELETE racing a replacing PUT is never undone: the final state is what the answers say, 300 times")
    func deleteRacingReplace() async throws {
        kernel.slowLoads(microseconds: 300)
        let manager = manager()
        var orders: [String: Int] = [:]
        for i in 0..<300 {
            _ = try await manager.put(name: "r", spec: spec("r", syscall: "read"))
            let replacement = spec("r", syscall: i % 2 == 0 ? "write" : "pread64")
            // Mostly the PUT first, so the DELETE arrives while the replacement attaches (the
            // window of the old defect); every fourth try the other way round.
            let deleteFirst = i % 4 == 3
            let delete = Task { if deleteFirst { try await manager.delete("r") } else { await Task.yield(); try await manager.delete("r") } }
            let outcome = try await manager.put(name: "r", spec: replacement).1
            try await delete.value  // the name exists when either goes first: DELETE always succeeds
            let exists = (try? await manager.get("r")) != nil
            switch outcome {
            case .created:  // DELETE first, then PUT created it again
                let target = try? await manager.get("r").spec.target
                #expect(exists && target == replacement.target, "try \(i)")
            case .replaced:  // PUT first, then DELETE removed it
                #expect(!exists, "try \(i): the DELETE was acknowledged after the replace, yet the probe exists")
            case .unchanged:
                Issue.record("try \(i): a different spec cannot be unchanged")
            }
            orders[outcome.rawValue, default: 0] += 1
            if exists { try await manager.delete("r") }
        }
        print("PUT/DELETE races: \(orders)")
        reaper.drain()
        #expect(openLatencyObjects() == 0, "\(kernel.leakReport)")
        await manager.removeAll()
    }

    @Test("Concurrent PUTs of one name are applied one after another, in arrival order, and the last spec wins")
    func concurrentPutsSerialize() async throws {
        kernel.slowLoads(microseconds: 500)
        let manager = manager()
        _ = try await manager.put(name: "p", spec: spec("p"))
        let outcomes = await withTaskGroup(of: PutOutcome?.self) { group in
            for pid in 1...10 { group.addTask { try? await manager.put(name: "p", spec: spec("p", pid: pid)).1 } }
            return await group.reduce(into: [PutOutcome?]()) { $0.append($1) }
        }
        #expect(outcomes.allSatisfy { $0 == .replaced }, "none is refused as busy: \(outcomes)")
        #expect(try await manager.get("p").generation == 11)
        reaper.drain()
        #expect(openLatencyObjects() == 1)
        await manager.removeAll()
    }

    // MARK: Durability

    @Test("With saves failing, no change is acknowledged or made (kernel included); the disk catches up by itself")
    func nothingUnsavedIsAcknowledged() async throws {
        let dir = try stateDirectory()
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        let manager = manager(state: store)
        _ = try await manager.put(name: "kept", spec: spec("kept"))
        let saved = try #require(FileManager.default.contents(atPath: store.path))

        // The state directory becomes a regular file: every save fails (even as root).
        try FileManager.default.removeItem(atPath: dir)
        #expect(FileManager.default.createFile(atPath: dir, contents: Data()))
        do throws(ProbeError) {
            _ = try await manager.put(name: "new", spec: spec("new"))
            Issue.record("a create was acknowledged although it was not saved")
        } catch {
            #expect(error.kind == .notSaved && error.errno == .ENOTDIR)
        }
        do throws(ProbeError) {
            try await manager.delete("kept")
            Issue.record("a delete was acknowledged although it was not saved")
        } catch {
            #expect(error.kind == .notSaved)
        }
        #expect(await manager.list().map(\.name) == ["kept"], "nothing changed")
        #expect(manager.stateProblem?.contains("ENOTDIR") == true)
        #expect(manager.stateSaveFailures >= 2)
        reaper.drain()
        #expect(openLatencyObjects() == 1, "the probe attached for the refused create was detached: \(kernel.leakReport)")

        // The fault goes: the recovery loop (every second) saves what is committed.
        try FileManager.default.removeItem(atPath: dir)
        let failures = manager.stateSaveFailures
        clock.advance(by: .seconds(1))
        await settle { manager.stateProblem == nil }
        #expect(manager.stateSaveFailures == failures)
        let recovered = try ReportJSON.decoder().decode(PersistedState.self, from: try #require(FileManager.default.contents(atPath: store.path)))
        #expect(recovered.probes == (try ReportJSON.decoder().decode(PersistedState.self, from: saved)).probes,
                "the disk says what was acknowledged")
        _ = try await manager.put(name: "new", spec: spec("new"))
        let state = try ReportJSON.decoder().decode(PersistedState.self, from: try #require(FileManager.default.contents(atPath: store.path)))
        #expect(state.probes.map { $0.spec.name } == ["kept", "new"])
        await manager.removeAll()
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("Restore keeps names, generations and the remaining TTL; an expired one is dropped")
    func restore() async throws {
        let manager = manager()
        let now = clock.now()
        let saved = PersistedState(savedAt: now, probes: [
            .init(spec: spec("alive", ttl: 100), createdAt: now.addingTimeInterval(-50), expiresAt: now.addingTimeInterval(50), generation: 4),
            .init(spec: spec("gone", ttl: 10), createdAt: now.addingTimeInterval(-50), expiresAt: now.addingTimeInterval(-40), generation: 1),
        ])
        let outcomes = await manager.restore(saved)
        #expect(outcomes.map(\.name) == ["alive", "gone"])
        #expect(outcomes[0].probe?.generation == 4 && outcomes[0].probe?.state == .active)
        #expect(outcomes[1].probe == nil && outcomes[1].problem?.contains("expired") == true)
        clock.advance(by: .seconds(49))
        for _ in 0..<100 { await Task.yield() }
        #expect(await manager.count == 1)
        clock.advance(by: .seconds(1))
        await settle { await manager.count == 0 }
        await manager.removeAll()
    }

    @Test("Shutdown during a restore stops it: the probe being loaded is detached and the rest are not loaded")
    func shutdownStopsARestore() async throws {
        let manager = manager()
        let now = clock.now()
        let saved = PersistedState(savedAt: now, probes: (0..<3).map {
            .init(spec: spec("r\($0)", syscall: ["read", "write", "pread64"][$0]), createdAt: now, expiresAt: nil, generation: 1)
        })
        let loadsBefore = kernel.loadedSpecs.count
        let gate = kernel.holdLoads()
        let restoring = Task { await manager.restore(saved) }
        #expect(await gate.waitForLoad(seconds: 60))
        await manager.removeAll()
        gate.open()
        _ = await restoring.value
        #expect(kernel.loadedSpecs.count == loadsBefore + 1, "after shutdown the other saved probes were loaded too")
        #expect(await manager.count == 0)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("After shutdown nothing new attaches: a change in flight is refused and its probe detached")
    func shutdownRefusesChanges() async throws {
        let manager = manager()
        await manager.removeAll()
        do throws(ProbeError) {
            _ = try await manager.put(name: "late", spec: spec("late"))
            Issue.record("attached after shutdown")
        } catch {
            #expect(error.kind == .unavailable)
        }
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }
}
