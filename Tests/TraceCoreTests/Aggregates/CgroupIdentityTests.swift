import Foundation
import Testing
@testable import TraceCore

/// What the agent reads from a cgroup key's path: unit, container, pod.
@Suite("Cgroup identity")
struct CgroupIdentityTests {
    static let id = String(repeating: "0123456789abcdef", count: 4)
    static let other = String(repeating: "fedcba9876543210", count: 4)
    static let uid = "1234abcd-5678-90ef-1234-567890abcdef"
    /// The same UID as the kubelet's systemd driver writes it in a slice name.
    static let escaped = "1234abcd_5678_90ef_1234_567890abcdef"

    static func parse(_ path: String) -> CgroupIdentity { CgroupIdentity.parse(path) }

    @Test("kubelet systemd driver, burstable pod, containerd container")
    func systemdBurstableContainerd() {
        let path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(Self.escaped).slice/cri-containerd-\(Self.id).scope"
        #expect(Self.parse(path) == CgroupIdentity(
            unit: "cri-containerd-\(Self.id).scope", runtime: "containerd", containerID: Self.id, podUID: Self.uid, qos: "burstable"))
    }

    @Test("kubelet systemd driver, guaranteed pod (no QoS slice), cri-o container")
    func systemdGuaranteedCrio() {
        let path = "/kubepods.slice/kubepods-pod\(Self.escaped).slice/crio-\(Self.id).scope"
        #expect(Self.parse(path) == CgroupIdentity(
            unit: "crio-\(Self.id).scope", runtime: "cri-o", containerID: Self.id, podUID: Self.uid, qos: "guaranteed"))
    }

    @Test("kubelet systemd driver, besteffort pod, docker container (cri-dockerd)")
    func systemdBestEffortDocker() {
        let path = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(Self.escaped).slice/docker-\(Self.id).scope"
        #expect(Self.parse(path) == CgroupIdentity(
            unit: "docker-\(Self.id).scope", runtime: "docker", containerID: Self.id, podUID: Self.uid, qos: "besteffort"))
    }

    @Test("The pod slice itself gives the pod and its QoS class, no container and no unit")
    func systemdPodSlice() {
        let path = "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod\(Self.escaped).slice"
        #expect(Self.parse(path) == CgroupIdentity(podUID: Self.uid, qos: "besteffort"))
        #expect(Self.parse("/kubepods.slice/kubepods-pod\(Self.escaped).slice") == CgroupIdentity(podUID: Self.uid, qos: "guaranteed"))
    }

    @Test("cri-o's conmon scope in a pod is not a container")
    func crioConmon() {
        let path = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(Self.escaped).slice/crio-conmon-\(Self.id).scope"
        #expect(Self.parse(path) == CgroupIdentity(unit: "crio-conmon-\(Self.id).scope", podUID: Self.uid, qos: "burstable"))
        #expect(Self.parse("/system.slice/crio-conmon-\(Self.id).scope") == CgroupIdentity(unit: "crio-conmon-\(Self.id).scope"))
    }

    @Test("kubelet cgroupfs driver: a bare id says nothing about the runtime")
    func cgroupfsBareID() {
        #expect(Self.parse("/kubepods/burstable/pod\(Self.uid)/\(Self.id)") == CgroupIdentity(
            containerID: Self.id, podUID: Self.uid, qos: "burstable"))
        #expect(Self.parse("/kubepods/besteffort/pod\(Self.uid)/\(Self.id)") == CgroupIdentity(
            containerID: Self.id, podUID: Self.uid, qos: "besteffort"))
        #expect(Self.parse("/kubepods/pod\(Self.uid)/\(Self.id)") == CgroupIdentity(
            containerID: Self.id, podUID: Self.uid, qos: "guaranteed"))
        #expect(Self.parse("/kubepods/pod\(Self.uid)") == CgroupIdentity(podUID: Self.uid, qos: "guaranteed"))
    }

    @Test("kubelet cgroupfs driver: a runtime prefix names the runtime")
    func cgroupfsPrefixed() {
        #expect(Self.parse("/kubepods/besteffort/pod\(Self.uid)/crio-\(Self.id)") == CgroupIdentity(
            runtime: "cri-o", containerID: Self.id, podUID: Self.uid, qos: "besteffort"))
        #expect(Self.parse("/kubepods/pod\(Self.uid)/cri-containerd-\(Self.id)") == CgroupIdentity(
            runtime: "containerd", containerID: Self.id, podUID: Self.uid, qos: "guaranteed"))
        #expect(Self.parse("/kubepods/burstable/pod\(Self.uid)/docker-\(Self.id)") == CgroupIdentity(
            runtime: "docker", containerID: Self.id, podUID: Self.uid, qos: "burstable"))
        #expect(Self.parse("/kubepods/burstable/pod\(Self.uid)/crio-conmon-\(Self.id)") == CgroupIdentity(
            podUID: Self.uid, qos: "burstable"))
    }

    @Test("docker: systemd scope, cgroupfs directory, and docker in docker (innermost wins)")
    func docker() {
        #expect(Self.parse("/system.slice/docker-\(Self.id).scope") == CgroupIdentity(
            unit: "docker-\(Self.id).scope", runtime: "docker", containerID: Self.id))
        #expect(Self.parse("/docker/\(Self.id)") == CgroupIdentity(runtime: "docker", containerID: Self.id))
        #expect(Self.parse("/docker/\(Self.other)/docker/\(Self.id)") == CgroupIdentity(runtime: "docker", containerID: Self.id))
        #expect(Self.parse("/system.slice/docker.service") == CgroupIdentity(unit: "docker.service"))
    }

    @Test("containerd without Kubernetes: nerdctl's systemd scope")
    func nerdctl() {
        #expect(Self.parse("/system.slice/nerdctl-\(Self.id).scope") == CgroupIdentity(
            unit: "nerdctl-\(Self.id).scope", runtime: "containerd", containerID: Self.id))
    }

    @Test("podman: rootful and rootless scopes, the inner `container` cgroup, cgroupfs, split cgroups")
    func podman() {
        let container = CgroupIdentity(unit: "libpod-\(Self.id).scope", runtime: "podman", containerID: Self.id)
        #expect(Self.parse("/machine.slice/libpod-\(Self.id).scope") == container)
        #expect(Self.parse("/machine.slice/libpod-\(Self.id).scope/container") == container)
        #expect(Self.parse("/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-\(Self.id).scope") == container)
        #expect(Self.parse("/libpod_parent/libpod-\(Self.id)") == CgroupIdentity(runtime: "podman", containerID: Self.id))
        #expect(Self.parse("/system.slice/nginx.service/libpod-payload-\(Self.id)") == CgroupIdentity(
            unit: "nginx.service", runtime: "podman", containerID: Self.id))
    }

    @Test("podman's conmon scope is not a container")
    func podmanConmon() {
        #expect(Self.parse("/machine.slice/libpod-conmon-\(Self.id).scope") == CgroupIdentity(unit: "libpod-conmon-\(Self.id).scope"))
    }

    @Test("What comes before a layout does not matter: a test root, a runtime's service")
    func prefixes() {
        let pod = "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(Self.escaped).slice/cri-containerd-\(Self.id).scope"
        let expected = CgroupIdentity(
            unit: "cri-containerd-\(Self.id).scope", runtime: "containerd", containerID: Self.id, podUID: Self.uid, qos: "burstable")
        #expect(Self.parse("/tp-test-123/" + pod) == expected)
        #expect(Self.parse("/system.slice/containerd.service/" + pod) == expected)
        #expect(Self.parse("/tp-test-123/kubepods/burstable/pod\(Self.uid)/\(Self.id)") == CgroupIdentity(
            containerID: Self.id, podUID: Self.uid, qos: "burstable"))
    }

    @Test("A node that is a container (kind): the pod inside it replaces the node's container")
    func nestedNode() {
        let node = "/system.slice/docker-\(Self.other).scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice"
        let pod = node + "/kubelet-kubepods-besteffort-pod\(Self.escaped).slice"
        #expect(Self.parse(pod + "/cri-containerd-\(Self.id).scope") == CgroupIdentity(
            unit: "cri-containerd-\(Self.id).scope", runtime: "containerd", containerID: Self.id, podUID: Self.uid, qos: "besteffort"))
        #expect(Self.parse(pod) == CgroupIdentity(unit: "docker-\(Self.other).scope", podUID: Self.uid, qos: "besteffort"))
        #expect(Self.parse(node) == CgroupIdentity(unit: "docker-\(Self.other).scope", runtime: "docker", containerID: Self.other))
    }

    @Test("A static pod's UID is the 32 hex digits of an MD5 sum")
    func staticPod() {
        let uid = "6d4e2fdcb6a0c1a2b3c4d5e6f708192a"
        #expect(Self.parse("/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod\(uid).slice") == CgroupIdentity(
            podUID: uid, qos: "burstable"))
        #expect(Self.parse("/kubepods/pod\(uid)") == CgroupIdentity(podUID: uid, qos: "guaranteed"))
    }

    @Test("A pod UID is normalized to lowercase")
    func uppercasePodUID() {
        #expect(Self.parse("/kubepods.slice/kubepods-pod\(Self.escaped.uppercased()).slice") == CgroupIdentity(podUID: Self.uid, qos: "guaranteed"))
    }

    @Test("A runtime prefix allows ids of 12 to 64 digits; a bare id must have 64")
    func idLengths() {
        let short = String(Self.id.prefix(12))
        #expect(Self.parse("/system.slice/docker-\(short).scope") == CgroupIdentity(
            unit: "docker-\(short).scope", runtime: "docker", containerID: short))
        #expect(Self.parse("/system.slice/docker-\(Self.id.prefix(11)).scope") == CgroupIdentity(unit: "docker-\(Self.id.prefix(11)).scope"))
        #expect(Self.parse("/system.slice/docker-\(Self.id)0.scope") == CgroupIdentity(unit: "docker-\(Self.id)0.scope"))
        #expect(Self.parse("/docker/\(short)") == CgroupIdentity())
    }

    @Test("Paths that name no container, pod or unit", arguments: [
        "", "/", "//", "garbage", "not/a/cgroup path", "/system.slice", "/user.slice/user-1000.slice",
        "/kubepods.slice", "/kubepods.slice/kubepods-burstable.slice", "/kubepods/burstable", "/kubepods",
        "/" + String(Self.id.dropLast()),                        // 63 hex digits
        "/" + Self.id + "0",                                   // 65
        "/" + Self.id.uppercased(),                            // ids are lowercase
        "/docker/" + Self.id.uppercased(),
        "/" + Self.id.dropLast() + "g",                        // not hex
        "/pod\(Self.uid)",                                      // a pod directory outside kubepods
        "/kubepods/guaranteed/pod\(Self.uid)",                  // no such QoS level
        "/kubepods.slice/kubepods-podnot_a_uid.slice",
        "/kubepods.slice/kubepods-pod\(Self.escaped)x.slice",
        "/kubepods.slice/other-pod\(Self.escaped).slice",
        "/.scope", "/.service",
    ])
    func nothing(path: String) {
        let identity = Self.parse(path)
        #expect(identity == CgroupIdentity())
        #expect(identity.isEmpty)
    }

    @Test("Units without a container: services, sessions, scopes with a non-hex or uppercase id", arguments: [
        ("/system.slice/nginx.service", "nginx.service"),
        ("/user.slice/user-1000.slice/session-3.scope", "session-3.scope"),
        ("/init.scope", "init.scope"),
        ("/system.slice/sshd.socket", "sshd.socket"),
        ("/system.slice/data.mount", "data.mount"),
        ("/system.slice/dev-sda2.swap", "dev-sda2.swap"),
        ("/system.slice/docker-.scope", "docker-.scope"),
        ("/system.slice/docker-\(Self.id.uppercased()).scope", "docker-\(Self.id.uppercased()).scope"),
        ("/system.slice/nginx.service/\(Self.id.dropLast())", "nginx.service"),
    ] as [(String, String)])
    func unitOnly(path: String, unit: String) {
        #expect(Self.parse(path) == CgroupIdentity(unit: unit))
    }

    @Test("JSON: all five members, null where not set; decodes back")
    func json() throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        #expect(String(decoding: try encoder.encode(CgroupIdentity(unit: "nginx.service")), as: UTF8.self)
            == #"{"id":null,"pod_uid":null,"qos":null,"runtime":null,"unit":"nginx.service"}"#)
        let full = CgroupIdentity(unit: "crio-\(Self.id).scope", runtime: "cri-o", containerID: Self.id, podUID: Self.uid, qos: "burstable")
        let text = String(decoding: try encoder.encode(full), as: UTF8.self)
        #expect(text == #"{"id":"\#(Self.id)","pod_uid":"\#(Self.uid)","qos":"burstable","runtime":"cri-o","unit":"crio-\#(Self.id).scope"}"#)
        #expect(try JSONDecoder().decode(CgroupIdentity.self, from: Data(text.utf8)) == full)
        #expect(try JSONDecoder().decode(CgroupIdentity.self, from: Data("{}".utf8)) == CgroupIdentity())
    }

    @Test("isEmpty is false when any field is set")
    func isEmpty() {
        #expect(CgroupIdentity().isEmpty)
        #expect(!CgroupIdentity(qos: "burstable").isEmpty)
        #expect(!CgroupIdentity(unit: "x.service").isEmpty)
    }
}
