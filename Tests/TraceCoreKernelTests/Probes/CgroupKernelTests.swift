import CKernelOracle
import CLibBPF
import Foundation
import Glibc
import Synchronization
import Testing
@testable import TraceCore
import TraceCoreTestSupport

/// cgroup filters and keys on the real kernel with real cgroups: kubelet (systemd and
/// cgroupfs drivers), docker and systemd-service cgroups made under the host's cgroup2
/// mount, child processes moved into them making known numbers of getppid calls.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("CgroupKernelTests") || RootRequirement.mustRun,
                             "needs root, a real kernel and a cgroup2 mount"))
struct CgroupKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))

    static let podA = "5f0c1d2e-3a4b-4c5d-8e9f-0a1b2c3d4e5f"
    static let podB = "9a8b7c6d-5e4f-4a3b-9c2d-1e0f9a8b7c6d"
    static let idA = String(repeating: "a1", count: 32)
    static let idB = String(repeating: "b2", count: 32)
    static let idC = String(repeating: "c3", count: 32)
    static let idD = String(repeating: "d4", count: 32)
    static let idE = String(repeating: "e5", count: 32)

    /// A tree of cgroups under `<mount>/tp-kt-<pid>-<n>`, removed (deepest first) at the end.
    final class Tree {
        let mount: String
        let top: String
        private(set) var made: [String] = []

        init(_ tag: String) throws {
            let fact = Cgroup2Fact.inspect()
            mount = try #require(fact.path, "no cgroup2 mount: \(fact.error ?? "")")
            top = "/tp-kt-\(getpid())-\(tag)"
            try make(top)
        }

        /// Makes `relative` (under the tree's top) and its parents; returns its path under the mount.
        @discardableResult
        func make(_ relative: String) throws -> String {
            let full = relative.hasPrefix(top) ? relative : top + relative
            var path = ""
            for part in full.split(separator: "/") {
                path += "/" + part
                if mkdir(mount + path, 0o755) == 0 { made.append(path) } else if errno != EEXIST {
                    throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO)
                }
            }
            return full
        }

        /// `calls` getppid calls from a process named `comm` in `path` (under the mount).
        func run(_ path: String, comm: String, calls: Int) {
            let rc = tp_getppid_in_cgroup(mount + path, comm, calls)
            #expect(rc == 0, "workload in \(path): \(rc)")
        }

        func remove(_ path: String) {
            rmdir(mount + path)
            made.removeAll { $0 == path }
        }

        deinit {
            for path in made.sorted(by: { $0.count > $1.count }) { rmdir(mount + path) }
        }
    }

    /// Pod A (burstable, systemd driver) with containers A and B, pod B (besteffort, cgroupfs
    /// driver) with container C, docker container D (systemd driver) and a service.
    struct Layout {
        let podA: String, containerA: String, containerB: String
        let podB: String, containerC: String
        let docker: String, service: String, systemSlice: String
        init(_ t: Tree) throws {
            let under = CgroupKernelTests.podA.replacingOccurrences(of: "-", with: "_")
            podA = try t.make("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(under).slice")
            containerA = try t.make(podA + "/cri-containerd-\(CgroupKernelTests.idA).scope")
            containerB = try t.make(podA + "/cri-containerd-\(CgroupKernelTests.idB).scope")
            podB = try t.make("/kubepods/besteffort/pod\(CgroupKernelTests.podB)")
            containerC = try t.make(podB + "/\(CgroupKernelTests.idC)")
            systemSlice = try t.make("/system.slice")
            docker = try t.make("/system.slice/docker-\(CgroupKernelTests.idD).scope")
            service = try t.make("/system.slice/tp-demo.service")
        }

        /// Every workload once: 100, 200, 300, 400 and 500 calls.
        func runAll(_ t: Tree, comm: String) {
            t.run(containerA, comm: comm, calls: 100)
            t.run(containerB, comm: comm, calls: 200)
            t.run(containerC, comm: comm, calls: 300)
            t.run(docker, comm: comm, calls: 400)
            t.run(service, comm: comm, calls: 500)
        }
    }

    init() async throws {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    /// The report, with the ancestor helper reported missing when `underCgroup` (so both of
    /// the kernel-side checks run here).
    func manager(underCgroup: Bool = false) async -> ProbeManager {
        var report = await Self.store.get()
        if underCgroup {
            report.features = report.features.map { r in
                var r = r
                if r.subject == .feature(.cgroupAncestor) { r.status = .unsupported }
                return r
            }
        }
        let fixed = report
        return ProbeManager(planner: Planner(backend: Self.backend), maxProbes: 64, report: { fixed })
    }

    static func calls(_ a: KeyedAggregate) -> [String: UInt64] {
        Dictionary(a.entries.map { ($0.key[0].text, $0.calls) }, uniquingKeysWith: +)
    }

    @Test("The capability report names the cgroup2 mount: hybrid here, at /sys/fs/cgroup/unified, showing the whole hierarchy")
    func reportNamesTheMount() async throws {
        let facts = await Self.store.get().kernel
        let text = try String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8)
        let v2 = text.split(separator: "\n").filter { $0.contains(" - cgroup2 ") }.map { String($0.split(separator: " ")[4]) }
        #expect(v2.contains(facts.cgroup2.path ?? "-"), "mountinfo lists cgroup2 at \(v2)")
        let v1 = text.contains(" - cgroup ")
        #expect(facts.cgroup2.layout == (v1 ? .hybrid : .unified))
        #expect(facts.cgroup2.wholeHierarchy == (access((facts.cgroup2.path ?? "") + "/cgroup.events", F_OK) != 0))
        #expect(oracle_fs_magic_is(facts.cgroup2.path ?? "/", 0x6367_7270) == 1)
    }

    @Test("by cgroup: exact calls per cgroup, paths under the mount and what they say", arguments: ["tp_btf", "tracepoint"])
    func keyedByCgroup(mechanism: String) async throws {
        let tree = try Tree("keys-\(mechanism)")
        let layout = try Layout(tree)
        let manager = await manager()
        let comm = "kt-cg-key"
        _ = try await manager.create(ProbeSpec(name: "cg-keys", target: ProbeTarget(type: .syscall, name: "getppid"), mechanisms: [mechanism],
                                               filter: ProbeFilter(comm: comm), aggregate: AggregateSpec(by: ["cgroup"], value: "none")))
        layout.runAll(tree, comm: comm)
        let metrics = try await manager.metrics("cg-keys")
        let a = try #require(metrics.aggregate)
        #expect(Self.calls(a) == [layout.containerA: 100, layout.containerB: 200, layout.containerC: 300, layout.docker: 400, layout.service: 500])
        #expect(metrics.calls == 1500)
        for entry in a.entries {
            guard case .cgroup(let id, let path?, let container?, let removed) = entry.key[0] else {
                Issue.record("unresolved cgroup key \(entry.key)")
                continue
            }
            var info = stat()
            #expect(stat(tree.mount + path, &info) == 0 && UInt64(info.st_ino) == id, "the id is the directory's inode")
            #expect(!removed)
            #expect(container == CgroupIdentity.parse(path))
        }
        let byPath = Dictionary(uniqueKeysWithValues: a.entries.compactMap { e -> (String, CgroupIdentity)? in
            guard case .cgroup(_, let path?, let c?, _) = e.key[0] else { return nil }
            return (path, c)
        })
        #expect(byPath[layout.containerA]?.containerID == Self.idA)
        #expect(byPath[layout.containerA]?.podUID == Self.podA)
        #expect(byPath[layout.containerA]?.qos == "burstable")
        #expect(byPath[layout.containerC]?.containerID == Self.idC)
        #expect(byPath[layout.containerC]?.podUID == Self.podB)
        #expect(byPath[layout.containerC]?.qos == "besteffort")
        #expect(byPath[layout.docker]?.containerID == Self.idD)
        #expect(byPath[layout.docker]?.runtime == "docker")
        #expect(byPath[layout.service]?.unit == "tp-demo.service")
        #expect(byPath[layout.service]?.containerID == nil)

        // A cgroup removed while keyed keeps its key and last path, marked removed once
        // the path is checked again (at most every 5 s).
        tree.remove(layout.service)
        try await Task.sleep(for: .milliseconds(5200))
        let after = try #require(try await manager.metrics("cg-keys").aggregate)
        let gone = try #require(after.entries.first { $0.key[0].text == layout.service })
        guard case .cgroup(_, let path, _, let removed) = gone.key[0] else { Issue.record("not a cgroup key"); return }
        #expect(path == layout.service && removed)
        #expect(gone.calls == 500)
        await manager.removeAll()
    }

    @Test("filter.pod_uid counts the pod's two containers and nothing else, and a container made after the probe",
          arguments: [("tp_btf", false), ("tracepoint", false), ("tp_btf", true), ("tracepoint", true)])
    func podFilter(mechanism: String, underCgroup: Bool) async throws {
        let tree = try Tree("pod-\(mechanism)-\(underCgroup)")
        let layout = try Layout(tree)
        let manager = await manager(underCgroup: underCgroup)
        let comm = "kt-cg-pod"
        let probe = try await manager.create(ProbeSpec(name: "cg-pod", target: ProbeTarget(type: .syscall, name: "getppid"), mechanisms: [mechanism],
                                                       filter: ProbeFilter(podUID: Self.podA), aggregate: AggregateSpec(by: ["cgroup", "comm"], value: "none"))).0
        #expect(probe.mechanism?.rawValue == mechanism)
        layout.runAll(tree, comm: comm)
        let later = try tree.make(layout.podA + "/cri-containerd-\(Self.idE).scope")
        tree.run(later, comm: comm, calls: 50)
        let metrics = try await manager.metrics("cg-pod")
        #expect(metrics.calls == 350, "pod A: 100 + 200, and 50 from the container made later")
        let a = try #require(metrics.aggregate)
        #expect(Self.calls(a) == [layout.containerA: 100, layout.containerB: 200, later: 50])
        await manager.removeAll()
    }

    @Test("filter.cgroup takes the cgroup and its descendants; filter.container_id a 12-digit prefix",
          arguments: [("tp_btf", false), ("tracepoint", true)])
    func pathAndContainerFilters(mechanism: String, underCgroup: Bool) async throws {
        let tree = try Tree("path-\(mechanism)-\(underCgroup)")
        let layout = try Layout(tree)
        let manager = await manager(underCgroup: underCgroup)
        let target = ProbeTarget(type: .syscall, name: "getppid")
        _ = try await manager.create(ProbeSpec(name: "cg-slice", target: target, mechanisms: [mechanism], filter: ProbeFilter(cgroup: layout.systemSlice)))
        _ = try await manager.create(ProbeSpec(name: "cg-ctr", target: target, mechanisms: [mechanism], filter: ProbeFilter(containerID: String(Self.idC.prefix(12)))))
        layout.runAll(tree, comm: "kt-cg-path")
        #expect(try await manager.metrics("cg-slice").calls == 900, "docker-D 400 + tp-demo.service 500")
        #expect(try await manager.metrics("cg-ctr").calls == 300, "container C")
        await manager.removeAll()
    }

    @Test("A filter naming no cgroup is refused with the field and what was looked for; the kernel keeps nothing")
    func unknownCgroup() async throws {
        let manager = await manager()
        Reaper.shared.drain()
        let before = oracle_bpf_fd_count()
        let target = ProbeTarget(type: .syscall, name: "getppid")
        for (filter, field) in [(ProbeFilter(cgroup: "/tp-no-such-cgroup-\(getpid())"), "filter.cgroup"),
                                (ProbeFilter(containerID: String(repeating: "f", count: 64)), "filter.container_id"),
                                (ProbeFilter(podUID: "00000000-0000-4000-8000-000000000000"), "filter.pod_uid")] {
            do {
                _ = try await manager.create(ProbeSpec(name: "cg-none", target: target, filter: filter))
                Issue.record("\(field) naming nothing was accepted")
            } catch {
                #expect(error.kind == .attachFailed)
                #expect(error.attempts.first?.message.hasPrefix("\(field): no cgroup") == true, "\(error.attempts)")
            }
        }
        #expect(oracle_bpf_fd_count() == before)
    }

    @Test("A cgroup's path: found by handle the moment it exists; kept and marked removed when it goes; forgotten after the retention")
    func pathsAgeOut() throws {
        let tree = try Tree("age")
        let path = try tree.make("/docker-\(Self.idD).scope")
        let id = try #require(CgroupPaths.inode(tree.mount + path))
        let now = Mutex(ContinuousClock.now)
        let paths = CgroupPaths(root: tree.mount, recheck: .seconds(5), retention: .seconds(60), now: { now.withLock { $0 } })
        let found = try #require(paths.resolve(id))
        #expect(found.path == path && !found.removed && found.identity.containerID == Self.idD)
        tree.remove(path)
        #expect(paths.resolve(id)?.removed == false, "not checked again within 5 s")
        now.withLock { $0 += .seconds(6) }
        #expect(paths.resolve(id) == CgroupPaths.Known(path: path, identity: found.identity, removed: true))
        now.withLock { $0 += .seconds(59) }
        #expect(paths.resolve(id)?.removed == true)
        now.withLock { $0 += .seconds(2) }
        #expect(paths.resolve(id) == nil, "forgotten 60 s after it was seen gone")
    }
}
