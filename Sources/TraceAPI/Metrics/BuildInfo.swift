/// What `traceplane_build_info` reports: the agent, libbpf and Swift versions.
public struct BuildInfo: Sendable, Hashable {
    /// The agent's version.
    #if TRACEPLANE_NEWER_BUILD_TEST
    /// A newer build with the same map layouts, for the upgrade test (`-Xswiftc -DTRACEPLANE_NEWER_BUILD_TEST`).
    public static let traceplaneVersion = "0.1.1-dev"
    #else
    public static let traceplaneVersion = "0.1.0-dev"
    #endif

    /// The Swift compiler this binary was built with (major.minor).
    public static let swiftCompilerVersion: String = {
        #if compiler(>=6.6)
        return "6.6+"
        #elseif compiler(>=6.5)
        return "6.5"
        #elseif compiler(>=6.4)
        return "6.4"
        #elseif compiler(>=6.3)
        return "6.3"
        #elseif compiler(>=6.2)
        return "6.2"
        #elseif compiler(>=6.1)
        return "6.1"
        #else
        return "6.0"
        #endif
    }()

    public var version: String
    /// The libbpf the agent runs with, `major.minor` (from `libbpf_major_version()` and
    /// `libbpf_minor_version()`, so the shared library really loaded, not the headers).
    public var libbpfVersion: String
    public var swiftVersion: String

    public init(version: String = BuildInfo.traceplaneVersion, libbpfVersion: String,
                swiftVersion: String = BuildInfo.swiftCompilerVersion) {
        self.version = version
        self.libbpfVersion = libbpfVersion
        self.swiftVersion = swiftVersion
    }
}
