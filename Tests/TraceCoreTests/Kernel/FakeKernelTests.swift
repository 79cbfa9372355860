import Dispatch
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

private func hits(_ object: any LoadedObject) throws -> UInt64 {
    let entries = try object.readMap(CapabilityBPF.Maps.hits)
    return entries.reduce(0) { sum, entry in
        entry.values.reduce(sum) { $0 + $1.withUnsafeBytes { $0.loadUnaligned(as: UInt64.self) } }
    }
}

private let spec = LoadSpec(object: CapabilityBPF.object, programs: [.init(CapabilityBPF.Programs.capTracepoint)])
private let point = AttachPoint.tracepoint(category: "syscalls", name: "sys_enter_getpgid")

@Suite("FakeKernel test double")
struct FakeKernelTests {
    @Test("hits counts only while the program is attached and only for triggers that reach its point")
    func hitsCountWhileAttached() throws {
        let kernel = FakeKernel()
        let object = try kernel.load(spec)
        kernel.fire(.getpgid)
        #expect(try hits(object) == 0)
        let link = try object.attach(program: CapabilityBPF.Programs.capTracepoint, to: point)
        kernel.fire(.getpgid)
        kernel.fire(.uprobeTarget)
        kernel.fire(.getpgid)
        #expect(try hits(object) == 2)
        link.close()
        kernel.fire(.getpgid)
        #expect(try hits(object) == 2)
        object.close()
        #expect(kernel.isClean)
    }

    @Test("Scripted load and attach failures are thrown as scripted")
    func scriptedFailures() throws {
        let kernel = FakeKernel()
        kernel.failLoad(CapabilityBPF.Programs.capFentry, errno: .EPERM)
        kernel.failAttach(at: point, errno: .ENOENT)
        #expect(throws: KernelError(stage: .load, errno: .EPERM, operation: "load cap_fentry")) {
            _ = try kernel.load(LoadSpec(object: CapabilityBPF.object, programs: [.init(CapabilityBPF.Programs.capFentry)]))
        }
        let object = try kernel.load(spec)
        #expect(throws: KernelError(stage: .attach, errno: .ENOENT, operation: "attach to \(point)")) {
            _ = try object.attach(program: CapabilityBPF.Programs.capTracepoint, to: point)
        }
        object.close()
        #expect(kernel.isClean)
        #expect(kernel.loadCount == 1)
    }

    @Test("Scripted maps are returned per program and per live object; unscripted maps read empty")
    func scriptedMaps() throws {
        let kernel = FakeKernel()
        let stats = [MapEntry(key: [0, 0, 0, 0], values: [[1, 0, 0, 0, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0, 0, 0]])]
        kernel.setMap(LatencyBPF.Maps.stats, of: CapabilityBPF.Programs.capTracepoint, to: stats)
        let object = try kernel.load(spec)
        #expect(try object.readMap(LatencyBPF.Maps.stats) == stats)
        #expect(try object.readMap(LatencyBPF.Maps.procs) == [])
        let fake = try #require(object as? FakeObject)
        kernel.setMap(LatencyBPF.Maps.stats, of: fake, to: [])
        #expect(try object.readMap(LatencyBPF.Maps.stats) == [])
        object.close()
        #expect(throws: KernelError.self) { _ = try object.readMap(LatencyBPF.Maps.stats) }
    }

    @Test("Leaks and out-of-order closes are reported; repeated close is harmless")
    func leakTracking() throws {
        let kernel = FakeKernel()
        let object = try kernel.load(spec)
        let link = try object.attach(program: CapabilityBPF.Programs.capTracepoint, to: point)
        #expect(kernel.openObjects.count == 1)
        #expect(kernel.openLinks.count == 1)
        #expect(!kernel.isClean)
        let fake = try #require(object as? FakeObject)
        object.close()
        #expect(kernel.objectsClosedBeforeTheirLinks == [fake.id])
        link.close()
        link.close()
        object.close()
        #expect(kernel.redundantCloses == 2)
        #expect(kernel.openObjects.isEmpty && kernel.openLinks.isEmpty)
        #expect(!kernel.isClean)
        #expect(kernel.leakReport.contains("closed before its links"))
    }

    @Test("An object dropped without close() stays open in the books")
    func droppedObjectIsALeak() throws {
        let kernel = FakeKernel()
        do { _ = try kernel.load(spec) }
        #expect(kernel.openObjects.count == 1)
        #expect(kernel.openObjects.first?.droppedOpen == true)
    }

    @Test("Attaching through a closed object fails with EBADF")
    func attachAfterClose() throws {
        let kernel = FakeKernel()
        let object = try kernel.load(spec)
        object.close()
        do throws(KernelError) {
            _ = try object.attach(program: CapabilityBPF.Programs.capTracepoint, to: point)
            Issue.record("attach through a closed object succeeded")
        } catch {
            #expect(error.errno == .EBADF)
            #expect(error.stage == .attach)
        }
    }

    @Test("Concurrent loads, attaches, fires and closes are all accounted for")
    func concurrentUse() {
        let kernel = FakeKernel()
        DispatchQueue.concurrentPerform(iterations: 64) { _ in
            guard let object = try? kernel.load(spec), let link = try? object.attach(program: CapabilityBPF.Programs.capTracepoint, to: point) else {
                return
            }
            kernel.fire(.getpgid)
            _ = try? object.readMap(CapabilityBPF.Maps.hits)
            link.close()
            object.close()
        }
        #expect(kernel.loadCount == 64)
        #expect(kernel.attachCount == 64)
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("Program stats default to the hit count; scripted stats win")
    func programStats() throws {
        let kernel = FakeKernel()
        let object = try kernel.load(spec)
        let link = try object.attach(program: CapabilityBPF.Programs.capTracepoint, to: point)
        kernel.fire(.getpgid)
        #expect(object.programStats().map(\.runCount) == [1])
        kernel.setStats(ProgramStats(name: "cap_tracepoint", id: 7, runTimeNanoseconds: 900, runCount: 3), of: CapabilityBPF.Programs.capTracepoint)
        #expect(object.programStats() == [ProgramStats(name: "cap_tracepoint", id: 7, runTimeNanoseconds: 900, runCount: 3)])
        link.close()
        object.close()
    }
}
