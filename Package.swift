// swift-tools-version: 6.1
import PackageDescription

let strict: [SwiftSetting] = [
    .swiftLanguageMode(.v6),
    .enableUpcomingFeature("ExistentialAny"),
]

let package = Package(
    name: "traceplane",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "traceplane", targets: ["traceplane"]),
        .library(name: "TraceCore", targets: ["TraceCore"]),
        .library(name: "TraceAPI", targets: ["TraceAPI"]),
        .library(name: "TraceCoreTestSupport", targets: ["TraceCoreTestSupport"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/jpsim/Yams", from: "6.0.0"),
    ],
    targets: [
        // Thin C shims: no variadic function or macro API is called from Swift.
        .target(
            name: "CLibBPF",
            linkerSettings: [.linkedLibrary("bpf"), .linkedLibrary("elf"), .linkedLibrary("z")]
        ),
        .target(
            name: "CMicroHTTPD",
            linkerSettings: [.linkedLibrary("microhttpd")]
        ),
        // The map value layouts of bpf/include/traceplane/*.h, for Swift (bpf/layouts.c
        // checks their sizes); the BPF programs include the same headers.
        .target(
            name: "CBPFLayouts",
            path: "bpf",
            sources: ["layouts.c"],
            publicHeadersPath: "include"
        ),
        // Compiles bpf/*.bpf.c with clang -target bpf and embeds the objects as Swift.
        .executableTarget(name: "BPFEmbed", swiftSettings: strict),
        .plugin(
            name: "BPFObjectPlugin",
            capability: .buildTool(),
            dependencies: ["BPFEmbed"]
        ),
        .target(
            name: "BPFPrograms",
            swiftSettings: strict,
            plugins: ["BPFObjectPlugin"]
        ),
        .target(
            name: "TraceCore",
            dependencies: [
                "CLibBPF", "CBPFLayouts", "BPFPrograms",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .target(
            name: "TraceCoreTestSupport",
            dependencies: ["TraceCore", "CLibBPF"],
            swiftSettings: strict
        ),
        .target(
            name: "TraceAPI",
            dependencies: [
                "CMicroHTTPD", "TraceCore",
                .product(name: "Logging", package: "swift-log"),
            ],
            swiftSettings: strict
        ),
        .executableTarget(
            name: "traceplane",
            dependencies: [
                "TraceCore", "TraceAPI",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Yams", package: "Yams"),
            ],
            swiftSettings: strict
        ),
        .testTarget(
            name: "TraceCoreTests",
            dependencies: ["TraceCore", "TraceCoreTestSupport"],
            swiftSettings: strict
        ),
        // Independent oracles for the kernel tests: raw bpf() calls, no libbpf object code.
        .target(
            name: "CKernelOracle",
            path: "Tests/CKernelOracle",
            linkerSettings: [.linkedLibrary("bpf")]
        ),
        .testTarget(
            name: "TraceCoreKernelTests",
            dependencies: ["TraceCore", "CLibBPF", "CKernelOracle", "TraceCoreTestSupport"],
            swiftSettings: strict
        ),
        // The real agent wiring on the real kernel, over real HTTP (root).
        .testTarget(
            name: "AgentIntegrationTests",
            dependencies: ["TraceAPI", "TraceCore", "TraceCoreTestSupport", "CLibBPF", "CBPFLayouts", "CKernelOracle"],
            swiftSettings: strict
        ),
        .testTarget(
            name: "TraceAPITests",
            dependencies: ["TraceAPI", "TraceCore", "TraceCoreTestSupport"],
            swiftSettings: strict
        ),
        // The command line's own logic (flags to specs, probe files, request paths); the
        // executable is imported @testable, nothing is run.
        .testTarget(
            name: "traceplaneTests",
            dependencies: ["traceplane", "TraceAPI", "TraceCore"],
            swiftSettings: strict
        ),
    ]
)
