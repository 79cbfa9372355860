import CLibBPF
import Foundation
import Glibc
import TraceCore

// MARK: - cgroup keys and filters

/// The cgroup check: real cgroups made under the host's cgroup2 mount (kubelet pods of both
/// drivers, a docker scope, a service), child processes moved into them making known numbers
/// of getppid calls, counted by cgroup and through filter.pod_uid, each number exact.
extension SelfTestRunner {
    static let cgroupWorkloadName = "tp-selftest-cg"

    func cgroupChecks() async -> [CheckResult] {
        var results: [CheckResult] = []
        for flavour in FlavourCatalog.chain(for: .syscall).map(\.flavour) {
            results.append(await cgroupCheck(flavour))
        }
        return results
    }

    /// A tree of cgroups under `<mount><top>`, made parents first and removed deepest first.
    final class CgroupTree {
        let mount: String
        let top: String
        private(set) var made: [String] = []

        init(mount: String, top: String) throws {
            self.mount = mount
            self.top = top
            try make("")
        }

        /// Makes `relative` (under the top) and its parents; returns its path under the mount.
        @discardableResult
        func make(_ relative: String) throws -> String {
            let full = top + relative
            var path = ""
            for part in full.split(separator: "/") {
                path += "/" + part
                if mkdir(mount + path, 0o755) == 0 {
                    made.append(path)
                } else if errno != EEXIST {
                    throw CgroupTreeError(message: "mkdir \(mount + path): \(String(cString: strerror(errno)))")
                }
            }
            return full
        }

        /// Removes every cgroup made (a cgroup just emptied can be busy for a moment).
        /// Returns the ones that could not be removed, with why.
        func remove() -> [String] {
            var left: [String] = []
            for path in made.sorted(by: { $0.count > $1.count }) {
                var tries = 0
                while rmdir(mount + path) != 0 {
                    let e = errno
                    if e == ENOENT { break }
                    tries += 1
                    if e != EBUSY || tries > 50 {
                        left.append("\(path): \(String(cString: strerror(e)))")
                        break
                    }
                    usleep(20_000)
                }
            }
            made = []
            return left
        }
    }

    struct CgroupTreeError: Error {
        var message: String
    }

    func cgroupCheck(_ flavour: Flavour) async -> CheckResult {
        let target = ProbeTarget(type: .syscall, name: "getppid")
        let name = "cgroups: syscall getppid by cgroup and filter.pod_uid, mechanisms [\(flavour.rawValue)]"
        let (predicted, reasons, capabilityRuledOut) = predict([flavour], target: target)
        let comm = Self.cgroupWorkloadName
        // Fresh pod UIDs each run, so that no leftover cgroup of an earlier run matches the filter.
        let podA = UUID().uuidString.lowercased(), podB = UUID().uuidString.lowercased()
        let ids = ["a1", "b2", "c3", "d4", "e5"].map { String(repeating: $0, count: 32) }
        var result = CheckResult(
            name: name, target: target.label, requestedMechanisms: [flavour.rawValue], expectedMechanism: predicted?.rawValue,
            mechanism: nil,
            expected: "by cgroup, filter.comm \(comm): calls == latency count == 1550, keys pod A container A = 100, pod A container B = 200, "
                + "pod B container C = 300, docker D = 400, tp-demo.service = 500, pod A container E (made after the probes) = 50, "
                + "each key's id the inode of its path, with its unit/runtime/container id/pod UID/QoS; "
                + "filter.pod_uid (pod A): calls == latency count == 350, keys A = 100, B = 200, E = 50; the tree removed after",
            actual: nil, status: "fail", pass: false, attempts: [], attachMilliseconds: 0, notes: reasons)
        func finish(_ ok: Bool, _ line: String) -> CheckResult {
            result.status = ok ? "pass" : "fail"
            result.pass = ok
            Self.log("[\(result.status)] \(name): \(line)")
            return result
        }

        let fact = report.kernel.cgroup2
        guard fact.layout != .none, let mount = fact.path else {
            result.status = "not applicable: no cgroup2"
            result.pass = nil
            result.notes.append("the capability report's kernel.cgroup2 has layout none: \(fact.error ?? "no cgroup2 mount")")
            Self.log("[\(result.status)] \(name): \(fact.error ?? "no cgroup2 mount")")
            return result
        }
        result.notes.append("cgroup2 at \(mount), layout \(fact.layout.rawValue), "
                            + (fact.wholeHierarchy ? "showing the whole hierarchy" : "not showing the whole hierarchy")
                            + "; filters compare " + (report.supports(.cgroupAncestor) && fact.wholeHierarchy
                                ? "ancestor ids (bpf_get_current_ancestor_cgroup_id)" : "through a cgroup array (bpf_current_task_under_cgroup)"))

        // The tree: pod A (burstable, systemd driver) with containers A and B, pod B
        // (besteffort, cgroupfs driver) with container C, docker container D, a service.
        let tree: CgroupTree
        let containerA: String, containerB: String, containerC: String, docker: String, service: String, podASlice: String
        do {
            tree = try CgroupTree(mount: mount, top: "/tp-selftest-\(pid)-\(flavour.rawValue)")
            podASlice = try tree.make("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(podA.replacingOccurrences(of: "-", with: "_")).slice")
            containerA = try tree.make(String(podASlice.dropFirst(tree.top.count)) + "/cri-containerd-\(ids[0]).scope")
            containerB = try tree.make(String(podASlice.dropFirst(tree.top.count)) + "/cri-containerd-\(ids[1]).scope")
            containerC = try tree.make("/kubepods/besteffort/pod\(podB)/\(ids[2])")
            docker = try tree.make("/system.slice/docker-\(ids[3]).scope")
            service = try tree.make("/system.slice/tp-demo.service")
        } catch {
            result.notes.append("cannot make the cgroup tree: \((error as? CgroupTreeError)?.message ?? "\(error)")")
            return finish(false, "cannot make the cgroup tree")
        }
        let containerE = podASlice + "/cri-containerd-\(ids[4]).scope"
        let expectedIdentity: [String: CgroupIdentity] = [
            containerA: CgroupIdentity(unit: "cri-containerd-\(ids[0]).scope", runtime: "containerd", containerID: ids[0], podUID: podA, qos: "burstable"),
            containerB: CgroupIdentity(unit: "cri-containerd-\(ids[1]).scope", runtime: "containerd", containerID: ids[1], podUID: podA, qos: "burstable"),
            containerC: CgroupIdentity(containerID: ids[2], podUID: podB, qos: "besteffort"),
            docker: CgroupIdentity(unit: "docker-\(ids[3]).scope", runtime: "docker", containerID: ids[3]),
            service: CgroupIdentity(unit: "tp-demo.service"),
            containerE: CgroupIdentity(unit: "cri-containerd-\(ids[4]).scope", runtime: "containerd", containerID: ids[4], podUID: podA, qos: "burstable"),
        ]
        let expectedKeys: [String: UInt64] = [containerA: 100, containerB: 200, containerC: 300, docker: 400, service: 500, containerE: 50]
        let expectedPod: [String: UInt64] = [containerA: 100, containerB: 200, containerE: 50]

        let keyedName = "selftest-cg-\(UInt32.random(in: 0...UInt32.max))"
        let podName = "selftest-pod-\(UInt32.random(in: 0...UInt32.max))"
        let byCgroup = AggregateSpec(by: ["cgroup"], value: "none")
        let started = ContinuousClock.now
        do {
            let keyed = try await manager.create(ProbeSpec(name: keyedName, target: target, mechanisms: [flavour.rawValue],
                                                           filter: ProbeFilter(comm: comm), aggregate: byCgroup)).0
            result.attempts = keyed.attempts
            result.mechanism = keyed.mechanism?.rawValue
            let pod = try await manager.create(ProbeSpec(name: podName, target: target, mechanisms: [flavour.rawValue],
                                                         filter: ProbeFilter(podUID: podA), aggregate: byCgroup)).0
            if pod.mechanism != keyed.mechanism {
                result.notes.append("the filter.pod_uid probe attached \(pod.mechanism?.rawValue ?? "nothing"), the keyed one \(keyed.mechanism?.rawValue ?? "nothing")")
                result.mechanism = nil
            }
        } catch {
            result.attachMilliseconds = Self.milliseconds(since: started)
            try? await manager.delete(keyedName)
            let left = tree.remove()
            if !left.isEmpty { result.notes.append("cgroups left behind: \(left.joined(separator: "; "))") }
            if result.mechanism == nil { result.attempts = error.attempts }
            if predicted == nil && result.mechanism == nil && left.isEmpty {
                result.status = capabilityRuledOut ? "unsupported here" : "target not in BTF here"
                result.pass = nil
                Self.log("[\(result.status)] \(name): nothing attached (\(error.attempts.map { "\($0.flavour.rawValue) \($0.outcome.rawValue)" }.joined(separator: ", ")))")
                return result
            }
            result.notes.append("expected \(predicted?.rawValue ?? "nothing") to attach, but: \(error.detail)")
            return finish(false, "a probe did not attach: \(error.detail)")
        }
        result.attachMilliseconds = Self.milliseconds(since: started)

        // The workloads, then a container of pod A made after the probes.
        var failures: [String] = []
        let runs: [(String, Int)] = [(containerA, 100), (containerB, 200), (containerC, 300), (docker, 400), (service, 500)]
        let mountPath = mount
        let ran: @Sendable ([(String, Int)]) async -> [String] = { runs in
            let box = FailureBox()
            await Self.onRenamedThread {
                for (path, calls) in runs {
                    let rc = tp_getppid_in_cgroup(mountPath + path, comm, calls)
                    if rc != 0 { box.add("workload in \(path): \(String(cString: strerror(-rc)))") }
                }
            }
            return box.items
        }
        failures += await ran(runs)
        do {
            _ = try tree.make(String(containerE.dropFirst(tree.top.count)))
            failures += await ran([(containerE, 50)])
        } catch {
            failures.append("cannot make \(containerE): \((error as? CgroupTreeError)?.message ?? "\(error)")")
        }

        // Read both probes while every cgroup exists (ids are checked against the inodes).
        var inodes: [String: UInt64] = [:]
        for path in expectedKeys.keys {
            var info = stat()
            if stat(mount + path, &info) == 0 { inodes[path] = UInt64(info.st_ino) }
        }
        var ok = failures.isEmpty
        result.notes += failures
        do {
            let metrics = try await manager.metrics(keyedName)
            var keys: [String: CheckResult.Actual.CgroupKey] = [:]
            for entry in metrics.aggregate?.entries ?? [] {
                guard entry.key.count == 1, case .cgroup(let id, let path, let container, let removed) = entry.key[0] else {
                    ok = false
                    result.notes.append("not a cgroup key: \(entry.key.map(\.text))")
                    continue
                }
                keys[path ?? "cgroup-id:\(id)"] = .init(id: id, calls: entry.calls, container: container, removed: removed)
            }
            let latency = metrics.latencyNanoseconds
            result.actual = .init(calls: metrics.calls, latencyCount: latency?.count,
                                  histogramCount: latency.map { $0.buckets.reduce(0) { $0 + $1.count } }, cgroups: keys)
            if metrics.calls != 1550 || latency?.count != 1550 || result.actual?.histogramCount != 1550 {
                ok = false
                result.notes.append("by cgroup: calls \(metrics.calls), latency count \(latency?.count.description ?? "none"), histogram count \(result.actual?.histogramCount?.description ?? "none"); expected 1550")
            }
            let found = keys.mapValues(\.calls)
            if found != expectedKeys {
                ok = false
                result.notes.append("by cgroup: expected \(expectedKeys.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }), got \(found.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" })")
            }
            for (path, key) in keys.sorted(by: { $0.key < $1.key }) where expectedKeys[path] != nil {
                if key.id != inodes[path] {
                    ok = false
                    result.notes.append("\(path): key id \(key.id), the directory's inode \(inodes[path]?.description ?? "unknown")")
                }
                if key.removed {
                    ok = false
                    result.notes.append("\(path): marked removed while it exists")
                }
                if key.container != expectedIdentity[path] {
                    ok = false
                    result.notes.append("\(path): identity \(key.container.map { "\($0)" } ?? "unresolved"), expected \(expectedIdentity[path].map { "\($0)" } ?? "?")")
                }
            }
        } catch {
            ok = false
            result.notes.append("reading the keyed probe failed: \(error.detail)")
        }
        do {
            let metrics = try await manager.metrics(podName)
            let keys = Dictionary((metrics.aggregate?.entries ?? []).map { ($0.key.map(\.text).joined(separator: ", "), $0.calls) }, uniquingKeysWith: +)
            result.actual?.podFilter = .init(podUID: podA, calls: metrics.calls, latencyCount: metrics.latencyNanoseconds?.count, keys: keys)
            if metrics.calls != 350 || metrics.latencyNanoseconds?.count != 350 {
                ok = false
                result.notes.append("filter.pod_uid: calls \(metrics.calls), latency count \(metrics.latencyNanoseconds?.count.description ?? "none"); expected 350")
            }
            if keys != expectedPod {
                ok = false
                result.notes.append("filter.pod_uid: expected \(expectedPod.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }), got \(keys.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" })")
            }
        } catch {
            ok = false
            result.notes.append("reading the filter.pod_uid probe failed: \(error.detail)")
        }
        try? await manager.delete(keyedName)
        try? await manager.delete(podName)
        let left = tree.remove()
        if !left.isEmpty {
            ok = false
            result.notes.append("cgroups left behind: \(left.joined(separator: "; "))")
        }
        if let problem = Self.mechanismProblem(predicted: predicted, chosen: result.mechanism) {
            ok = false
            result.notes.append(problem)
        }
        let summary = "\(result.mechanism ?? "none"), by cgroup calls \(result.actual?.calls.description ?? "unread") in \(result.actual?.cgroups?.count ?? 0) cgroups "
            + "(" + [containerA, containerB, containerC, docker, service, containerE].map { p in "\(result.actual?.cgroups?[p]?.calls.description ?? "-")" }.joined(separator: "/") + ")"
            + ", filter.pod_uid calls \(result.actual?.podFilter?.calls.description ?? "unread")"
            + " (" + [containerA, containerB, containerE].map { p in "\(result.actual?.podFilter?.keys[p]?.description ?? "-")" }.joined(separator: "/") + ")"
        return finish(ok, summary)
    }
}

/// Failures collected on the workload thread.
final class FailureBox: @unchecked Sendable {
    private let lock = NSLock()
    private var list: [String] = []
    func add(_ s: String) { lock.lock(); list.append(s); lock.unlock() }
    var items: [String] { lock.lock(); defer { lock.unlock() }; return list }
}
