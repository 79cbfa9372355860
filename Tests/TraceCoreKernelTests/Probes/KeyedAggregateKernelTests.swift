import CKernelOracle
import CLibBPF
import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// Keys × values on the real kernel, as root: workloads that make known numbers of calls
/// with known arguments, checked per key and per bucket, on every flavour that runs here.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("KeyedAggregateKernelTests") || RootRequirement.mustRun,
                             "needs root and a real kernel"))
struct KeyedAggregateKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))

    init() async throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    func manager() async -> ProbeManager {
        let report = await Self.store.get()
        return ProbeManager(planner: Planner(backend: Self.backend), maxProbes: 64, report: { report })
    }

    /// Runs `body` on this thread under the name `name` (what `filter.comm` matches), then
    /// restores the thread's name: only the workload's own calls are counted.
    static func named(_ name: String, _ body: () -> Void) {
        let old = (try? String(contentsOfFile: "/proc/thread-self/comm", encoding: .utf8))?.trimmingCharacters(in: .newlines) ?? "test"
        _ = oracle_set_thread_name(name)
        body()
        _ = oracle_set_thread_name(old)
    }

    /// This thread's id (from /proc/thread-self, which links to PID/task/TID).
    static var threadID: Int32 {
        Int32((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/thread-self"))?.split(separator: "/").last ?? "") ?? 0
    }

    /// Opens `count` fds on /dev/zero.
    static func zeros(_ count: Int) -> [Int32] { (0..<count).map { _ in open("/dev/zero", O_RDONLY | O_CLOEXEC) } }

    static func read(_ fd: Int32, bytes: Int, times: Int) {
        var buffer = [UInt8](repeating: 0, count: max(bytes, 1))
        for _ in 0..<times { _ = Glibc.read(fd, &buffer, bytes) }
    }

    static func entry(_ a: KeyedAggregate, _ key: [String: String]) -> KeyedAggregate.Entry? {
        a.entries.first { e in zip(a.by, e.key).allSatisfy { name, value in key[name].map { $0 == value.text } ?? true } }
    }

    @Test("read by arg:fd with value arg:count: 100 reads of 1 byte, 200 of 10 and 300 of 100 on three fds, exactly",
          arguments: ["tp_btf", "raw_tracepoint", "tracepoint"])
    func readSizesByFd(mechanism: String) async throws {
        let manager = await manager()
        let comm = "kt-read-\(mechanism.prefix(3))"
        let spec = ProbeSpec(name: "keys-read", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: [mechanism],
                             filter: ProbeFilter(comm: comm), aggregate: AggregateSpec(by: ["arg:fd", "thread"], value: "arg:count"))
        let probe = try await manager.create(spec).0
        #expect(probe.mechanism?.rawValue == mechanism)
        let fds = Self.zeros(3)
        defer { fds.forEach { close($0) } }
        Self.named(comm) {
            Self.read(fds[0], bytes: 1, times: 100)
            Self.read(fds[1], bytes: 10, times: 200)
            Self.read(fds[2], bytes: 100, times: 300)
        }
        let metrics = try await manager.metrics("keys-read")
        let a = try #require(metrics.aggregate)
        #expect(a.by == ["arg:fd", "thread"])
        #expect(a.entries.count == 3, "only the three fds of the named thread: \(a.entries.map { $0.key.map(\.text) })")
        #expect(metrics.calls == 600)
        #expect(a.droppedKeys == 0)
        for (fd, n, size, lower, upper) in [(fds[0], 100, 1, 0, 1), (fds[1], 200, 10, 8, 15), (fds[2], 300, 100, 64, 127)] as [(Int32, Int, Int, Int64, Int64)] {
            let e = try #require(Self.entry(a, ["arg:fd": String(fd)]), "fd \(fd)")
            #expect(e.key[1] == .string(comm))
            #expect(e.calls == UInt64(n))
            #expect(e.count == UInt64(n))
            #expect(e.sum == Int64(n * size))
            #expect(e.buckets == [KeyedAggregate.Bucket(lower: lower, upper: upper, count: UInt64(n))])
        }
        await manager.removeAll()
    }

    @Test("close(-1) by errno and tid: every call is EBADF for this thread; a linear histogram of ret", arguments: ["tp_btf", "tracepoint"])
    func closeErrno(mechanism: String) async throws {
        let manager = await manager()
        let comm = "kt-close"
        let spec = ProbeSpec(name: "keys-close", target: ProbeTarget(type: .syscall, name: "close"), mechanisms: [mechanism],
                             filter: ProbeFilter(comm: comm),
                             aggregate: AggregateSpec(by: ["errno", "tid", "arg:fd"], value: "ret", histogram: HistogramSpec(kind: "linear", min: -20, max: 20, step: 10)))
        _ = try await manager.create(spec)
        var tid: Int32 = 0
        Self.named(comm) {
            tid = Self.threadID
            for _ in 0..<77 { _ = close(-1) }
            for _ in 0..<23 { _ = close(-2) }
        }
        let a = try #require(try await manager.metrics("keys-close").aggregate)
        #expect(a.entries.count == 2)
        let minusOne = try #require(Self.entry(a, ["arg:fd": "4294967295"]), "\(a.entries.map { $0.key.map(\.text) })")
        #expect(minusOne.key == [.errno("EBADF"), .unsigned(UInt64(tid)), .unsigned(4_294_967_295)])
        #expect(minusOne.calls == 77 && minusOne.errors == 77)
        // ret is -9 (EBADF): the bucket [-10, -1].
        #expect(minusOne.buckets == [KeyedAggregate.Bucket(lower: -10, upper: -1, count: 77)])
        #expect(minusOne.sum == -9 * 77)
        let minusTwo = try #require(Self.entry(a, ["arg:fd": "4294967294"]))
        #expect(minusTwo.calls == 23 && minusTwo.errors == 23)
        await manager.removeAll()
    }

    @Test("openat by arg:filename: the files this test opened, each as often as it opened them", arguments: ["tp_btf", "tracepoint"])
    func openatFilenames(mechanism: String) async throws {
        let manager = await manager()
        let comm = "kt-open"
        let spec = ProbeSpec(name: "keys-open", target: ProbeTarget(type: .syscall, name: "openat"), mechanisms: [mechanism],
                             filter: ProbeFilter(comm: comm), aggregate: AggregateSpec(by: ["arg:filename", "errno"], value: "none"))
        _ = try await manager.create(spec)
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("tp-keys-\(getpid())").path
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let present = "\(dir)/present", absent = "\(dir)/absent"
        #expect(FileManager.default.createFile(atPath: present, contents: Data()))
        Self.named(comm) {
            for _ in 0..<12 { let fd = open(present, O_RDONLY); if fd >= 0 { close(fd) } }
            for _ in 0..<5 { _ = open(absent, O_RDONLY) }
        }
        let a = try #require(try await manager.metrics("keys-open").aggregate)
        #expect(a.histogram == nil)
        #expect(Self.entry(a, ["arg:filename": present])?.key[1] == .errno("ok"))
        #expect(Self.entry(a, ["arg:filename": present])?.calls == 12)
        #expect(Self.entry(a, ["arg:filename": absent])?.key[1] == .errno("ENOENT"))
        #expect(Self.entry(a, ["arg:filename": absent])?.calls == 5)
        #expect(a.entries.count == 2)
        await manager.removeAll()
    }

    @Test("A full key table counts what did not fit in dropped_keys, exactly")
    func droppedKeys() async throws {
        let manager = await manager()
        let comm = "kt-drop"
        let spec = ProbeSpec(name: "keys-drop", target: ProbeTarget(type: .syscall, name: "read"), filter: ProbeFilter(comm: comm),
                             aggregate: AggregateSpec(by: ["arg:fd"], value: "none", maxKeys: 2))
        _ = try await manager.create(spec)
        let fds = Self.zeros(4)
        defer { fds.forEach { close($0) } }
        Self.named(comm) {
            for (i, fd) in fds.enumerated() { Self.read(fd, bytes: 1, times: 10 * (i + 1)) }
        }
        let metrics = try await manager.metrics("keys-drop")
        let a = try #require(metrics.aggregate)
        #expect(metrics.calls == 100)
        #expect(a.entries.map(\.calls) == [20, 10])
        #expect(a.droppedKeys == 70)
        await manager.removeAll()
    }

    @Test("A uprobe by arg0 with value ret: each argument's calls and its return value (arg + 1), as the registers hold them")
    func uprobeArguments() async throws {
        let manager = await manager()
        let exe = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
        let spec = ProbeSpec(name: "keys-uprobe", target: ProbeTarget(type: .uprobe, path: exe, symbol: "traceplane_uprobe_target"),
                             filter: ProbeFilter(pid: Int(getpid())), aggregate: AggregateSpec(by: ["arg0"], value: "ret"))
        #expect(try await manager.create(spec).0.mechanism == .uprobe)
        var sink: Int32 = 0
        for (value, times) in [(7, 30), (1000, 20), (-5, 10)] as [(Int32, Int)] {
            for _ in 0..<times { sink &+= traceplane_uprobe_target(value) }
        }
        #expect(sink != 0)
        let a = try #require(try await manager.metrics("keys-uprobe").aggregate)
        #expect(a.entries.count == 3)
        // arg0 is read as the register holds it: an int's 32 bits, not sign-extended (no BTF).
        let seven = try #require(Self.entry(a, ["arg0": "7"]))
        #expect(seven.calls == 30 && seven.sum == 8 * 30 && seven.buckets == [KeyedAggregate.Bucket(lower: 8, upper: 15, count: 30)])
        #expect(Self.entry(a, ["arg0": "1000"])?.calls == 20)
        #expect(Self.entry(a, ["arg0": "1000"])?.buckets.first?.lower == 512)
        // Without type information an int's -5 is the register's low 32 bits, and its
        // return value -4 likewise: counted as they are, not as errors.
        let negative = try #require(Self.entry(a, ["arg0": String(UInt32(bitPattern: -5))]))
        #expect(negative.calls == 10 && negative.errors == 0)
        #expect(negative.sum == Int64(UInt32(bitPattern: -4)) * 10)
        await manager.removeAll()
    }

    @Test("task:task_rename by field:newcomm: tp_btf cannot see the record's fields, the perf tracepoint counts each name exactly")
    func tracepointFields() async throws {
        let manager = await manager()
        let spec = ProbeSpec(name: "keys-rename", target: ProbeTarget(type: .tracepoint, name: "task:task_rename"),
                             filter: ProbeFilter(pid: Int(getpid())), aggregate: AggregateSpec(by: ["field:newcomm", "thread"]))
        let probe = try await manager.create(spec).0
        #expect(probe.mechanism == .tracepoint)
        let skipped = probe.attempts.filter { $0.flavour == .tpBTF || $0.flavour == .rawTracepoint }
        #expect(skipped.count == 2 && skipped.allSatisfy { $0.outcome == .unsupported && $0.message.contains("field:newcomm") })
        Self.named("kt-rename") {
            for i in 0..<9 { _ = oracle_set_thread_name(i % 3 == 0 ? "kt-three" : "kt-six") }
        }
        let a = try #require(try await manager.metrics("keys-rename").aggregate)
        // `thread` is the name before the rename: each (new, old) pair exactly.
        let pairs = Dictionary(uniqueKeysWithValues: a.entries.map { ("\($0.key[0].text)<-\($0.key[1].text)", $0.calls) })
        #expect(pairs["kt-three<-kt-rename"] == 1)
        #expect(pairs["kt-six<-kt-three"] == 3)
        #expect(pairs["kt-six<-kt-six"] == 3)
        #expect(pairs["kt-three<-kt-six"] == 2)
        #expect(pairs.filter { $0.key.hasPrefix("kt-rename<-") }.values.reduce(0, +) == 1)
        // The rename back to the test thread's own name is the last one.
        #expect(pairs.values.reduce(0, +) == 11, "\(pairs)")
        await manager.removeAll()
    }

    @Test("A keyed probe costs no leaked maps: deleting it (own object and hub slot) frees its key tables")
    func keyTablesFreed() async throws {
        let manager = await manager()
        Reaper.shared.drain()
        let before = FDCensus.take()
        for (i, m) in ["tp_btf", "tracepoint"].enumerated() {
            _ = try await manager.create(ProbeSpec(name: "keys-free-\(i)", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: [m],
                                                   aggregate: AggregateSpec(by: ["comm"], maxKeys: 4096)))
        }
        let during = FDCensus.take()
        #expect(during.bpfMaps > before.bpfMaps)
        await manager.removeAll()
        Reaper.shared.drain()
        let after = FDCensus.take()
        #expect(after.kernelObjects == before.kernelObjects, "before \(before), after \(after)")
    }

    @Test("A call in flight when its probe's hub slot is taken over is not counted for the new owner")
    func slotTakeoverInFlight() async throws {
        let manager = await manager()
        // Another probe keeps the shared hook loaded, so the next probe gets the freed slot.
        _ = try await manager.create(ProbeSpec(name: "keys-keeper", target: ProbeTarget(type: .syscall, name: "getppid"), mechanisms: ["tp_btf"]))
        let comm = "kt-inflight"
        let first = ProbeSpec(name: "keys-first", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: ["tp_btf"],
                              filter: ProbeFilter(comm: comm), aggregate: AggregateSpec(by: ["arg:fd"], value: "none"))
        _ = try await manager.create(first)
        var fds: [Int32] = [0, 0]
        #expect(pipe(&fds) == 0)
        defer { close(fds[0]); close(fds[1]) }
        let reader = fds[0]
        let entered = DispatchSemaphore(value: 0), done = DispatchSemaphore(value: 0)
        Thread {
            Self.named(comm) {
                entered.signal()
                var byte: UInt8 = 0
                _ = Glibc.read(reader, &byte, 1)  // blocks until the write below
            }
            done.signal()
        }.start()
        entered.wait()
        try await Task.sleep(for: .milliseconds(200))  // the read is now blocked in the kernel
        try await manager.delete("keys-first")
        var second = first
        second.name = "keys-second"
        let taken = try await manager.create(second).0
        #expect(taken.mechanism == .tpBTF)
        var byte: UInt8 = 1
        #expect(write(fds[1], &byte, 1) == 1)
        done.wait()
        Self.named(comm) { Self.read(reader, bytes: 0, times: 3) }  // three calls the new probe does count
        let metrics = try await manager.metrics("keys-second")
        #expect(metrics.calls == 3, "the read that entered under keys-first was counted for keys-second")
        #expect(metrics.aggregate?.entries.map(\.calls) == [3])
        await manager.removeAll()
    }
}
