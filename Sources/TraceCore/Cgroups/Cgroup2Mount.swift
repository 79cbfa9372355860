import Glibc

/// Where this host mounts the cgroup v2 hierarchy (the capability report's `kernel.cgroup2`).
/// cgroup keys and filters need it: the kernel names a task's cgroup by its cgroup v2 id,
/// and the agent finds that id's path (and what runs there) under this mount.
public struct Cgroup2Fact: Sendable, Codable, Hashable {
    public enum Layout: String, Sendable, Codable, Hashable {
        /// cgroup2 at /sys/fs/cgroup, no v1 hierarchies.
        case unified
        /// v1 controller hierarchies with cgroup2 beside them (often /sys/fs/cgroup/unified).
        case hybrid
        /// No cgroup2 mount: cgroup keys and filters are refused.
        case none
    }

    /// The mount point; nil with `layout` none.
    public var path: String?
    public var layout: Layout
    /// Whether the mount shows the whole hierarchy (its top is the root cgroup). Inside a
    /// cgroup namespace, or for a bind mount of a subtree, it does not: depths below the
    /// mount are not depths below the root, so filters use the cgroup-array check.
    public var wholeHierarchy: Bool
    /// Why there is no usable mount, when there is none.
    public var error: String?

    public init(path: String?, layout: Layout, wholeHierarchy: Bool, error: String? = nil) {
        self.path = path
        self.layout = layout
        self.wholeHierarchy = wholeHierarchy
        self.error = error
    }

    /// A host without cgroup2.
    public static func absent(_ reason: String) -> Cgroup2Fact {
        Cgroup2Fact(path: nil, layout: .none, wholeHierarchy: false, error: reason)
    }

    enum CodingKeys: String, CodingKey {
        case path, layout, error
        case wholeHierarchy = "whole_hierarchy"
    }

    public func encode(to encoder: any Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(path, forKey: .path)
        try c.encode(layout, forKey: .layout)
        try c.encode(wholeHierarchy, forKey: .wholeHierarchy)
        try c.encode(error, forKey: .error)
    }

    static let superMagic = 0x6367_7270  // CGROUP2_SUPER_MAGIC

    /// Finds the cgroup2 mount in `mountinfo` (the text of /proc/self/mountinfo): the one at
    /// /sys/fs/cgroup, else /sys/fs/cgroup/unified, else the first listed. The layout is
    /// hybrid when any cgroup v1 hierarchy is mounted too. `isRoot` tells whether a mount
    /// point shows the root cgroup.
    public static func find(mountinfo: String, isRoot: (String) -> Bool) -> Cgroup2Fact {
        var v2: [String] = []
        var v1 = false
        for line in mountinfo.split(separator: "\n") {
            // id parent major:minor root mountpoint options [optional...] - fstype source super
            let halves = line.split(separator: " - ", maxSplits: 1)
            guard halves.count == 2 else { continue }
            let fields = halves[0].split(separator: " ")
            let fstype = halves[1].split(separator: " ").first.map(String.init) ?? ""
            guard fields.count >= 5 else { continue }
            let point = unescape(String(fields[4]))
            if fstype == "cgroup2" { v2.append(point) } else if fstype == "cgroup" { v1 = true }
        }
        guard let path = ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"].first(where: v2.contains) ?? v2.first else {
            return .absent(v1 ? "only cgroup v1 hierarchies are mounted (no cgroup2): cgroup keys and filters need cgroup v2"
                              : "no cgroup2 filesystem is mounted: cgroup keys and filters need cgroup v2")
        }
        return Cgroup2Fact(path: path, layout: v1 ? .hybrid : .unified, wholeHierarchy: isRoot(path))
    }

    /// Octal escapes of mountinfo (`\040` for a space).
    static func unescape(_ s: String) -> String {
        guard s.contains("\\") else { return s }
        var out: [UInt8] = []
        let b = Array(s.utf8)
        var i = 0
        while i < b.count {
            if b[i] == 0x5C, i + 3 < b.count, let v = UInt8(String(decoding: b[(i + 1)...(i + 3)], as: UTF8.self), radix: 8) {
                out.append(v)
                i += 4
            } else {
                out.append(b[i])
                i += 1
            }
        }
        return String(decoding: out, as: UTF8.self)
    }

    /// This host's cgroup2 mount. The root cgroup is the one without `cgroup.events` (the
    /// kernel gives that file to every cgroup but the root).
    public static func inspect() -> Cgroup2Fact {
        guard let text = try? String(contentsOfFile: "/proc/self/mountinfo", encoding: .utf8) else {
            return .absent("cannot read /proc/self/mountinfo")
        }
        var fact = find(mountinfo: text) { access($0 + "/cgroup.events", F_OK) != 0 }
        if let path = fact.path, LinuxHost.fsMagic(path) != superMagic {
            fact = .absent("\(path) is listed as cgroup2 in /proc/self/mountinfo but is not one")
        }
        return fact
    }
}

/// A cgroup a filter resolved to: its path under the cgroup2 mount, its id (the inode of
/// its directory, which is what the kernel's helpers return) and its depth below the root
/// cgroup (nil when the mount does not show the root).
public struct CgroupMatch: Sendable, Hashable {
    public var path: String
    public var id: UInt64
    public var level: UInt32?
    /// The directory on this host, for the cgroup-array check (which takes an fd of it).
    public var directory: String

    public init(path: String, id: UInt64, level: UInt32?, directory: String) {
        self.path = path
        self.id = id
        self.level = level
        self.directory = directory
    }
}

/// How the kernel checks a probe's cgroup filter (bpf/include/traceplane/probe.h,
/// `enum tp_cgroup_mode`).
public enum CgroupFilterMode: UInt32, Sendable, Hashable {
    /// `bpf_get_current_ancestor_cgroup_id(level) == id`: no map, one helper call.
    case ancestor = 1
    /// `bpf_current_task_under_cgroup(array, i)`: the cgroup's fd in a cgroup array; where
    /// the ancestor helper is missing, or the mount does not show the root cgroup.
    case underCgroup = 2
}

/// A probe's resolved cgroup filter, as the flavours configure it.
public struct CgroupFilter: Sendable, Hashable {
    public var match: CgroupMatch
    public var mode: CgroupFilterMode

    /// The mode this kernel and mount allow for `match`.
    public init(match: CgroupMatch, ancestorHelper: Bool) {
        self.match = match
        mode = ancestorHelper && match.level != nil ? .ancestor : .underCgroup
    }

    public init(match: CgroupMatch, mode: CgroupFilterMode) {
        self.match = match
        self.mode = mode
    }

    /// Opens the cgroup's directory for a cgroup array (the caller closes it).
    func openDirectory() throws(KernelError) -> Int32 {
        let fd = open(match.directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        guard fd >= 0 else {
            throw KernelError(stage: .attach, code: errno, operation: "open cgroup \(match.path) for the filter's cgroup array")
        }
        return fd
    }
}
