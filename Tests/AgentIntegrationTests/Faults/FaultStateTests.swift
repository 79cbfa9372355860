import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// The real agent with `--state-dir` on a small tmpfs that fills up (root: it mounts).
@Suite(.serialized, .enabled(if: RootRequirement.check("FaultStateTests") || RootRequirement.mustRun, "needs root to mount a tmpfs"))
struct FaultStateTests {
    let dir = NSTemporaryDirectory() + "traceplane-state-\(UUID().uuidString)"

    init() throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    func mountTmpfs(kib: Int) throws {
        guard mount("tmpfs", dir, "tmpfs", 0, "size=\(kib)k,mode=0700") == 0 else {
            throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
        }
    }

    func unmount() {
        umount2(dir, Int32(MNT_DETACH))
        try? FileManager.default.removeItem(atPath: dir)
    }

    /// Fills the file system with one file until the kernel says ENOSPC.
    func fill(_ path: String) -> Int {
        let fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        defer { close(fd) }
        let block = [UInt8](repeating: 0x55, count: 4096)
        var written = 0
        while true {
            let n = block.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
            if n <= 0 { break }
            written += n
        }
        fsync(fd)
        return written
    }

    func savedNames(_ state: String) throws -> [String] {
        let data = try #require(FileManager.default.contents(atPath: state + "/probes.json"))
        return try ReportJSON.decoder().decode(PersistedState.self, from: data).probes.compactMap(\.spec.name)
    }

    func metric(_ base: String, _ name: String) throws -> Double? {
        let text = try CurlClient.run("GET", "\(base)/metrics").body
        let line = text.split(separator: "\n").first { $0.hasPrefix(name + " ") }
        return line.flatMap { Double($0.split(separator: " ").last ?? "") }
    }

    @Test("A full state disk: 507 with Retry-After and nothing changed (kernel included), logged, /readyz 503, counted; it recovers by itself")
    func fullDisk() async throws {
        try mountTmpfs(kib: 256)
        defer { unmount() }
        let state = dir + "/state"
        let agent = try AgentProcess(["--listen", "127.0.0.1:0", "--state-dir", state])
        #expect(await agent.waitForListening(), "agent did not start: \(agent.log)")
        #expect(await agent.waitForOutput(matching: "ready: 0 probes") != nil, "\(agent.log)")
        let base = "http://127.0.0.1:\(agent.port)"

        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/kept", json: #"{"target":{"type":"syscall","name":"read"}}"#).status == 201)
        #expect(try savedNames(state) == ["kept"])
        #expect(try metric(base, "traceplane_state_save_failures_total") == 0)
        let programsBefore = KernelCensus.programIDs()

        let filled = fill(dir + "/filler")
        #expect(filled > 0)
        let refused = try CurlClient.run("PUT", "\(base)/v1/probes/new", json: #"{"target":{"type":"syscall","name":"write"},"mechanisms":["tracepoint"]}"#)
        #expect(refused.status == 507, "\(refused.status) \(refused.body)")
        #expect(refused.headers.lowercased().contains("retry-after: 5"))
        #expect(refused.json?["type"] as? String == "https://traceplane.dev/problems/state-not-saved")
        #expect(refused.json?["errno"] as? String == "ENOSPC")
        let delete = try CurlClient.run("DELETE", "\(base)/v1/probes/kept")
        #expect(delete.status == 507)

        // Nothing changed: the list, the file, and the kernel (the refused probe's own
        // tracepoint programs were detached again).
        let listed = try #require(CurlClient.run("GET", "\(base)/v1/probes").json?["probes"] as? [[String: Any]])
        #expect(listed.map { $0["name"] as? String } == ["kept"])
        #expect(listed.first?["state"] as? String == "active")
        #expect(try savedNames(state) == ["kept"])
        let leftover = await KernelCensus.settledPrograms(excluding: programsBefore)
        #expect(leftover.isEmpty, "the refused probe left programs in the kernel: \(leftover.sorted())")

        let ready = try CurlClient.run("GET", "\(base)/readyz")
        #expect(ready.status == 503 && ready.body.contains("ENOSPC"), "\(ready.body)")
        #expect((try metric(base, "traceplane_state_save_failures_total") ?? 0) >= 2)
        #expect(agent.log.contains("saving the desired probes to \(state)/probes.json failed"), "\(agent.log)")

        // Space comes back: the agent saves by itself (retried every second) and takes changes again.
        try FileManager.default.removeItem(atPath: dir + "/filler")
        #expect(await agent.waitForOutput(matching: #"works again \(it failed from"#) != nil, "\(agent.log)")
        let readyAgain = try CurlClient.run("GET", "\(base)/readyz")
        #expect(readyAgain.status == 200, "\(readyAgain.body)")
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/new", json: #"{"target":{"type":"syscall","name":"write"},"mechanisms":["tracepoint"]}"#).status == 201)
        #expect(try savedNames(state) == ["kept", "new"])

        // What was acknowledged survives a restart.
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
        let second = try AgentProcess(["--listen", "127.0.0.1:0", "--state-dir", state])
        #expect(await second.waitForListening(), "\(second.log)")
        #expect(await second.waitForOutput(matching: "ready: 2 probes") != nil, "\(second.log)")
        let restored = try #require(CurlClient.run("GET", "http://127.0.0.1:\(second.port)/v1/probes").json?["probes"] as? [[String: Any]])
        #expect(restored.map { $0["name"] as? String } == ["kept", "new"])
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == 0)
    }
}
