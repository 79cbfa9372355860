import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// The fault suite, state directory: the real agent with `--state-dir` on a file system that
/// fills up, turns read-only, or loses the directory or the file (root: it mounts). Never a
/// 2xx without a durable save; recovery by itself when the fault goes; nothing acknowledged
/// lost (a restart brings back exactly what was acknowledged).
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

    /// The saved names, or nil while there is no readable state file (records no issue).
    func savedNow(_ state: String) -> [String]? {
        guard let data = FileManager.default.contents(atPath: state + "/probes.json") else { return nil }
        return (try? ReportJSON.decoder().decode(PersistedState.self, from: data))?.probes.compactMap(\.spec.name)
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

    func start(_ state: String) async throws -> (AgentProcess, String) {
        let agent = try await AgentProcess.started(["--state-dir", state])
        return (agent, "http://127.0.0.1:\(agent.port)")
    }

    func put(_ base: String, _ name: String, _ syscall: String = "getppid") throws -> CurlClient.Reply {
        try CurlClient.run("PUT", "\(base)/v1/probes/\(name)", json: #"{"target":{"type":"syscall","name":"\#(syscall)"},"mechanisms":["tracepoint"]}"#)
    }

    func listed(_ base: String) throws -> [String] {
        let probes = try #require(CurlClient.run("GET", "\(base)/v1/probes").json?["probes"] as? [[String: Any]])
        return probes.compactMap { $0["name"] as? String }
    }

    /// Stops `agent` and starts another on `state`: what comes back is what was durable.
    func restartedNames(_ agent: AgentProcess, _ state: String) async throws -> [String] {
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)
        let (second, base) = try await start(state)
        let names = try listed(base)
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == 0)
        return names
    }

    @Test("A read-only remount mid-run: 503 state-not-saved (EROFS) with Retry-After, nothing changed (kernel included), /readyz 503; writable again: it recovers by itself")
    func readOnlyRemount() async throws {
        try mountTmpfs(kib: 1024)
        defer { unmount() }
        let state = dir + "/state"
        let (agent, base) = try await start(state)
        #expect(try put(base, "kept").status == 201)
        #expect(try savedNames(state) == ["kept"])
        let before = KernelCensus.objects()

        #expect(mount("tmpfs", dir, "tmpfs", UInt(MS_REMOUNT | MS_RDONLY), "size=1024k,mode=0700") == 0, "remount ro: \(String(cString: strerror(errno)))")
        var remounted = true
        defer { if remounted { _ = mount("tmpfs", dir, "tmpfs", UInt(MS_REMOUNT), "size=1024k,mode=0700") } }
        let refused = try put(base, "new", "getpgid")
        #expect(refused.status == 503, "\(refused.status) \(refused.body)")
        #expect(refused.headers.lowercased().contains("retry-after: 5"), "\(refused.headers)")
        #expect(refused.json?["type"] as? String == "https://traceplane.dev/problems/state-not-saved")
        #expect(refused.json?["errno"] as? String == "EROFS", "\(refused.body)")
        let replace = try CurlClient.run("PUT", "\(base)/v1/probes/kept", json: #"{"target":{"type":"syscall","name":"getppid"},"mechanisms":["tracepoint"],"labels":{"v":"2"}}"#)
        #expect(replace.status == 503, "\(replace.body)")
        #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/kept").status == 503)
        #expect(try listed(base) == ["kept"])
        let kept = try #require(CurlClient.run("GET", "\(base)/v1/probes/kept").json)
        #expect((kept["labels"] as? [String: String])?["v"] == nil, "the refused replacement must not have been applied: \(kept)")
        let leftover = await KernelCensus.settledObjects(since: before)
        #expect(leftover.isEmpty, "refused changes left objects in the kernel: \(leftover)")
        let ready = try CurlClient.run("GET", "\(base)/readyz")
        #expect(ready.status == 503 && ready.body.contains("EROFS"), "\(ready.body)")

        #expect(mount("tmpfs", dir, "tmpfs", UInt(MS_REMOUNT), "size=1024k,mode=0700") == 0)
        remounted = false
        #expect(await agent.waitForOutput(matching: #"works again \(it failed from"#) != nil, "\(agent.log)")
        #expect(try CurlClient.run("GET", "\(base)/readyz").status == 200)
        #expect(try put(base, "new", "getpgid").status == 201)
        #expect(try savedNames(state) == ["kept", "new"])
        #expect(try await restartedNames(agent, state) == ["kept", "new"])
    }

    @Test("The state directory deleted mid-run (and its parent): the agent notices within seconds, makes them again and saves everything acknowledged; later changes are saved there")
    func directoryDeleted() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let state = dir + "/nested/state"
        try FileManager.default.createDirectory(atPath: dir + "/nested", withIntermediateDirectories: true)
        let (agent, base) = try await start(state)
        #expect(try put(base, "a").status == 201)
        #expect(try put(base, "b", "getpgid").status == 201)

        try FileManager.default.removeItem(atPath: state)
        #expect(await agent.waitForOutput(matching: "state: the state directory \(state) was removed; saving the desired probes again") != nil, "\(agent.log)")
        #expect(try await eventually { self.savedNow(state) == ["a", "b"] }, "the state was not saved again: \(agent.log)")

        try FileManager.default.removeItem(atPath: dir + "/nested")
        #expect(try await eventually { self.savedNow(state) == ["a", "b"] }, "the state was not saved again after its parent went: \(agent.log)")
        var info = stat()
        #expect(stat(state, &info) == 0 && info.st_mode & 0o777 == 0o700, "made again with mode 0700")
        #expect(try put(base, "c", "getpid").status == 201)
        #expect(try savedNames(state) == ["a", "b", "c"])
        #expect(try await restartedNames(agent, state) == ["a", "b", "c"])
    }

    @Test("The state file replaced by a directory mid-run: saves fail (EISDIR), changes get 503 and nothing changes; the directory removed: it saves by itself")
    func fileReplacedByDirectory() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let state = dir + "/state"
        let (agent, base) = try await start(state)
        #expect(try put(base, "a").status == 201)
        try FileManager.default.removeItem(atPath: state + "/probes.json")
        try FileManager.default.createDirectory(atPath: state + "/probes.json/inside", withIntermediateDirectories: true)
        #expect(await agent.waitForOutput(matching: "probes.json was replaced by a directory") != nil
                    || agent.log.contains("probes.json was removed"), "\(agent.log)")
        #expect(try await eventually { (try? CurlClient.run("GET", "\(base)/readyz").status) == 503 })
        let refused = try put(base, "b", "getpgid")
        #expect(refused.status == 503 && refused.json?["errno"] as? String == "EISDIR", "\(refused.status) \(refused.body)")
        #expect(try listed(base) == ["a"])

        try FileManager.default.removeItem(atPath: state + "/probes.json")
        #expect(await agent.waitForOutput(matching: #"works again \(it failed from"#) != nil, "\(agent.log)")
        #expect(try savedNames(state) == ["a"])
        #expect(try put(base, "b", "getpgid").status == 201)
        #expect(try await restartedNames(agent, state) == ["a", "b"])
    }

    @Test("The state file replaced by a FIFO: mid-run it is saved over; at start-up it is moved aside without being opened (no hang)")
    func fileReplacedByFIFO() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let state = dir + "/state"
        let (agent, base) = try await start(state)
        #expect(try put(base, "a").status == 201)
        try FileManager.default.removeItem(atPath: state + "/probes.json")
        #expect(mkfifo(state + "/probes.json", 0o600) == 0)
        #expect(await agent.waitForOutput(matching: "probes.json was replaced by a FIFO; saving") != nil
                    || agent.log.contains("probes.json was removed"), "\(agent.log)")
        #expect(try await eventually { self.savedNow(state) == ["a"] }, "\(agent.log)")
        agent.signal(SIGTERM)
        #expect(await agent.waitForExit() == 0)

        // A FIFO at start-up: reading it would wait for a writer forever.
        try FileManager.default.removeItem(atPath: state + "/probes.json")
        #expect(mkfifo(state + "/probes.json", 0o600) == 0)
        let (second, base2) = try await start(state)
        #expect(second.log.contains("is not a regular file but a FIFO"), "\(second.log)")
        let aside = try FileManager.default.contentsOfDirectory(atPath: state).filter { $0.hasPrefix("probes.json.corrupt-") }
        #expect(aside.count == 1, "\(aside)")
        #expect(try listed(base2) == [])
        #expect(try put(base2, "b", "getpgid").status == 201)
        #expect(try savedNames(state) == ["b"])
        second.signal(SIGTERM)
        #expect(await second.waitForExit() == 0)
    }

    /// Polls `condition` every 100 ms for up to `seconds`.
    func eventually(_ seconds: Double = 15, _ condition: @escaping () throws -> Bool) async throws -> Bool {
        let end = ContinuousClock.now + .milliseconds(Int(seconds * 1000))
        while ContinuousClock.now < end {
            if try condition() { return true }
            try await Task.sleep(for: .milliseconds(100))
        }
        return try condition()
    }
}
