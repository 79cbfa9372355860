import Foundation
import Testing
@testable import TraceCore

@Suite("StateStore")
struct StateStoreTests {
    let dir = NSTemporaryDirectory() + "state-store-\(UUID().uuidString)"

    func state(_ names: [String]) -> PersistedState {
        PersistedState(savedAt: Date(timeIntervalSince1970: 0), probes: names.map {
            .init(spec: ProbeSpec(name: $0, target: ProbeTarget(type: .syscall, name: "read")), createdAt: Date(timeIntervalSince1970: 0),
                  expiresAt: nil, generation: 1)
        })
    }

    func saved(_ store: StateStore) throws -> [String] {
        let data = try #require(FileManager.default.contents(atPath: store.path))
        return try ReportJSON.decoder().decode(PersistedState.self, from: data).probes.compactMap(\.spec.name)
    }

    @Test("States reach the disk in the order they were submitted; tickets of one coalesced write all succeed")
    func orderAndCoalescing() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        let tickets = (1...50).map { store.submit(state((0..<$0).map { "p\($0)" })) }
        for ticket in tickets { try await ticket.value() }
        #expect(try saved(store).count == 50, "the last state submitted is the one on disk")
        #expect(store.saveCount <= 50 && store.saveCount >= 1)
        #expect(store.health == .ok && store.failureCount == 0)
    }

    @Test("A failed write fails every ticket submitted before it ended, the queued ones too, and drops their states unwritten")
    func failureFailsTheQueue() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        try await store.submit(state(["kept"])).value()
        try FileManager.default.removeItem(atPath: dir)
        #expect(FileManager.default.createFile(atPath: dir, contents: Data()))  // writes fail: ENOTDIR
        let tickets = (0..<20).map { store.submit(state(["kept", "new-\($0)"])) }
        for ticket in tickets {
            await #expect(throws: StateSaveError.self) { try await ticket.value() }
        }
        guard case .failing(_, let error) = store.health else { Issue.record("health is ok"); return }
        #expect(error.errno == .ENOTDIR)
        // The fault goes; nothing queued before is written behind the caller's back.
        try FileManager.default.removeItem(atPath: dir)
        for _ in 0..<50 { await Task.yield() }
        #expect(!FileManager.default.fileExists(atPath: store.path))
        try await store.submit(state(["kept"])).value()
        #expect(try saved(store) == ["kept"])
        #expect(store.health == .ok)
    }

    @Test("A state directory that disappeared is created again by the next save")
    func directoryRecreated() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let store = try StateStore(directory: dir)
        try FileManager.default.removeItem(atPath: dir)
        try await store.submit(state(["a"])).value()
        #expect(try saved(store) == ["a"])
    }
}
