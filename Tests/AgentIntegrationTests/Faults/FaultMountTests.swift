import CLibBPF
import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// Mounts going away under the real agent while its probes run: tracefs, cgroup2 and the
/// bpffs of `--pin-dir`, each unmounted inside the agent's own mount namespace (the agent
/// runs through `unshare --mount --propagation private`, which execs it: the host keeps
/// its mounts), and `--pin-dir` on file systems that are not bpffs. Counted against a
/// workload of known calls (tests/faults/fault_workload.c), with the kernel census and
/// the agent's /proc/PID/mountinfo as oracles (root: BPF and mounts).
@Suite(.serialized, .enabled(if: RootRequirement.check("FaultMountTests") || RootRequirement.mustRun, "needs root for BPF and mounts"))
struct FaultMountTests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    static let privateNamespace = ["/usr/bin/unshare", "--mount", "--propagation", "private", "--"]

    @Test("tracefs unmounted under running probes: they count on exactly, a probe that needs tracefs is refused naming it (nothing left in the kernel), one that does not attaches; a capability refresh mounts it back and the refused probes attach and count")
    func tracefsUnmounted() async throws {
        let before = KernelCensus.objects()
        let agent = try await MountAgent.start(wrapper: Self.privateNamespace)
        defer { agent.kill() }
        let tracefs = "/sys/kernel/tracing"
        #expect(agent.mounts().contains { $0.point == tracefs && $0.type == "tracefs" }, "no tracefs in the agent's namespace: \(agent.mounts())")
        let hub = #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\#(Workload.comm)"}}"#
        let own = #"{"target":{"type":"syscall","name":"getppid"},"mechanisms":["tracepoint"],"filter":{"comm":"\#(Workload.comm)"}}"#
        let put1 = try agent.request("PUT", "/v1/probes/hub", hub)
        #expect(put1.status == 201 && put1.json?["mechanism"] as? String == "tp_btf", "\(put1.status) \(put1.body)")
        let put2 = try agent.request("PUT", "/v1/probes/own", own)
        #expect(put2.status == 201 && put2.json?["mechanism"] as? String == "tracepoint", "\(put2.status) \(put2.body)")

        let work = try Workload()
        try work.command("g 1000")
        #expect(try agent.calls("hub") == 1000)
        #expect(try agent.calls("own") == 1000)

        // Gone from the agent's namespace only: the host (this test's namespace) keeps it.
        let umount = try agent.inNamespace(["/usr/bin/umount", tracefs])
        try #require(umount.status == 0, "umount \(tracefs): \(umount.output)")
        #expect(!agent.mounts().contains { $0.point == tracefs }, "still mounted in the agent's namespace: \(agent.mounts())")
        #expect(Mounts.of("self").contains { $0.point == tracefs && $0.type == "tracefs" }, "the host lost tracefs")

        try work.command("g 500")
        #expect(try agent.calls("hub") == 1500, "the hub probe after tracefs went away")
        #expect(try agent.calls("own") == 1500, "the perf-tracepoint probe after tracefs went away")

        // A per-syscall tracepoint needs its id from tracefs: a 422 whose attempt says tracefs is gone.
        let census = KernelCensus.objects()
        let refused = try agent.request("PUT", "/v1/probes/needs-tracefs", #"{"target":{"type":"syscall","name":"getpid"},"mechanisms":["tracepoint"]}"#)
        #expect(refused.status == 422, "\(refused.status) \(refused.body)")
        let attempts = refused.json?["attempts"] as? [[String: Any]] ?? []
        #expect(attempts.count == 1 && attempts.allSatisfy { ($0["message"] as? String ?? "").contains("tracefs is not mounted") && ($0["message"] as? String ?? "").contains("nothing is mounted at \(tracefs) any more") }, "\(refused.body)")
        // Argument names come from the tracepoint format: a key by argument name is refused
        // (400, as every spec whose keys do not resolve), saying tracefs is missing.
        let keyed = try agent.request("PUT", "/v1/probes/needs-format", #"{"target":{"type":"syscall","name":"write"},"aggregate":{"by":["arg:fd"]}}"#)
        #expect(keyed.status == 400, "\(keyed.status) \(keyed.body)")
        #expect(keyed.body.contains("tracefs is not mounted at \(tracefs)"), "\(keyed.body)")
        let left = await KernelCensus.settledObjects(since: census, seconds: 30)
        #expect(left.isEmpty, "the refused probes left objects in the kernel: \(left)")
        // The shared hook needs no tracefs: a syscall probe on the default chain attaches.
        let plain = try agent.request("PUT", "/v1/probes/plain", #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\#(Workload.comm)"}}"#)
        #expect(plain.status == 201 && plain.json?["mechanism"] as? String == "tp_btf", "\(plain.status) \(plain.body)")
        #expect(try agent.request("GET", "/healthz").status == 200)

        // A refresh finds tracefs missing and mounts it again (in the agent's namespace).
        let refresh = try agent.request("POST", "/v1/capabilities/refresh")
        #expect(refresh.status == 200, "\(refresh.body)")
        let fact = (refresh.json?["kernel"] as? [String: Any])?["tracefs"] as? [String: Any]
        #expect(fact?["mounted"] as? Bool == true && fact?["mounted_by_agent"] as? Bool == true, "\(String(describing: fact))")
        #expect(agent.mounts().contains { $0.point == tracefs && $0.type == "tracefs" }, "\(agent.mounts())")
        let again = try agent.request("PUT", "/v1/probes/needs-tracefs", #"{"target":{"type":"syscall","name":"getppid"},"mechanisms":["tracepoint"],"filter":{"comm":"\#(Workload.comm)"}}"#)
        #expect(again.status == 201, "\(again.status) \(again.body)")
        // The format refused while tracefs was away is read again now.
        let keyedAgain = try agent.request("PUT", "/v1/probes/needs-format", #"{"target":{"type":"syscall","name":"write"},"aggregate":{"by":["arg:fd"]},"filter":{"comm":"\#(Workload.comm)"}}"#)
        #expect(keyedAgain.status == 201, "\(keyedAgain.status) \(keyedAgain.body)")
        try work.command("g 250")
        #expect(try agent.calls("hub") == 1750)
        #expect(try agent.calls("own") == 1750)
        #expect(try agent.calls("plain") == 250)
        #expect(try agent.calls("needs-tracefs") == 250)
        work.finish()

        for name in ["hub", "own", "plain", "needs-tracefs", "needs-format"] { #expect(try agent.request("DELETE", "/v1/probes/\(name)").status == 204) }
        await agent.stop()
        let leaked = await KernelCensus.settledObjects(since: before)
        #expect(leaked.isEmpty, "left in the kernel: \(leaked)")
    }

    @Test("cgroup2 unmounted under probes keyed by cgroup and filtered by one: counts go on, keys keep their paths (not marked removed), a cgroup made meanwhile shows its id; new cgroup filters and keys are a 422 naming the missing mount; the report says so on refresh; after re-mounting it all works again")
    func cgroup2Unmounted() async throws {
        let before = KernelCensus.objects()
        let agent = try await MountAgent.start(wrapper: Self.privateNamespace)
        defer { agent.kill() }
        let mount = try #require(Mounts.of("self").first { $0.type == "cgroup2" }?.point, "no cgroup2 mount here")
        let name = "/tp-fault-\(UUID().uuidString.prefix(8).lowercased())"
        let first = mount + name, second = mount + name + "-later"
        try FileManager.default.createDirectory(atPath: first, withIntermediateDirectories: false)
        defer { rmdir(first); rmdir(second) }
        let keyed = #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\#(Workload.comm)"},"aggregate":{"by":["cgroup"]}}"#
        let filtered = #"{"target":{"type":"syscall","name":"getppid"},"filter":{"cgroup":"\#(name)"}}"#
        #expect(try agent.request("PUT", "/v1/probes/by-cgroup", keyed).status == 201)
        #expect(try agent.request("PUT", "/v1/probes/in-cgroup", filtered).status == 201)

        let work = try Workload()
        try Self.move(work.pid, into: first)
        try work.command("g 300")
        #expect(try agent.calls("in-cgroup") == 300)
        #expect(try Self.keys(agent) == [name: Key(calls: 300, removed: false)])

        let umount = try agent.inNamespace(["/usr/bin/umount", mount])
        try #require(umount.status == 0, "umount \(mount): \(umount.output)")
        #expect(!agent.mounts().contains { $0.type == "cgroup2" }, "\(agent.mounts())")
        #expect(Mounts.of("self").contains { $0.point == mount && $0.type == "cgroup2" }, "the host lost cgroup2")
        let unmountedAt = ContinuousClock.now

        try work.command("g 200")
        #expect(try agent.calls("in-cgroup") == 500, "the filter after cgroup2 went away")
        // A cgroup made now, whose path the agent cannot find: counted under its id.
        try FileManager.default.createDirectory(atPath: second, withIntermediateDirectories: false)
        let secondID = try #require(try FileManager.default.attributesOfItem(atPath: second)[.systemFileNumber] as? Int)
        let other = try Workload()
        try Self.move(other.pid, into: second)
        try other.command("g 50")
        // Past the 5 s after which a cached path is checked again: the mount is gone, which
        // says nothing about the cgroup, so it keeps its path and is not marked removed.
        try await Task.sleep(until: unmountedAt + .seconds(6))
        let keysWhileUnmounted = try Self.keys(agent)
        #expect(keysWhileUnmounted[name] == Key(calls: 500, removed: false), "\(keysWhileUnmounted)")
        #expect(keysWhileUnmounted["id:\(secondID)"] == Key(calls: 50, removed: false), "\(keysWhileUnmounted)")
        #expect(keysWhileUnmounted.count == 2, "\(keysWhileUnmounted)")
        #expect(try agent.calls("by-cgroup") == 550)

        // New filters and keys need the mount: a 422 that says it is gone.
        let census = KernelCensus.objects()
        for (probe, body) in [("filter-later", filtered), ("key-later", keyed)] {
            let refused = try agent.request("PUT", "/v1/probes/\(probe)", body)
            #expect(refused.status == 422, "\(probe): \(refused.status) \(refused.body)")
            #expect(refused.body.contains("cgroup2 is not mounted at \(mount) any more"), "\(probe): \(refused.body)")
        }
        let left = await KernelCensus.settledObjects(since: census, seconds: 30)
        #expect(left.isEmpty, "the refused probes left objects in the kernel: \(left)")
        let refreshed = try agent.request("POST", "/v1/capabilities/refresh")
        let fact = (refreshed.json?["kernel"] as? [String: Any])?["cgroup2"] as? [String: Any]
        #expect(fact?["layout"] as? String == "none" && (fact?["error"] as? String)?.contains("cgroup") == true, "\(String(describing: fact))")
        #expect(try agent.request("GET", "/healthz").status == 200)

        // Mounted again (the report catches up on a refresh): new filters attach, every path shows.
        let remount = try agent.inNamespace(["/usr/bin/mount", "-t", "cgroup2", "none", mount])
        try #require(remount.status == 0, "mount: \(remount.output)")
        let back = ((try agent.request("POST", "/v1/capabilities/refresh").json?["kernel"] as? [String: Any])?["cgroup2"] as? [String: Any])
        #expect(back?["path"] as? String == mount && back?["layout"] as? String != "none", "\(String(describing: back))")
        #expect(try agent.request("PUT", "/v1/probes/filter-later", filtered).status == 201)
        try work.command("g 100")
        try other.command("g 10")
        #expect(try agent.calls("in-cgroup") == 600)
        #expect(try agent.calls("filter-later") == 100)
        let keysAfter = try Self.keys(agent)
        #expect(keysAfter[name] == Key(calls: 600, removed: false), "\(keysAfter)")
        #expect(keysAfter[name + "-later"] == Key(calls: 60, removed: false), "\(keysAfter)")
        work.finish()
        other.finish()

        for probe in ["by-cgroup", "in-cgroup", "filter-later"] { #expect(try agent.request("DELETE", "/v1/probes/\(probe)").status == 204) }
        await agent.stop()
        let leaked = await KernelCensus.settledObjects(since: before)
        #expect(leaked.isEmpty, "left in the kernel: \(leaked)")
    }

    @Test("bpffs of --pin-dir unmounted under pinned probes: they count on (their links are held by fds), new probes and hub members are refused with a 503 that says the pins are gone and what to do (never a 2xx claiming pins), nothing half-made stays; after re-mounting it says the same until a restart, which attaches everything anew")
    func bpffsUnmounted() async throws {
        let base = NSTemporaryDirectory() + "fault-bpffs-\(UUID().uuidString.prefix(8))"
        let bpffs = base + "/bpffs", state = base + "/state", pins = bpffs + "/pins"
        try FileManager.default.createDirectory(atPath: bpffs, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: base) }
        // bpffs mounted in the agent's namespace only: unmounted there, it is gone for good.
        let wrapper = Self.privateNamespace + ["/bin/sh", "-c", #"mount -t bpf -o mode=0700 bpf \#(bpffs) && exec "$0" "$@""#]
        let before = KernelCensus.objects()
        let agent = try await MountAgent.start(["--state-dir", state, "--pin-dir", pins], wrapper: wrapper)
        defer { agent.kill() }
        let seen = "/proc/\(agent.pid)/root" + pins   // the pin directory as the agent sees it
        let hub = #"{"target":{"type":"syscall","name":"getppid"},"filter":{"comm":"\#(Workload.comm)"}}"#
        let own = #"{"target":{"type":"syscall","name":"getppid"},"mechanisms":["tracepoint"],"filter":{"comm":"\#(Workload.comm)"}}"#
        #expect(try agent.request("PUT", "/v1/probes/pinned-hub", hub).status == 201)
        #expect(try agent.request("PUT", "/v1/probes/pinned-own", own).status == 201)
        #expect(FileManager.default.fileExists(atPath: seen + "/pinned-own/g1/link_0"), "\(Self.tree(seen))")
        #expect(FileManager.default.fileExists(atPath: seen + "/_hub-syscallHubBTF"), "\(Self.tree(seen))")
        let work = try Workload()
        try work.command("g 1000")
        #expect(try agent.calls("pinned-hub") == 1000)
        #expect(try agent.calls("pinned-own") == 1000)

        // The agent holds its pin directory open (its lock): only a lazy unmount takes it away.
        let busy = try agent.inNamespace(["/usr/bin/umount", bpffs])
        #expect(busy.status != 0 && busy.output.contains("busy"), "umount: \(busy.status) \(busy.output)")
        let lazy = try agent.inNamespace(["/usr/bin/umount", "-l", bpffs])
        try #require(lazy.status == 0, "umount -l: \(lazy.output)")
        #expect(!agent.mounts().contains { $0.point == bpffs }, "\(agent.mounts())")
        #expect(!FileManager.default.fileExists(atPath: seen), "the pins are still visible: \(Self.tree(seen))")

        try work.command("g 500")
        #expect(try agent.calls("pinned-hub") == 1500, "the hub probe after its pins went away")
        #expect(try agent.calls("pinned-own") == 1500, "the own-object probe after its pins went away")

        // Nothing can be pinned: refused before anything is attached or written.
        let census = KernelCensus.objects()
        let manifestsBefore = Set((try? FileManager.default.contentsOfDirectory(atPath: state + "/pins")) ?? [])
        for (probe, body) in [("later-own", #"{"target":{"type":"syscall","name":"getpid"},"mechanisms":["tracepoint"]}"#),
                              ("later-hub", #"{"target":{"type":"syscall","name":"getpid"}}"#)] {
            let refused = try agent.request("PUT", "/v1/probes/\(probe)", body)
            #expect(refused.status == 503 && refused.headers.lowercased().contains("retry-after:"), "\(probe): \(refused.status) \(refused.body)")
            #expect(refused.json?["type"] as? String == "https://traceplane.dev/problems/state-not-saved", "\(refused.body)")
            let detail = refused.json?["detail"] as? String ?? ""
            #expect(detail.contains("\(pins) is not on bpffs any more") && detail.contains("restart the agent"), "\(probe): \(detail)")
        }
        #expect(try agent.request("GET", "/v1/probes/later-own").status == 404)
        #expect(try agent.request("GET", "/v1/probes/later-hub").status == 404)
        #expect(Set((try? FileManager.default.contentsOfDirectory(atPath: state + "/pins")) ?? []) == manifestsBefore)
        #expect(((try? FileManager.default.contentsOfDirectory(atPath: bpffs)) ?? ["?"]).isEmpty, "made under the unmounted directory: \(Self.tree(bpffs))")
        let left = await KernelCensus.settledObjects(since: census, seconds: 30)
        #expect(left.isEmpty, "the refused probes left objects in the kernel: \(left)")
        #expect(try agent.request("GET", "/healthz").status == 200)

        // A fresh bpffs there holds none of the old pins: still refused, saying the same.
        let remount = try agent.inNamespace(["/usr/bin/mount", "-t", "bpf", "-o", "mode=0700", "bpf", bpffs])
        try #require(remount.status == 0, "mount: \(remount.output)")
        let stillRefused = try agent.request("PUT", "/v1/probes/later-own", #"{"target":{"type":"syscall","name":"getpid"},"mechanisms":["tracepoint"]}"#)
        #expect(stillRefused.status == 503 && (stillRefused.json?["detail"] as? String ?? "").contains("restart the agent"), "\(stillRefused.status) \(stillRefused.body)")
        try work.command("g 100")
        #expect(try agent.calls("pinned-hub") == 1600)
        #expect(try agent.calls("pinned-own") == 1600)
        work.finish()

        // SIGTERM leaves pinned probes to their pins, which are gone: the kernel frees them.
        await agent.stop()
        let leaked = await KernelCensus.settledObjects(since: before)
        #expect(leaked.isEmpty, "left in the kernel: \(leaked)")
    }

    @Test("serve --pin-dir on tmpfs or on ext4 refuses to start: one line saying why, a non-zero exit, nothing in the kernel, nothing made")
    func pinDirNotOnBPFFS() async throws {
        let base = NSTemporaryDirectory() + "fault-pindir-\(UUID().uuidString.prefix(8))"
        let tmpfs = base + "/tmpfs", ext4 = base + "/ext4"
        try FileManager.default.createDirectory(atPath: tmpfs, withIntermediateDirectories: true)
        try FileManager.default.createDirectory(atPath: ext4, withIntermediateDirectories: true)
        try #require(mount("tmpfs", tmpfs, "tmpfs", 0, "size=1m") == 0, "mount tmpfs: \(errno)")
        defer {
            umount2(tmpfs, Int32(MNT_DETACH))
            try? FileManager.default.removeItem(atPath: base)
        }
        var magic = 0
        #expect(tp_fs_magic(ext4, &magic) == 0 && magic == 0xEF53, "\(ext4) is not on ext4 (magic \(String(format: "0x%x", magic)))")
        #expect(tp_fs_magic(tmpfs, &magic) == 0 && magic == 0x0102_1994, "\(tmpfs) is not tmpfs")
        let before = KernelCensus.objects()
        for (dir, magic) in [(tmpfs, "0x1021994"), (ext4, "0xef53")] {
            let started = ContinuousClock.now
            let run = try Command.run(AgentProcess.executable, ["serve", "--listen", "127.0.0.1:0", "--state-dir", base + "/state", "--pin-dir", dir + "/pins"])
            let lines = run.output.split(separator: "\n").filter { !$0.trimmingCharacters(in: .whitespaces).isEmpty }
            print("--pin-dir on \(dir): exit \(run.status) after \(ContinuousClock.now - started): \(run.output)")
            #expect(run.status != 0, "\(dir): exit \(run.status)")
            #expect(lines.count == 1, "\(dir): not one line: \(run.output)")
            #expect(lines.first?.contains("--pin-dir \(dir)/pins is not on bpffs (\(dir) is on a file system of magic \(magic))") == true, "\(run.output)")
            #expect(!run.output.contains("listening on"), "\(run.output)")
            #expect(!FileManager.default.fileExists(atPath: dir + "/pins"), "\(dir)/pins was made")
        }
        let left = await KernelCensus.settledObjects(since: before, seconds: 10)
        #expect(left.isEmpty, "a refused start left objects in the kernel: \(left)")
    }

    /// Every path under `dir` (for messages).
    static func tree(_ dir: String) -> [String] {
        (FileManager.default.enumerator(atPath: dir)?.allObjects as? [String] ?? []).sorted()
    }

    struct Key: Equatable, CustomStringConvertible {
        var calls: Int
        var removed: Bool
        var description: String { "\(calls)\(removed ? " removed" : "")" }
    }

    /// The by-cgroup probe's keys: path (or `id:N` without one) → calls and removed.
    fileprivate static func keys(_ agent: MountAgent) throws -> [String: Key] {
        let aggregate = try #require(try agent.metrics("by-cgroup")["aggregate"] as? [String: Any])
        var keys: [String: Key] = [:]
        for entry in aggregate["keys"] as? [[String: Any]] ?? [] {
            let path = (entry["key"] as? [String: Any])?["cgroup"] as? String
            let label = path ?? "id:\(entry["cgroup_id"] as? Int ?? -1)"
            keys[label] = Key(calls: entry["calls"] as? Int ?? -1, removed: entry["removed"] as? Bool ?? false)
        }
        return keys
    }

    static func move(_ pid: Int32, into cgroup: String) throws {
        try "\(pid)\n".write(toFile: cgroup + "/cgroup.procs", atomically: false, encoding: .utf8)
        let line = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8).split(separator: "\n").first { $0.hasPrefix("0::") }
        #expect(line.map { cgroup.hasSuffix(String($0.dropFirst(3))) } == true, "\(pid) is in \(String(describing: line))")
    }
}

// MARK: - Helpers

fileprivate struct FaultFailure: Error, CustomStringConvertible { var description: String }

/// The agent binary in a mount namespace of its own, on an ephemeral port.
fileprivate final class MountAgent {
    let process: AgentProcess
    var pid: Int32 { process.pid }

    private init(_ process: AgentProcess) { self.process = process }

    static func start(_ arguments: [String] = [], wrapper: [String]) async throws -> MountAgent {
        let process = try AgentProcess(["--listen", "127.0.0.1:0"] + arguments, wrapper: wrapper)
        let agent = MountAgent(process)
        try #require(await process.waitForListening(seconds: 60), "agent did not start: \(process.log)")
        try #require(await process.waitForOutput(matching: "ready: ") != nil, "agent never got ready: \(process.log)")
        // unshare execs the agent: the pid is the agent's, and so is the namespace.
        let comm = (try? String(contentsOfFile: "/proc/\(process.pid)/comm", encoding: .utf8)) ?? ""
        try #require(comm == "traceplane\n", "pid \(process.pid) is \(comm.debugDescription), not the agent")
        try #require(Mounts.namespace(process.pid) != Mounts.namespace(getpid()), "the agent shares this test's mount namespace")
        return agent
    }

    func request(_ method: String, _ path: String, _ json: String? = nil) throws -> CurlClient.Reply {
        try CurlClient.run(method, "http://127.0.0.1:\(process.port)\(path)", json: json)
    }

    /// A probe's calls (fails the test when its metrics cannot be read).
    func calls(_ name: String) throws -> Int {
        let reply = try request("GET", "/v1/probes/\(name)/metrics")
        return try #require(reply.json?["calls"] as? Int, "metrics of \(name): \(reply.status) \(reply.body)")
    }

    func metrics(_ name: String) throws -> [String: Any] {
        let reply = try request("GET", "/v1/probes/\(name)/metrics")
        return try #require(reply.json, "metrics of \(name): \(reply.status) \(reply.body)")
    }

    /// The mounts of the agent's namespace (its /proc/PID/mountinfo).
    func mounts() -> [Mounts.Entry] { Mounts.of("\(pid)") }

    /// Runs `command` in the agent's mount namespace.
    func inNamespace(_ command: [String]) throws -> (status: Int32, output: String) {
        try Command.run("/usr/bin/nsenter", ["-t", "\(pid)", "-m", "--"] + command)
    }

    func stop() async {
        process.signal(SIGTERM)
        let status = await process.waitForExit(seconds: 30)
        #expect(status == 0, "the agent exited \(String(describing: status)) on SIGTERM: \(process.log)")
    }

    func kill() { if process.isRunning { process.signal(SIGKILL) } }
}

fileprivate enum Mounts {
    struct Entry: CustomStringConvertible {
        var point: String
        var type: String
        var description: String { "\(point) (\(type))" }
    }

    /// /proc/<who>/mountinfo: mount points and file system types.
    static func of(_ who: String) -> [Entry] {
        let text = (try? String(contentsOfFile: "/proc/\(who)/mountinfo", encoding: .utf8)) ?? ""
        return text.split(separator: "\n").compactMap { line in
            let halves = line.split(separator: " - ", maxSplits: 1)
            let fields = halves.first?.split(separator: " ") ?? []
            guard halves.count == 2, fields.count >= 5 else { return nil }
            return Entry(point: String(fields[4]), type: String(halves[1].split(separator: " ").first ?? ""))
        }
    }

    static func namespace(_ pid: Int32) -> String {
        (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(pid)/ns/mnt")) ?? ""
    }
}

/// tests/faults/fault_workload.c, built once per test process with gcc as `tp-faultwork`
/// (also its comm): getppid calls on command, each answered with "ok".
fileprivate final class Workload {
    static let comm = "tp-faultwork"
    static let binary: Result<String, FaultFailure> = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let dir = NSTemporaryDirectory() + "fault-mount-\(getpid())"
        let out = "\(dir)/\(comm)"
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            let gcc = try Command.run("/usr/bin/gcc", ["-O1", "-o", out, root.appendingPathComponent("tests/faults/fault_workload.c").path])
            guard gcc.status == 0 else { return .failure(FaultFailure(description: "gcc failed: \(gcc.output)")) }
        } catch {
            return .failure(FaultFailure(description: "cannot run gcc: \(error)"))
        }
        return .success(out)
    }()

    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var text = ""
    var pid: Int32 { process.processIdentifier }

    init() throws {
        process.executableURL = URL(fileURLWithPath: try Self.binary.get())
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        try read(until: "ready\n")
    }

    /// Sends one command line and waits for its "ok".
    func command(_ line: String) throws {
        let oks = text.components(separatedBy: "ok\n").count
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        while text.components(separatedBy: "ok\n").count == oks {
            let data = output.fileHandleForReading.availableData
            guard !data.isEmpty else { throw FaultFailure(description: "the workload exited during \(line): \(text)") }
            text += String(decoding: data, as: UTF8.self)
        }
    }

    private func read(until marker: String) throws {
        while !text.contains(marker) {
            let data = output.fileHandleForReading.availableData
            guard !data.isEmpty else { throw FaultFailure(description: "the workload exited before \(marker.debugDescription): \(text)") }
            text += String(decoding: data, as: UTF8.self)
        }
    }

    func finish() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }

    deinit { if process.isRunning { kill(process.processIdentifier, SIGKILL) } }
}
