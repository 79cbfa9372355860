import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// The fault suite, kernel resources: the real agent out of file descriptors, with no
/// locked memory, at a tracepoint's program limit and at its probe limit. The agent's own exhaustion is a 503 with `Retry-After`; a
/// target's limit is a 422 with the attempts; the agent stays up and nothing half-attached
/// stays in the kernel (the system-wide census is the oracle: the suite runs alone).
@Suite(.serialized, .enabled(if: RootRequirement.check("FaultResourceTests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct FaultResourceTests {
    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    func start(_ extra: [String] = [], wrapper: [String] = []) async throws -> (AgentProcess, String) {
        let agent = try await AgentProcess.started(extra, wrapper: wrapper)
        return (agent, "http://127.0.0.1:\(agent.port)")
    }

    func stop(_ agent: AgentProcess) async { await agent.stopCleanly() }

    static func openFDs(_ pid: Int32) -> Int {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).count
    }

    /// Sets the soft RLIMIT_NOFILE of `pid` and keeps its hard limit (raising a hard limit
    /// needs CAP_SYS_RESOURCE, which a container's root may lack).
    static func setOpenFileLimit(_ pid: Int32, soft: Int) throws -> Bool {
        let limits = try String(contentsOfFile: "/proc/\(pid)/limits", encoding: .utf8)
        let line = limits.split(separator: "\n").first { $0.hasPrefix("Max open files") } ?? ""
        let hard = line.split(separator: " ", omittingEmptySubsequences: true).dropFirst(4).first.map(String.init) ?? "unlimited"
        return try Command.run("/usr/bin/prlimit", ["--pid", "\(pid)", "--nofile=\(soft):\(hard)"]).status == 0
    }

    /// A per-syscall tracepoint probe on getppid counting only this test process.
    static func ppidSpec(_ extra: String = "") -> String {
        #"{"target":{"type":"syscall","name":"getppid"},"mechanisms":["tracepoint"],"filter":{"pid":\#(getpid())}\#(extra)}"#
    }

    func calls(_ base: String, _ name: String) throws -> Int? {
        try CurlClient.run("GET", "\(base)/v1/probes/\(name)/metrics").json?["calls"] as? Int
    }

    @Test("Out of file descriptors (RLIMIT_NOFILE lowered on the running agent): 503 agent-resources-exhausted with Retry-After and EMFILE, nothing half-attached; fds freed: it attaches again and counts exactly")
    func outOfFileDescriptors() async throws {
        let (agent, base) = try await start()
        let before = KernelCensus.objects()
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/p0", json: Self.ppidSpec()).status == 201)
        let idle = Self.openFDs(agent.pid)
        // Room for the HTTP connections and a few probes, not for many.
        #expect(try Self.setOpenFileLimit(agent.pid, soft: idle + 40))
        var acknowledged = ["p0"]
        var refusal: CurlClient.Reply?
        for i in 1...40 {
            let reply = try CurlClient.run("PUT", "\(base)/v1/probes/p\(i)", json: Self.ppidSpec())
            if reply.status == 201 { acknowledged.append("p\(i)"); continue }
            refusal = reply
            break
        }
        let refused = try #require(refusal, "40 probes attached within \(idle + 40) fds?")
        #expect(refused.status == 503, "\(refused.status) \(refused.body)")
        #expect(refused.headers.lowercased().contains("retry-after: 5"), "\(refused.headers)")
        #expect(refused.json?["type"] as? String == "https://traceplane.dev/problems/agent-resources-exhausted", "\(refused.body)")
        let attempts = refused.json?["attempts"] as? [[String: Any]] ?? []
        #expect(attempts.last?["errno"] as? String == "EMFILE", "\(refused.body)")
        #expect(acknowledged.count >= 2, "at least one probe fits in 40 fds: \(acknowledged)")

        // The agent is up, lists exactly what it acknowledged, and the refused probe left
        // nothing: the kernel holds the same objects as after the last success.
        #expect(try CurlClient.run("GET", "\(base)/healthz").status == 200)
        let listed = try #require(CurlClient.run("GET", "\(base)/v1/probes").json?["probes"] as? [[String: Any]])
        #expect(Set(listed.compactMap { $0["name"] as? String }) == Set(acknowledged))
        for _ in 0..<300 { _ = getppid() }
        for name in acknowledged { #expect(try calls(base, name) == 300, "\(name)") }

        // Freeing fds (deleting a probe) is enough: the same request now works, exactly.
        #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/\(acknowledged.removeLast())").status == 204)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/again", json: Self.ppidSpec()).status == 201)
        for _ in 0..<200 { _ = getppid() }
        #expect(try calls(base, "again") == 200)

        // No fd at all left: connections are not served, the agent survives it and answers
        // again once the limit is raised.
        // (Below what is open: open fds stay, no new one is given.)
        let now = Self.openFDs(agent.pid)
        #expect(try Self.setOpenFileLimit(agent.pid, soft: 3))
        let starved = try CurlClient.run("GET", "\(base)/healthz", extra: ["--max-time", "2"])
        #expect(starved.status != 200, "a connection needs an fd: \(starved.status)")
        #expect(try Self.setOpenFileLimit(agent.pid, soft: now + 100))
        #expect(try CurlClient.run("GET", "\(base)/healthz").status == 200)
        #expect(agent.isRunning)

        for name in acknowledged + ["again"] { #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/\(name)").status == 204) }
        let left = await KernelCensus.settledObjects(since: before)
        #expect(left.isEmpty, "left in the kernel: \(left)")
        await stop(agent)
    }

    @Test("RLIMIT_MEMLOCK of 0: this kernel charges BPF memory to the memory cgroup, not to the limit; probes attach and count exactly")
    func noLockedMemory() async throws {
        let (agent, base) = try await start(wrapper: ["/usr/bin/prlimit", "--memlock=0:0", "--"])
        let limits = try String(contentsOfFile: "/proc/\(agent.pid)/limits", encoding: .utf8)
        let memlock = limits.split(separator: "\n").first { $0.hasPrefix("Max locked memory") } ?? ""
        #expect(memlock.split(separator: " ", omittingEmptySubsequences: true).dropFirst(3).prefix(2) == ["0", "0"], "\(memlock)")
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/own", json: Self.ppidSpec(#","aggregate":{"by":["comm"]}"#)).status == 201)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/hub", json: #"{"target":{"type":"syscall","name":"getppid"},"filter":{"pid":\#(getpid())}}"#).status == 201)
        for _ in 0..<400 { _ = getppid() }
        #expect(try calls(base, "own") == 400)
        #expect(try calls(base, "hub") == 400)
        await stop(agent)
    }

    @Test("Map creation refused by the kernel (the agent's memory cgroup limited below a 59 MB stack map): 503 agent-resources-exhausted with Retry-After and ENOMEM, nothing half-created; a small table attaches and counts exactly; the limit raised, the large one attaches")
    func mapCreationRefused() async throws {
        let (agent, base) = try await start()
        // 55,000 keys of one kernel stack: a stack map of 55,000 x 1,080 bytes, preallocated
        // and charged to the creating process's memory cgroup (the key table is per-CPU
        // memory, which this kernel does not charge to a v1 memory cgroup).
        func spec(maxKeys: Int) -> String {
            Self.ppidSpec(#","aggregate":{"by":["kstack"],"value":"none","max_keys":\#(maxKeys)}"#)
        }
        let census = KernelCensus.objects()
        // Warm-up outside the limit: what the first load of an object allocates once (BTF,
        // the object's ELF) is charged where the agent started, not to the limited cgroup.
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/warm", json: spec(maxKeys: 64)).status == 201)
        #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/warm").status == 204)
        let warm = await KernelCensus.settledObjects(since: census)
        #expect(warm.isEmpty, "left in the kernel by the warm-up: \(warm)")

        let cgroup = try #require(try MemoryCgroup.make(name: "tp-fault-memcg-\(getpid())"),
                                  "no memory cgroup to limit here (neither a v1 memory hierarchy nor cgroup2 with the memory controller delegated)")
        defer { cgroup.remove() }
        try cgroup.add(agent.pid)
        try cgroup.limit(32 << 20)

        let refused = try CurlClient.run("PUT", "\(base)/v1/probes/big", json: spec(maxKeys: 55_000))
        #expect(refused.status == 503, "\(refused.status) \(refused.body)")
        #expect(refused.headers.lowercased().contains("retry-after: 5"), "\(refused.headers)")
        #expect(refused.json?["type"] as? String == "https://traceplane.dev/problems/agent-resources-exhausted", "\(refused.body)")
        let attempts = refused.json?["attempts"] as? [[String: Any]] ?? []
        #expect(attempts.last?["errno"] as? String == "ENOMEM", "\(refused.body)")
        // The kernel's own account: the cgroup hit its limit (an independent oracle of why).
        #expect(cgroup.failures > 0, "the memory cgroup never refused a charge")
        #expect(try CurlClient.run("GET", "\(base)/healthz").status == 200)
        #expect(agent.isRunning)
        let listed = try #require(CurlClient.run("GET", "\(base)/v1/probes").json?["probes"] as? [[String: Any]])
        #expect(listed.isEmpty, "\(listed)")
        // Nothing of the refused probe stays: no program, map or link more than before it.
        let afterRefusal = await KernelCensus.settledObjects(since: census)
        #expect(afterRefusal.isEmpty, "left in the kernel by the refused probe: \(afterRefusal)")

        // Under the same limit a small table fits and counts exactly.
        let small = try CurlClient.run("PUT", "\(base)/v1/probes/small", json: spec(maxKeys: 1_000))
        #expect(small.status == 201, "\(small.body)")
        for _ in 0..<300 { _ = getppid() }
        #expect(try calls(base, "small") == 300)

        // The limit lifted: the same large request now attaches, and both count exactly.
        try cgroup.limit(nil)
        let big = try CurlClient.run("PUT", "\(base)/v1/probes/big", json: spec(maxKeys: 55_000))
        #expect(big.status == 201, "\(big.body)")
        for _ in 0..<200 { _ = getppid() }
        #expect(try calls(base, "big") == 200)
        #expect(try calls(base, "small") == 500)

        for name in ["small", "big"] { #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/\(name)").status == 204) }
        let left = await KernelCensus.settledObjects(since: census)
        #expect(left.isEmpty, "left in the kernel: \(left)")
        await stop(agent)
    }

    @Test("A tracepoint's program limit (64 perf-event programs per event): the next probe is a 422 with attempts naming E2BIG, nothing half-attached; one deleted, one more fits")
    func perTracepointProgramLimit() async throws {
        let (agent, base) = try await start()
        let before = KernelCensus.objects()
        let spec = #"{"target":{"type":"tracepoint","name":"sched:sched_process_fork"},"mechanisms":["tracepoint"]}"#
        var attached = 0
        var refusal: CurlClient.Reply?
        for i in 0..<70 {
            let reply = try CurlClient.run("PUT", "\(base)/v1/probes/t\(i)", json: spec)
            if reply.status == 201 { attached += 1; continue }
            refusal = reply
            break
        }
        let refused = try #require(refusal, "70 programs on one tracepoint?")
        // Other tools' programs on the same event count against the same limit.
        #expect(attached == 64, "\(attached) attached before the refusal")
        #expect(refused.status == 422, "\(refused.status) \(refused.body)")
        let attempts = refused.json?["attempts"] as? [[String: Any]] ?? []
        #expect(attempts.map { $0["mechanism"] as? String } == ["tracepoint"], "\(refused.body)")
        #expect(attempts.last?["errno"] as? String == "E2BIG", "\(refused.body)")
        #expect(try CurlClient.run("GET", "\(base)/healthz").status == 200)
        let programs = KernelCensus.objects().subtracting(before).programs
        #expect(programs.count == attached, "one program per acknowledged probe, none of the refused one: \(programs.count)")

        #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/t0").status == 204)
        #expect(try CurlClient.run("PUT", "\(base)/v1/probes/t0", json: spec).status == 201)
        for i in 0..<attached { #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/t\(i)").status == 204) }
        let left = await KernelCensus.settledObjects(since: before)
        #expect(left.isEmpty, "left in the kernel: \(left)")
        await stop(agent)
    }

    @Test("The agent's probe limit (the shared hook has as many slots): 429 too-many-probes naming the limit; a slot freed is reused on the shared hook, counting exactly")
    func hubFull() async throws {
        let (agent, base) = try await start(["--max-probes", "3"])
        let before = KernelCensus.objects()
        func hubSpec(_ name: String) -> String {
            #"{"target":{"type":"syscall","name":"\#(name)"},"filter":{"pid":\#(getpid())}}"#
        }
        for (i, name) in ["getppid", "getpgid", "getuid"].enumerated() {
            let reply = try CurlClient.run("PUT", "\(base)/v1/probes/h\(i)", json: hubSpec(name))
            #expect(reply.status == 201, "\(reply.body)")
        }
        let mechanism = try #require(CurlClient.run("GET", "\(base)/v1/probes/h0").json?["mechanism"] as? String)
        let full = try CurlClient.run("PUT", "\(base)/v1/probes/h3", json: hubSpec("getppid"))
        #expect(full.status == 429, "\(full.status) \(full.body)")
        #expect(full.json?["type"] as? String == "https://traceplane.dev/problems/too-many-probes")
        #expect((full.json?["detail"] as? String)?.contains("3") == true, "\(full.body)")
        let objects = KernelCensus.objects().subtracting(before)

        #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/h1").status == 204)
        let reused = try CurlClient.run("PUT", "\(base)/v1/probes/h3", json: hubSpec("getppid"))
        #expect(reused.status == 201, "\(reused.body)")
        #expect(reused.json?["mechanism"] as? String == mechanism, "the freed slot of the shared hook: \(reused.body)")
        for _ in 0..<123 { _ = getppid() }
        #expect(try calls(base, "h3") == 123)
        #expect(try calls(base, "h0") == 123)
        #expect(KernelCensus.objects().subtracting(before).programs == objects.programs, "no new programs for a reused slot")
        for name in ["h0", "h2", "h3"] { #expect(try CurlClient.run("DELETE", "\(base)/v1/probes/\(name)").status == 204) }
        let left = await KernelCensus.settledObjects(since: before)
        #expect(left.isEmpty, "left in the kernel: \(left)")
        await stop(agent)
    }
}

/// A memory cgroup of the test's own, below this process's: a v1 `memory` hierarchy (a
/// hybrid host like CI's), or cgroup2 where this process's cgroup delegates the memory
/// controller to its children. Its limit covers what the kernel charges for the tasks in
/// it, BPF maps they create included.
struct MemoryCgroup {
    let path: String
    /// v1 (`memory.limit_in_bytes`, `memory.failcnt`) or v2 (`memory.max`, `memory.events`).
    let v1: Bool

    /// Makes `name` below this process's memory cgroup; nil when there is none to use.
    static func make(name: String) throws -> MemoryCgroup? {
        let membership = (try? String(contentsOfFile: "/proc/self/cgroup", encoding: .utf8)) ?? ""
        let mounts = (try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)) ?? ""
        // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER-OPTIONS
        func mountPoint(fstype: String, superOption: String?) -> String? {
            for line in mounts.split(separator: "\n") {
                let halves = line.components(separatedBy: " - ")
                guard halves.count == 2 else { continue }
                let tail = halves[1].split(separator: " ")
                guard tail.first.map(String.init) == fstype else { continue }
                if let superOption, !(tail.last?.split(separator: ",").contains(Substring(superOption)) ?? false) { continue }
                let fields = halves[0].split(separator: " ")
                if fields.count > 4 { return String(fields[4]) }
            }
            return nil
        }
        for line in membership.split(separator: "\n") {
            let parts = line.split(separator: ":", maxSplits: 2, omittingEmptySubsequences: false).map(String.init)
            guard parts.count == 3 else { continue }
            if parts[1].split(separator: ",").contains("memory"), let root = mountPoint(fstype: "cgroup", superOption: "memory") {
                let path = root + (parts[2] == "/" ? "" : parts[2]) + "/" + name
                try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
                return MemoryCgroup(path: path, v1: true)
            }
        }
        for line in membership.split(separator: "\n") where line.hasPrefix("0::") {
            guard let root = mountPoint(fstype: "cgroup2", superOption: nil) else { continue }
            let parent = root + (line.dropFirst(3) == "/" ? "" : String(line.dropFirst(3)))
            let delegated = (try? String(contentsOfFile: parent + "/cgroup.subtree_control", encoding: .utf8)) ?? ""
            guard delegated.split(whereSeparator: { $0 == " " || $0 == "\n" }).contains("memory") else { continue }
            let path = parent + "/" + name
            try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: false)
            return MemoryCgroup(path: path, v1: false)
        }
        return nil
    }

    private func write(_ file: String, _ value: String) throws {
        guard let handle = FileHandle(forWritingAtPath: path + "/" + file) else {
            throw CocoaError(.fileNoSuchFile, userInfo: [NSFilePathErrorKey: path + "/" + file])
        }
        defer { try? handle.close() }
        try handle.write(contentsOf: Data(value.utf8))
    }

    /// Moves process `pid` (every thread) here.
    func add(_ pid: Int32) throws { try write("cgroup.procs", "\(pid)") }

    /// Sets the limit in bytes; nil lifts it.
    func limit(_ bytes: Int?) throws {
        if v1 { try write("memory.limit_in_bytes", bytes.map(String.init) ?? "-1") }
        else { try write("memory.max", bytes.map(String.init) ?? "max") }
    }

    /// How many charges the kernel refused at the limit.
    var failures: Int {
        if v1 {
            return Int(((try? String(contentsOfFile: path + "/memory.failcnt", encoding: .utf8)) ?? "").trimmingCharacters(in: .whitespacesAndNewlines)) ?? 0
        }
        let events = (try? String(contentsOfFile: path + "/memory.events", encoding: .utf8)) ?? ""
        let max = events.split(separator: "\n").first { $0.hasPrefix("max ") }
        return max.flatMap { Int($0.dropFirst(4)) } ?? 0
    }

    /// Moves whatever is left here to the parent, then removes the cgroup.
    func remove() {
        let parent = (path as NSString).deletingLastPathComponent
        let tasks = (try? String(contentsOfFile: path + "/cgroup.procs", encoding: .utf8)) ?? ""
        for pid in tasks.split(separator: "\n") {
            if let handle = FileHandle(forWritingAtPath: parent + "/cgroup.procs") {
                try? handle.write(contentsOf: Data(pid.utf8))
                try? handle.close()
            }
        }
        rmdir(path)
    }
}
