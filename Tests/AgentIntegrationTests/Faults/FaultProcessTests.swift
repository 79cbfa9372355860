import CLibBPF
import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// Traced processes and their files misbehaving under the real agent binary: a uprobe
/// target deleted or replaced while probed, processes killed while blocked in a traced
/// syscall, stacks of a process that exited before anyone asked for them. The workload is
/// tests/faults/fault_workload.c (built with gcc per test into a temporary directory) and
/// tests/stacks/callchains.c; the oracles are the workload's own call counts, /proc, `nm`
/// and the kernel census (root: BPF).
@Suite(.serialized, .enabled(if: RootRequirement.check("FaultProcessTests") || RootRequirement.mustRun, "needs root for BPF"))
struct FaultProcessTests {
    let dir = NSTemporaryDirectory() + "fault-process-\(UUID().uuidString.prefix(8))"

    init() throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
    }

    static func uprobe(_ path: String) -> String {
        #"{"target":{"type":"uprobe","path":"\#(path)","symbol":"fault_target"}}"#
    }

    @Test("A uprobe target deleted while a process of it runs: its calls before and after are counted exactly (the inode lives), a new probe on the path is a 422 naming it, DELETE leaves nothing")
    func deletedTarget() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try FaultBinary.build(into: dir + "/\(FaultBinary.comm)")
        let before = KernelCensus.objects()
        let agent = try await ProcessAgent.start()
        let work = try FaultProcess(path)
        let put = try agent.request("PUT", "/v1/probes/u-deleted", Self.uprobe(path))
        #expect(put.status == 201 && put.json?["mechanism"] as? String == "uprobe", "\(put.status) \(put.body)")
        try work.command("u 100")
        #expect(try agent.calls("u-deleted") == 100)

        #expect(unlink(path) == 0)
        #expect(access(path, F_OK) != 0)
        let exe = (try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/\(work.pid)/exe")) ?? ""
        #expect(exe == path + " (deleted)", "the kernel says the running image is \(exe)")
        try work.command("u 50")
        #expect(try agent.calls("u-deleted") == 150, "calls after the file was deleted")

        let census = KernelCensus.objects()
        let again = try agent.request("PUT", "/v1/probes/u-again", Self.uprobe(path))
        #expect(again.status == 422, "\(again.status) \(again.body)")
        let attempts = again.json?["attempts"] as? [[String: Any]] ?? []
        #expect(attempts.count == 1 && (attempts.first?["message"] as? String ?? "").contains(path), "\(again.body)")
        let left = await KernelCensus.settledObjects(since: census, seconds: 30)
        #expect(left.isEmpty, "the refused probe left objects in the kernel: \(left)")
        #expect(try agent.request("GET", "/healthz").status == 200)
        try work.command("u 25")
        #expect(try agent.calls("u-deleted") == 175)

        #expect(try agent.request("DELETE", "/v1/probes/u-deleted").status == 204)
        work.finish()
        await agent.stop()
        let leaked = await KernelCensus.settledObjects(since: before)
        #expect(leaked.isEmpty, "left in the kernel: \(leaked)")
    }

    @Test("A uprobe target replaced by another build (rename over the path): the probe counts the old inode only; a PUT of the same spec re-attaches and counts the new binary's calls exactly")
    func replacedTarget() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try FaultBinary.build(into: dir + "/\(FaultBinary.comm)")
        let newer = try FaultBinary.build(into: dir + "/next/\(FaultBinary.comm)", padded: true)
        let oldOffset = try FaultBinary.symbolOffset(path), newOffset = try FaultBinary.symbolOffset(newer)
        #expect(oldOffset != newOffset, "the padded build must move fault_target: \(oldOffset) vs \(newOffset)")
        let before = KernelCensus.objects()
        let agent = try await ProcessAgent.start()
        let old = try FaultProcess(path)
        #expect(try agent.request("PUT", "/v1/probes/u-replaced", Self.uprobe(path)).status == 201)
        try old.command("u 100")
        #expect(try agent.calls("u-replaced") == 100)

        #expect(rename(newer, path) == 0)
        let new = try FaultProcess(path)
        try new.command("u 70")
        try old.command("u 30")
        #expect(try agent.calls("u-replaced") == 130, "the probe is on the old inode: the old process's 30 count, the new one's 70 do not")

        // The same spec again: the file is not the one attached, so the PUT re-attaches.
        let put = try agent.request("PUT", "/v1/probes/u-replaced", Self.uprobe(path))
        #expect(put.status == 200 && put.headers.lowercased().contains("probe-outcome: replaced"), "\(put.status) \(put.headers) \(put.body)")
        try new.command("u 70")
        try old.command("u 30")
        #expect(try agent.calls("u-replaced") == 70, "the re-attached probe counts the new binary's calls only")
        #expect(try agent.request("GET", "/v1/probes/u-replaced").json?["generation"] as? Int == 2)
        // Unchanged now: a PUT of the same spec keeps the attachment and its counts.
        let same = try agent.request("PUT", "/v1/probes/u-replaced", Self.uprobe(path))
        #expect(same.status == 200 && same.headers.lowercased().contains("probe-outcome: unchanged"), "\(same.headers)")
        #expect(try agent.calls("u-replaced") == 70)

        #expect(try agent.request("DELETE", "/v1/probes/u-replaced").status == 204)
        old.finish()
        new.finish()
        await agent.stop()
        let leaked = await KernelCensus.settledObjects(since: before)
        #expect(leaked.isEmpty, "left in the kernel: \(leaked)")
    }

    @Test("Processes SIGKILLed while blocked in a traced read(2): no crash, every completed read counted exactly and each interrupted one once as an error, entry records freed with the task, exact counts afterwards")
    func killedMidCall() async throws {
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let path = try FaultBinary.build(into: dir + "/\(FaultBinary.comm)")
        let before = KernelCensus.objects()
        let agent = try await ProcessAgent.start()
        // Started before the probes: their loader's reads are not counted.
        let readers = try (0..<3).map { _ in try FaultProcess(path, ["reader"]) }
        let filter = #""filter":{"comm":"\#(FaultBinary.comm)"}"#
        let hub = try agent.request("PUT", "/v1/probes/reads-hub", #"{"target":{"type":"syscall","name":"read"},\#(filter)}"#)
        #expect(hub.status == 201 && hub.json?["mechanism"] as? String == "tp_btf", "\(hub.body)")
        let own = try agent.request("PUT", "/v1/probes/reads-own", #"{"target":{"type":"syscall","name":"read"},"mechanisms":["tracepoint"],\#(filter)}"#)
        #expect(own.status == 201 && own.json?["mechanism"] as? String == "tracepoint", "\(own.body)")
        let probes = ["reads-hub", "reads-own"]
        let starts = FaultMaps.named("starts", since: before)
        #expect(starts.count == 2, "one entry-record map per object (the hub's and the tracepoint probe's): \(starts)")

        var completed = 0
        for (i, reader) in readers.enumerated() {
            for _ in 0..<(5 + 2 * i) { try reader.echo() }
            completed += 5 + 2 * i
        }
        for reader in readers {
            try #require(await FaultProcess.waitUntil { reader.blockedIn() == 0 }, "reader \(reader.pid) is not blocked in read: \(reader.syscallLine())")
        }
        // Each blocked reader has its entry record in each object's task storage.
        for map in starts {
            #expect(map.type == BPF_MAP_TYPE_TASK_STORAGE.rawValue, "\(map): entry records outside task storage would outlive the task")
            for reader in readers {
                #expect(map.entryTimestamp(pid: reader.pid).map { $0 > 0 } == true, "no entry record of blocked reader \(reader.pid) in \(map)")
            }
        }
        for probe in probes { #expect(try agent.calls(probe) == completed, "\(probe) before the kill") }

        let pidfds = readers.map { FaultMaps.pidfdOpen($0.pid) }
        for reader in readers { reader.kill(SIGKILL) }
        for reader in readers {
            #expect(reader.process.terminationReason == .uncaughtSignal && reader.process.terminationStatus == SIGKILL)
        }
        // The interrupted read returns (-ERESTARTSYS) through the syscall exit tracepoint
        // before the signal ends the task: one more call each, an error.
        for probe in probes {
            let m = try agent.metrics(probe)
            #expect(m["calls"] as? Int == completed + readers.count, "\(probe) after the kill: \(m)")
            #expect(m["errors"] as? Int == readers.count, "\(probe) after the kill: \(m)")
        }
        // Their records went with the tasks: a lookup by their pidfds finds no task.
        for map in starts {
            for fd in pidfds { #expect(map.entryTimestamp(pidfd: fd) == nil, "\(map) still answers for a reaped task") }
        }
        for fd in pidfds { close(fd) }
        #expect(try agent.request("GET", "/healthz").status == 200)

        // A reader started now: its loader's reads come before "ready", so counted from there.
        let later = try FaultProcess(path, ["reader"])
        let baseline = try agent.calls("reads-hub")
        for _ in 0..<4 { try later.echo() }
        later.closeInput()
        later.process.waitUntilExit()
        #expect(later.process.terminationStatus == 0)
        for probe in probes {
            // 4 echoed bytes and the read of end-of-file.
            #expect(try agent.calls(probe) - baseline == 5, "\(probe) after a normal reader")
        }
        for probe in probes { #expect(try agent.request("DELETE", "/v1/probes/\(probe)").status == 204) }
        await agent.stop()
        let leaked = await KernelCensus.settledObjects(since: before)
        #expect(leaked.isEmpty, "left in the kernel: \(leaked)")
    }

    @Test("A ustack probe read over HTTP only after its process exited: 700 and 300 calls under main→chain_a→chain_b→chain_c and main→chain_x→chain_y, every frame of the program named")
    func stacksAfterExit() async throws {
        let before = KernelCensus.objects()
        let agent = try await ProcessAgent.start()
        let chains = try CallChains(["700", "300"])
        let put = try agent.request("PUT", "/v1/probes/ustack-exited",
                                    #"{"target":{"type":"syscall","name":"getppid"},"filter":{"pid":\#(chains.pid)},"aggregate":{"by":["ustack"],"value":"none"}}"#)
        #expect(put.status == 201, "\(put.body)")
        try chains.go()
        let pid = chains.pid
        chains.finish()
        #expect(chains.process.terminationStatus == 0)
        #expect(access("/proc/\(pid)/maps", F_OK) != 0, "the process is gone")

        let folded = try agent.request("GET", "/v1/probes/ustack-exited/stacks?format=folded")
        #expect(folded.status == 200, "\(folded.body)")
        let lines = folded.body.split(separator: "\n").map(String.init)
        #expect(lines.compactMap { $0.split(separator: " ").last.flatMap { Int($0) } }.sorted() == [300, 700], "\(folded.body.prefix(2000))")
        // The process lived a few milliseconds after its first call and was gone before
        // the stack table's first resolution (a second after the probe attached): its
        // mappings were read when the kernel told the agent of its first key (a new-key
        // notice in the probe's ring), so every frame has its name.
        let abc = lines.filter { $0.hasSuffix("main;chain_a;chain_b;chain_c;direct_getppid 700") }
        let xy = lines.filter { $0.hasSuffix("main;chain_x;chain_y;direct_getppid 300") }
        #expect(abc.count == 1 && xy.count == 1 && lines.count == 2, "\(folded.body.prefix(2000))")
        // No frame lies outside the mappings (the defect: every frame `[unknown] [unknown]+0x…`,
        // no mapping known). What calls main is libc's start code, a static function that a
        // stripped libc names in no symbol table: `[unknown] /…/libc.so.6+0x…` even while the
        // process runs, so only its module is asked for.
        #expect(!folded.body.contains("[unknown] [unknown]"), "\(folded.body.prefix(2000))")
        for line in lines {
            let frames = (line.split(separator: " ").dropLast().joined(separator: " ")).split(separator: ";").map(String.init)
            let outer = frames.prefix { $0 != "main" }
            #expect(outer.count < frames.count, "a stack through main: \(line)")
            #expect(outer.allSatisfy { !$0.hasPrefix("[unknown]") || $0.hasPrefix("[unknown] /") }, "frames before main name their file: \(line)")
        }
        #expect(try agent.request("DELETE", "/v1/probes/ustack-exited").status == 204)
        await agent.stop()
        let leaked = await KernelCensus.settledObjects(since: before)
        #expect(leaked.isEmpty, "left in the kernel: \(leaked)")
    }
}

// MARK: - Helpers

fileprivate struct FaultFailure: Error, CustomStringConvertible { var description: String }

/// The agent binary on an ephemeral port.
fileprivate final class ProcessAgent {
    let process: AgentProcess

    private init(_ process: AgentProcess) { self.process = process }

    static func start() async throws -> ProcessAgent {
        let process = try AgentProcess(["--listen", "127.0.0.1:0"])
        try #require(await process.waitForListening(seconds: 60), "agent did not start: \(process.log)")
        try #require(await process.waitForOutput(matching: "ready: ") != nil, "agent never got ready: \(process.log)")
        return ProcessAgent(process)
    }

    func request(_ method: String, _ path: String, _ json: String? = nil) throws -> CurlClient.Reply {
        try CurlClient.run(method, "http://127.0.0.1:\(process.port)\(path)", json: json)
    }

    func metrics(_ name: String) throws -> [String: Any] {
        let reply = try request("GET", "/v1/probes/\(name)/metrics")
        return try #require(reply.json, "metrics of \(name): \(reply.status) \(reply.body)")
    }

    func calls(_ name: String) throws -> Int {
        try #require(try metrics(name)["calls"] as? Int, "no calls in the metrics of \(name)")
    }

    func stop() async {
        process.signal(SIGTERM)
        let status = await process.waitForExit(seconds: 30)
        #expect(status == 0, "the agent exited \(String(describing: status)) on SIGTERM: \(process.log)")
        #expect(!process.log.contains("Fatal error"), "\(process.log)")
    }
}

/// tests/faults/fault_workload.c built with gcc.
fileprivate enum FaultBinary {
    static let comm = "tp-faultwork"

    /// Builds the workload at `path` (`padded`: -DFAULT_PAD, which moves fault_target).
    static func build(into path: String, padded: Bool = false) throws -> String {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        try FileManager.default.createDirectory(atPath: (path as NSString).deletingLastPathComponent, withIntermediateDirectories: true)
        let gcc = try Command.run("/usr/bin/gcc", ["-O1"] + (padded ? ["-DFAULT_PAD"] : []) + ["-o", path, root.appendingPathComponent("tests/faults/fault_workload.c").path])
        try #require(gcc.status == 0, "gcc: \(gcc.output)")
        return path
    }

    /// fault_target's address in the ELF file, as `nm` says.
    static func symbolOffset(_ path: String) throws -> String {
        let nm = try Command.run("/usr/bin/nm", [path])
        let line = try #require(nm.output.split(separator: "\n").first { $0.hasSuffix(" T fault_target") }, "\(nm.output)")
        return String(line.split(separator: " ")[0])
    }
}

/// One running workload process: commands answered with "ok", or (mode `reader`) one
/// byte echoed per read(2).
fileprivate final class FaultProcess {
    let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var text = ""
    var pid: Int32 { process.processIdentifier }

    init(_ path: String, _ arguments: [String] = []) throws {
        process.executableURL = URL(fileURLWithPath: path)
        process.arguments = arguments
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        try read(until: { $0.contains("ready\n") })
        text = ""
    }

    /// Sends one command line and waits for its "ok".
    func command(_ line: String) throws {
        input.fileHandleForWriting.write(Data((line + "\n").utf8))
        try read(until: { $0.hasSuffix("ok\n") })
        text = ""
    }

    /// Writes one byte and waits for the reader to echo it: exactly one completed read.
    func echo() throws {
        input.fileHandleForWriting.write(Data("x".utf8))
        try read(until: { $0 == "x" })
        text = ""
    }

    private func read(until done: (String) -> Bool) throws {
        while !done(text) {
            let data = output.fileHandleForReading.availableData
            guard !data.isEmpty else { throw FaultFailure(description: "the workload \(pid) exited early: \(text)") }
            text += String(decoding: data, as: UTF8.self)
        }
    }

    /// /proc/PID/syscall: the number of the syscall it is blocked in (nil: running or gone).
    func blockedIn() -> Int? { syscallLine().split(separator: " ").first.flatMap { Int($0) } }
    func syscallLine() -> String { (try? String(contentsOfFile: "/proc/\(pid)/syscall", encoding: .utf8)) ?? "" }

    func kill(_ signal: Int32) {
        Glibc.kill(pid, signal)
        process.waitUntilExit()
    }

    func closeInput() { try? input.fileHandleForWriting.close() }

    func finish() {
        closeInput()
        process.waitUntilExit()
    }

    /// Polls `condition` every 10 ms for at most 10 s.
    static func waitUntil(_ condition: () -> Bool) async -> Bool {
        for _ in 0..<1000 {
            if condition() { return true }
            try? await Task.sleep(for: .milliseconds(10))
        }
        return condition()
    }

    deinit { if process.isRunning { Glibc.kill(pid, SIGKILL) } }
}

/// BPF maps found by name through the kernel (BPF_MAP_GET_NEXT_ID), read with raw bpf().
fileprivate struct FaultMaps: CustomStringConvertible {
    var id: UInt32
    var type: UInt32
    var valueSize: Int
    var description: String { "map \(id) (type \(type))" }

    /// Maps called `name` made since `before`.
    static func named(_ name: String, since before: KernelCensus.Objects) -> [FaultMaps] {
        KernelCensus.objects().maps.subtracting(before.maps).sorted().compactMap { id in
            let fd = bpf_map_get_fd_by_id(id)
            guard fd >= 0 else { return nil }
            defer { close(fd) }
            var info = bpf_map_info()
            var len = UInt32(MemoryLayout<bpf_map_info>.size)
            guard bpf_obj_get_info_by_fd(fd, &info, &len) == 0 else { return nil }
            let mapName = withUnsafeBytes(of: &info.name) { String(cString: $0.bindMemory(to: CChar.self).baseAddress!) }
            return mapName == name ? FaultMaps(id: id, type: info.type, valueSize: Int(info.value_size)) : nil
        }
    }

    /// glibc's pidfd_open(2) (sys/pidfd.h is not in Swift's Glibc module).
    static func pidfdOpen(_ pid: Int32) -> Int32 {
        typealias Open = @convention(c) (pid_t, UInt32) -> Int32
        guard let symbol = dlsym(UnsafeMutableRawPointer(bitPattern: 0), "pidfd_open") else { return -1 }
        return unsafeBitCast(symbol, to: Open.self)(pid, 0)
    }

    /// The first u64 of the task-storage value of process `pid` (its entry time), or nil.
    func entryTimestamp(pid: Int32) -> UInt64? {
        let pidfd = Self.pidfdOpen(pid)
        guard pidfd >= 0 else { return nil }
        defer { close(pidfd) }
        return entryTimestamp(pidfd: pidfd)
    }

    func entryTimestamp(pidfd: Int32) -> UInt64? {
        let fd = bpf_map_get_fd_by_id(id)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        var key = pidfd
        var value = [UInt8](repeating: 0, count: valueSize)
        guard bpf_map_lookup_elem(fd, &key, &value) == 0 else { return nil }
        return value.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) }
    }
}
