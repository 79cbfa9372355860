/// What a cgroup v2 path says about what runs in it.
///
/// Read from the path alone, component by component, with the naming that the container
/// runtimes and the kubelet use for the cgroups they create:
/// - systemd driver: runc names a container's scope `<prefix>-<id>.scope`, where the prefix
///   is `docker`, `cri-containerd`, `crio`, `nerdctl` or `libpod`; the kubelet names a pod's
///   slice `kubepods[-<qos>]-pod<uid>.slice` with the UID's dashes written as underscores.
/// - cgroupfs driver: `kubepods[/<qos>]/pod<uid>/<id>`, `docker/<id>`, `crio-<id>`,
///   `libpod-<id>`.
///
/// Monitor cgroups (`crio-conmon-<id>`, `libpod-conmon-<id>`) are not containers: what follows
/// their prefix is not a hex id, so they give no container.
public struct CgroupIdentity: Sendable, Hashable, Codable {
    /// The innermost systemd unit (`nginx.service`, `docker-<id>.scope`, `session-3.scope`), from a path component ending in .service/.scope/.socket/.mount/.swap (not .slice).
    public var unit: String?
    /// `docker`, `containerd`, `cri-o`, `podman` (lowercase) when a container id was found.
    public var runtime: String?
    /// The container id (lowercase hex, usually 64 chars).
    public var containerID: String?
    /// The kubelet pod UID with dashes (underscores of the systemd driver normalized).
    public var podUID: String?
    /// `guaranteed`, `burstable` or `besteffort` for a kubelet pod cgroup.
    public var qos: String?

    public init(unit: String? = nil, runtime: String? = nil, containerID: String? = nil, podUID: String? = nil, qos: String? = nil) {
        self.unit = unit
        self.runtime = runtime
        self.containerID = containerID
        self.podUID = podUID
        self.qos = qos
    }

    /// Whether no field is set.
    public var isEmpty: Bool {
        unit == nil && runtime == nil && containerID == nil && podUID == nil && qos == nil
    }

    /// Parses a path relative to the cgroup2 mount (leading "/"). Never fails: unknown layouts give all-nil fields (except unit when a unit component exists).
    ///
    /// Layouts are recognised anywhere in the path, so a prefix such as
    /// `/system.slice/containerd.service/` or a test root does not matter. The innermost
    /// container component wins; a pod found below a container (a Kubernetes node that is
    /// itself a container, as with kind) drops that outer container.
    public static func parse(_ path: String) -> CgroupIdentity {
        var unit: Substring?
        var container: (runtime: String?, id: Substring)?
        var pod: (uid: String, qos: String)?
        var parent: Substring = ""
        var grandparent: Substring = ""
        for component in path.split(separator: "/") {
            if isUnit(component) { unit = component }
            if let found = systemdPod(component) ?? cgroupfsPod(component, parent: parent, grandparent: grandparent) {
                pod = found
                container = nil
            } else if let found = containerComponent(component, parent: parent) {
                container = found
            }
            grandparent = parent
            parent = component
        }
        return CgroupIdentity(
            unit: unit.map(String.init), runtime: container?.runtime, containerID: container.map { String($0.id) },
            podUID: pod?.uid, qos: pod?.qos)
    }

    private enum CodingKeys: String, CodingKey {
        case unit, runtime, id, podUID = "pod_uid", qos
    }

    public init(from decoder: any Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        self.init(
            unit: try c.decodeIfPresent(String.self, forKey: .unit),
            runtime: try c.decodeIfPresent(String.self, forKey: .runtime),
            containerID: try c.decodeIfPresent(String.self, forKey: .id),
            podUID: try c.decodeIfPresent(String.self, forKey: .podUID),
            qos: try c.decodeIfPresent(String.self, forKey: .qos))
    }

    /// Always writes all five members, `null` where a field is not set.
    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        for (value, key) in [(unit, CodingKeys.unit), (runtime, .runtime), (containerID, .id), (podUID, .podUID), (qos, .qos)] {
            if let value { try c.encode(value, forKey: key) } else { try c.encodeNil(forKey: key) }
        }
    }
}

extension CgroupIdentity {
    private static let unitSuffixes = [".service", ".scope", ".socket", ".mount", ".swap"]

    /// Scope and directory prefixes that name a container's runtime, most specific first.
    private static let runtimePrefixes: [(prefix: String, runtime: String)] = [
        ("cri-containerd-", "containerd"),
        ("nerdctl-", "containerd"),
        ("docker-", "docker"),
        ("crio-", "cri-o"),
        ("libpod-payload-", "podman"),  // podman run --cgroups=split, inside a service
        ("libpod-", "podman"),
    ]

    private static func isUnit(_ component: Substring) -> Bool {
        unitSuffixes.contains { component.count > $0.count && component.hasSuffix($0) }
    }

    /// `kubepods-pod<uid>.slice`, `kubepods-burstable-pod<uid>.slice`,
    /// `kubepods-besteffort-pod<uid>.slice` (with any kubelet cgroup root before `kubepods`).
    private static func systemdPod(_ component: Substring) -> (uid: String, qos: String)? {
        guard component.hasSuffix(".slice") else { return nil }
        let parts = component.dropLast(".slice".count).split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count >= 2, let last = parts.last, last.hasPrefix("pod"),
              let qos = qosClass(parent: parts[parts.count - 2], grandparent: parts.count >= 3 ? parts[parts.count - 3] : "")
        else { return nil }
        return podUID(last.dropFirst(3)).map { ($0, qos) }
    }

    /// `pod<uid>` directly under `kubepods`, `kubepods/burstable` or `kubepods/besteffort`.
    private static func cgroupfsPod(_ component: Substring, parent: Substring, grandparent: Substring) -> (uid: String, qos: String)? {
        guard component.hasPrefix("pod"), let qos = qosClass(parent: parent, grandparent: grandparent) else { return nil }
        return podUID(component.dropFirst(3)).map { ($0, qos) }
    }

    /// The QoS class of a pod whose cgroup sits under `parent` (and `grandparent`): pods of the
    /// guaranteed class have no QoS level of their own.
    private static func qosClass(parent: Substring, grandparent: Substring) -> String? {
        if parent == "kubepods" { return "guaranteed" }
        if grandparent == "kubepods", parent == "burstable" || parent == "besteffort" { return String(parent) }
        return nil
    }

    /// A pod UID, lowercase with dashes: a UUID (the systemd driver's underscores read as
    /// dashes), or the 32 hex digits of an MD5 sum that the kubelet gives a static pod.
    private static func podUID(_ text: Substring) -> String? {
        var bytes = Array(text.utf8)
        for i in bytes.indices {
            switch bytes[i] {
            case UInt8(ascii: "_"): bytes[i] = UInt8(ascii: "-")
            case UInt8(ascii: "A")...UInt8(ascii: "F"): bytes[i] += 32
            default: break
            }
        }
        let isUUID = bytes.count == 36 && bytes.indices.allSatisfy { i in
            switch i {
            case 8, 13, 18, 23: bytes[i] == UInt8(ascii: "-")
            default: isHexDigit(bytes[i])
            }
        }
        guard isUUID || (bytes.count == 32 && bytes.allSatisfy(isHexDigit)) else { return nil }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// A container: `<runtime prefix><id>[.scope]` with a 12 to 64 digit id, or a bare
    /// 64-digit id (docker's when directly under `docker`, of an unknown runtime elsewhere).
    private static func containerComponent(_ component: Substring, parent: Substring) -> (runtime: String?, id: Substring)? {
        let name = component.hasSuffix(".scope") ? component.dropLast(".scope".count) : component
        if let match = runtimePrefixes.first(where: { name.hasPrefix($0.prefix) }) {
            let id = name.dropFirst(match.prefix.count)
            return isHex(id, lengths: 12...64) ? (match.runtime, id) : nil
        }
        guard name.count == component.count, isHex(name, lengths: 64...64) else { return nil }
        return (parent == "docker" ? "docker" : nil, name)
    }

    private static func isHex(_ text: Substring, lengths: ClosedRange<Int>) -> Bool {
        lengths.contains(text.utf8.count) && text.utf8.allSatisfy(isHexDigit)
    }

    /// Lowercase hex only: ids are written lowercase, so `ABC…` is not one.
    private static func isHexDigit(_ byte: UInt8) -> Bool {
        (UInt8(ascii: "0")...UInt8(ascii: "9")).contains(byte) || (UInt8(ascii: "a")...UInt8(ascii: "f")).contains(byte)
    }
}
