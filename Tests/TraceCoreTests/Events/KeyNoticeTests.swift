import CBPFLayouts
import Foundation
import Synchronization
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// New-key notices (`TP_EV_NEW_KEY`): the programs of a `ustack` probe without events tell
/// user space of each new key through the `events` ring, so the process's mappings are
/// read while it runs (with events, the events' processes are read). Here: the settings a plan loads with, and what the readers of the ring do with a
/// notice (on an in-memory ring and a fake /proc). The kernel side is in the fault suite's
/// `stacksAfterExit`.
@Suite struct KeyNoticeTests {
    /// A ring of fixed records, consumed in order; records of another size are skipped (and
    /// counted), as libbpf's consumer in the shim does.
    final class RecordRing: EventRing {
        private let records: Mutex<[[UInt8]]>
        private let closed = Atomic<Bool>(false)

        init(_ records: [[UInt8]]) { self.records = Mutex(records) }

        var pollFD: Int32 { closed.load(ordering: .relaxed) ? -1 : 1_000 }
        var isClosed: Bool { closed.load(ordering: .relaxed) }
        var left: Int { records.withLock { $0.count } }

        func consume(max: Int, recordSize: Int, _ body: (UnsafeRawBufferPointer) -> Void) throws(KernelError) -> Int {
            let taken = records.withLock { r -> [[UInt8]] in
                let n = Swift.min(max, r.count)
                defer { r.removeFirst(n) }
                return Array(r.prefix(n))
            }
            for record in taken where record.count == recordSize { record.withUnsafeBytes { body($0) } }
            return taken.count
        }

        func close() { closed.store(true, ordering: .relaxed) }
    }

    static func notice(_ tgid: UInt32) -> [UInt8] {
        var e = tp_event()
        e.flags = UInt32(TP_EV_NEW_KEY)
        e.pid = tgid
        e.time_ns = 5
        return withUnsafeBytes(of: e) { Array($0) }
    }

    static func event(_ pid: UInt32, flags: UInt32 = UInt32(TP_EV_CALL)) -> [UInt8] {
        var e = tp_event()
        e.flags = flags
        e.pid = pid
        e.tid = pid
        e.latency_ns = 1_000
        return withUnsafeBytes(of: e) { Array($0) }
    }

    /// A /proc with processes `tgids`, each mapping `path` executable at 0x400000.
    static func fakeProc(_ tgids: [UInt32], path: String) throws -> String {
        let root = NSTemporaryDirectory() + "tp-notices-\(getpid())-\(UInt32.random(in: 0...UInt32.max))"
        for tgid in tgids {
            try FileManager.default.createDirectory(atPath: "\(root)/\(tgid)", withIntermediateDirectories: true)
            try Data("00400000-00452000 r-xp 00000000 08:02 173521 \(path)\n".utf8).write(to: URL(fileURLWithPath: "\(root)/\(tgid)/maps"))
        }
        return root
    }

    static func symbolizer(_ procRoot: String) -> UserSymbolizer {
        UserSymbolizer(procRoot: procRoot, maxCacheBytes: 1 << 20, maxProcesses: 64, retention: 600, clock: { ProcFiles.monotonicNow() })
    }

    static let path = "/nonexistent/tp-notice-workload"

    static func plan(_ by: [String], type: ProbeTarget = ProbeTarget(type: .syscall, name: "getppid")) throws -> AggregatePlan {
        try AggregatePlan.resolve(ProbeSpec(name: "n", target: type, aggregate: AggregateSpec(by: by, value: "none")),
                                  schema: TargetSchema(arguments: [], fields: nil, source: "test")).get()
    }

    @Test("A notice is told from an event by its flag: its process; calls and tracepoint events are no notices")
    func noticeOrEvent() {
        #expect(Self.notice(4242).withUnsafeBytes { KeyNotices.process($0) } == 4242)
        #expect(Self.event(4242).withUnsafeBytes { KeyNotices.process($0) } == nil)
        #expect(Self.event(4242, flags: 0).withUnsafeBytes { KeyNotices.process($0) } == nil)
        #expect([UInt8](repeating: 0xFF, count: 8).withUnsafeBytes { KeyNotices.process($0) } == nil, "a short record")
    }

    @Test("Only a plan with a ustack part and no events loads with notify_new_keys, and a 64 KiB ring; with events the ring carries events alone, of the events' size")
    func loadSettings() throws {
        let g = LatencyBPF.Globals.self
        func load(_ by: [String], events: EventsSpec? = nil) throws -> LoadSpec {
            var spec = ProbeSpec(name: "n", target: ProbeTarget(type: .syscall, name: "getppid"), aggregate: AggregateSpec(by: by, value: "none"))
            spec.events = events
            let input = RecipeInput(spec: spec, facts: KernelFacts.canned(), taskStorage: true, binding: nil, plan: try Self.plan(by))
            return LatencyObject.load([.init(LatencyBPF.Programs.latSysEnter), .init(LatencyBPF.Programs.latSysExit)], input)
        }
        let ustack = try load(["ustack"])
        #expect(ustack.readOnly[g.notifyNewKeys] == [1])
        #expect(ustack.mapChanges[LatencyBPF.Maps.events] == .maxEntries(64 << 10))
        let both = try load(["comm", "kstack", "ustack"], events: EventsSpec(minLatencyNs: 1000, bufferKiB: 256))
        #expect(both.readOnly[g.notifyNewKeys] == nil, "an events ring carries events alone (what a build adopting the pins expects)")
        #expect(both.mapChanges[LatencyBPF.Maps.events] == .maxEntries(256 << 10))
        for by in [["kstack"], ["pid"], ["comm", "kstack"]] {
            let other = try load(by)
            #expect(other.readOnly[g.notifyNewKeys] == nil, "\(by)")
            #expect(other.mapChanges[LatencyBPF.Maps.events] == nil, "\(by): the ring stays 4 KiB")
        }
        #expect(try Self.plan(["comm", "ustack", "kstack"], type: ProbeTarget(type: .profile)).notifiesNewKeys, "a profile is told too")
    }

    @Test("KeyNotices reads each noticed process's mappings once, at the drain: its frames are named from them after /proc lost it")
    func noticesReadMappings() throws {
        let root = try Self.fakeProc([4242, 4343], path: Self.path)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let symbolizer = Self.symbolizer(root)
        let ring = RecordRing([Self.notice(4242), Self.notice(4242), Self.notice(4343), [1, 2, 3]])
        let notices = KeyNotices(ring: ring, symbolizer: symbolizer)
        #expect(notices.drain() == 4)
        #expect(symbolizer.processCount == 2)
        try FileManager.default.removeItem(atPath: root)  // both processes exit
        for tgid: UInt32 in [4242, 4343] {
            let frame = try #require(symbolizer.symbolize(tgid: tgid, ips: [0x401000]).first)
            #expect(frame.module == Self.path, "\(tgid): \(frame)")
        }
        // A process nobody told of is unknown once gone.
        #expect(symbolizer.symbolize(tgid: 4444, ips: [0x401000]).first?.module == "[unknown]")
        #expect(notices.pollFD == 1_000)
        notices.close()
        #expect(ring.isClosed && notices.pollFD == -1)
        notices.close()
        #expect(notices.drain() == 0, "closed: nothing read")
    }

    @Test("ProbeEvents of a ustack probe reads the mappings of each event's process; a notice record is never published nor consumed as an event")
    func eventsDivertNotices() throws {
        let root = try Self.fakeProc([77, 78], path: Self.path)
        defer { try? FileManager.default.removeItem(atPath: root) }
        let symbolizer = Self.symbolizer(root)
        let plan = try Self.plan(["ustack"])
        let ring = RecordRing([Self.event(77), Self.notice(77), Self.event(77), Self.event(78)]
                              + (0..<300).map { _ in Self.notice(77) } + [Self.event(79)])
        let events = ProbeEvents(ring: ring, spec: EventsSpec(minLatencyNs: 1000), plan: plan, layout: .own, kind: "call",
                                 symbolizer: symbolizer)
        #expect(events.drain() == 305, "every record is read, in batches")
        #expect(ring.left == 0)
        #expect(events.consumed == 4)
        #expect(events.feed.counts.published == 4)
        let subscription = events.feed.subscribe(after: nil, follow: false)
        defer { subscription.cancel() }
        var pids: [Int] = []
        var seqs: [UInt64] = []
        while let item = subscription.next() {
            guard case .event(let seq, _, let json) = item else { continue }
            let object = try #require(try JSONSerialization.jsonObject(with: Data(json.utf8)) as? [String: Any])
            pids.append(try #require(object["pid"] as? Int))
            seqs.append(seq)
        }
        #expect(pids == [77, 77, 78, 79])
        #expect(seqs == [1, 2, 3, 4], "notices take no sequence number")
        #expect(symbolizer.processCount == 3, "77 and 78 with their mappings, 79 (no /proc entry) without")
        try FileManager.default.removeItem(atPath: root)
        #expect(symbolizer.symbolize(tgid: 77, ips: [0x401000]).first?.module == Self.path)
        #expect(symbolizer.symbolize(tgid: 78, ips: [0x401000]).first?.module == Self.path, "an event's process")
        events.finish(.deleted)

        // Without a ustack part the events' processes are none of the symbolizer's business.
        let other = Self.symbolizer(try Self.fakeProc([80], path: Self.path))
        let plain = ProbeEvents(ring: RecordRing([Self.event(80)]), spec: EventsSpec(minLatencyNs: 1000), plan: try Self.plan(["comm"]),
                                layout: .own, kind: "call", symbolizer: other)
        #expect(plain.drain() == 1)
        #expect(other.processCount == 0)
        plain.finish(.deleted)
    }
}
