import Foundation
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// cgroup filters from the spec to the programs' settings, on the fake kernel; the mount
/// discovery from mountinfo text. (The kernel side is in CgroupKernelTests.)
@Suite("cgroup filters and the cgroup2 mount")
struct CgroupFilterTests {
    let reaper = Reaper()

    func report(_ kernel: FakeKernel) -> CapabilityReport {
        let report = CapabilityProber(backend: kernel, reaper: reaper).probe()
        reaper.drain()
        return report
    }

    func spec(_ filter: ProbeFilter, by: [String]? = nil) -> ProbeSpec {
        ProbeSpec(name: "cg", target: ProbeTarget(type: .syscall, name: "read"), mechanisms: ["tracepoint"], filter: filter,
                  aggregate: by.map { AggregateSpec(by: $0) })
    }

    static let slice = CgroupMatch(path: "/system.slice", id: 0x1234, level: 1, directory: NSTemporaryDirectory())

    @Test("A resolved filter sets the ancestor check: mode, id and depth, and no cgroup array")
    func ancestorSettings() throws {
        let kernel = FakeKernel()
        kernel.fakeHost.cgroups = [.path("/system.slice"): Self.slice]
        let probe = try Planner(backend: kernel, reaper: reaper).attach(spec(ProbeFilter(cgroup: "/system.slice")), report: report(kernel)).get()
        let load = try #require(kernel.loadedSpecs.first { $0.object == LatencyBPF.object })
        let g = LatencyBPF.Globals.self
        #expect(load.readOnly[g.filterCgroupMode] == [1, 0, 0, 0])
        #expect(load.readOnly[g.filterCgroupId] == [0x34, 0x12, 0, 0, 0, 0, 0, 0])
        #expect(load.readOnly[g.filterCgroupLevel] == [1, 0, 0, 0])
        #expect(!kernel.calls.contains { if case .updateMap(_, LatencyBPF.Maps.filterCgroup) = $0 { true } else { false } })
        probe.detach(reaper: reaper)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("Without the ancestor helper the cgroup goes into the cgroup array before the programs attach")
    func underCgroupSettings() throws {
        let kernel = FakeKernel()
        kernel.fakeHost.cgroups = [.container("abcdefabcdef"): Self.slice]
        kernel.fakeHost.failFeature(.cgroupAncestor, errno: .EINVAL)
        let probe = try Planner(backend: kernel, reaper: reaper).attach(spec(ProbeFilter(containerID: "ABCDEFABCDEF")), report: report(kernel)).get()
        let load = try #require(kernel.loadedSpecs.first { $0.object == LatencyBPF.object })
        #expect(load.readOnly[LatencyBPF.Globals.filterCgroupMode] == [2, 0, 0, 0])
        let calls = kernel.calls
        let update = try #require(calls.firstIndex { if case .updateMap(_, LatencyBPF.Maps.filterCgroup) = $0 { true } else { false } })
        let attach = try #require(calls.lastIndex { if case .attach = $0 { true } else { false } })
        #expect(update < attach)
        probe.detach(reaper: reaper)
        reaper.drain()
        #expect(kernel.isClean, "\(kernel.leakReport)")
    }

    @Test("A filter naming no cgroup, or a cgroup key on a host without cgroup2, is one unsupported attempt and loads nothing")
    func refusals() throws {
        let kernel = FakeKernel()
        let report = report(kernel)
        let planner = Planner(backend: kernel, reaper: reaper)
        guard case .failure(let missing) = planner.attach(spec(ProbeFilter(podUID: "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f")), report: report) else {
            Issue.record("attached"); return
        }
        #expect(missing.attempts.count == 1 && missing.attempts[0].outcome == .unsupported)
        #expect(missing.attempts[0].message.hasPrefix("filter.pod_uid: "))
        var bare = report
        bare.kernel.cgroup2 = .absent("no cgroup2 filesystem is mounted")
        guard case .failure(let none) = planner.attach(spec(ProbeFilter(comm: "x"), by: ["pid", "cgroup"]), report: bare) else {
            Issue.record("attached"); return
        }
        #expect(none.attempts.map(\.message) == ["aggregate.by[1]: the cgroup key needs cgroup v2, and this host has none (no cgroup2 filesystem is mounted)"])
        #expect(kernel.loadedSpecs.allSatisfy { $0.object != LatencyBPF.object })
    }

    @Test("Spec checks: one cgroup filter at most, normalized paths, hex container ids, UUID pod UIDs with - or _")
    func validation() {
        func errors(_ f: ProbeFilter) -> [String] {
            spec(f).validate().map { "\($0.field): \($0.message)" }
        }
        #expect(errors(ProbeFilter(cgroup: "/system.slice/x.service")).isEmpty)
        #expect(errors(ProbeFilter(cgroup: "/")).isEmpty)
        #expect(errors(ProbeFilter(containerID: String(repeating: "ab", count: 32))).isEmpty)
        #expect(errors(ProbeFilter(podUID: "5f0c1d2e_3a4b_4c5d_8e9f_0a1b2c3d4e5f")).isEmpty)
        #expect(ProbeFilter(podUID: "5F0C1D2E_3A4B_4C5D_8E9F_0A1B2C3D4E5F").cgroupSelector == .pod("5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"))
        #expect(errors(ProbeFilter(cgroup: "/a", podUID: "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"))
            == ["filter.pod_uid: give one of filter.cgroup, filter.container_id and filter.pod_uid, not filter.cgroup and filter.pod_uid"])
        for bad in ["system.slice", "/a/../b", "/a//b", "/a/", "/a/./b"] {
            #expect(errors(ProbeFilter(cgroup: bad)).count == 1, "\(bad)")
        }
        for bad in ["abc", String(repeating: "a", count: 65), "ghijklmnopqr", "abcdefabcde-"] {
            #expect(errors(ProbeFilter(containerID: bad)).first?.hasPrefix("filter.container_id: must be a container id") == true, "\(bad)")
        }
        for bad in ["5f0c1d2e-3a4b-4c5d-8e9f", "5f0c1d2e-3a4b_4c5d-8e9f-0a1b2c3d4e5f", "zf0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"] {
            #expect(errors(ProbeFilter(podUID: bad)).first?.hasPrefix("filter.pod_uid: must be a pod UID") == true, "\(bad)")
        }
    }

    static let mountinfo = """
        24 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
        26 24 0:22 / /sys rw,nosuid,nodev,noexec,relatime shared:7 - sysfs sysfs rw
        27 26 0:23 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:8 - tmpfs tmpfs ro,mode=755
        28 27 0:24 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate
        29 27 0:25 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,memory
        """

    @Test("The cgroup2 mount from mountinfo: hybrid, unified, elsewhere (escaped), v1 only, none")
    func mountDiscovery() {
        let hybrid = Cgroup2Fact.find(mountinfo: Self.mountinfo) { $0 == "/sys/fs/cgroup/unified" }
        #expect(hybrid == Cgroup2Fact(path: "/sys/fs/cgroup/unified", layout: .hybrid, wholeHierarchy: true))
        let unified = Cgroup2Fact.find(mountinfo: "30 26 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw") { _ in false }
        #expect(unified == Cgroup2Fact(path: "/sys/fs/cgroup", layout: .unified, wholeHierarchy: false))
        let odd = Cgroup2Fact.find(mountinfo: "30 26 0:26 / /mnt/cg\\0402 rw - cgroup2 none rw") { _ in true }
        #expect(odd.path == "/mnt/cg 2" && odd.layout == .unified)
        let v1 = Cgroup2Fact.find(mountinfo: "29 27 0:25 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory") { _ in true }
        #expect(v1.layout == .none && v1.path == nil && v1.error?.contains("only cgroup v1") == true)
        #expect(Cgroup2Fact.find(mountinfo: "") { _ in true }.layout == .none)
    }
}
