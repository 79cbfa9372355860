import Foundation
import PackagePlugin

/// Compiles every `bpf/*.bpf.c` of the package with the toolchain's clang (`-target bpf`),
/// strips the DWARF (keeping `.BTF`/`.BTF.ext`, which CO-RE and BTF maps need), and embeds
/// the objects into the target as generated Swift, with typed bindings of each object's
/// programs, maps and globals (see BPFEmbed). SwiftPM does not compile plugin-generated C,
/// so the object bytes travel as base64 literals.
@main
struct BPFObjectPlugin: BuildToolPlugin {
    func createBuildCommands(context: PluginContext, target: any Target) async throws -> [Command] {
        let bpfDir = context.package.directoryURL.appending(path: "bpf")
        let names = try FileManager.default.contentsOfDirectory(atPath: bpfDir.path()).sorted()
        let sources = names.filter { $0.hasSuffix(".bpf.c") }.map { bpfDir.appending(path: $0) }
        // Headers: bpf/*.h (BPF only) and bpf/include/traceplane/*.h (shared with user space).
        let sharedDir = bpfDir.appending(path: "include/traceplane")
        let shared = ((try? FileManager.default.contentsOfDirectory(atPath: sharedDir.path())) ?? []).sorted()
        let headers = names.filter { $0.hasSuffix(".h") }.map { bpfDir.appending(path: $0) }
            + shared.filter { $0.hasSuffix(".h") }.map { sharedDir.appending(path: $0) }
        guard !sources.isEmpty else {
            Diagnostics.error("no bpf/*.bpf.c sources found in \(bpfDir.path())")
            return []
        }
        let clang = try context.tool(named: "clang")
        let objcopy = try context.tool(named: "llvm-objcopy")
        let embed = try context.tool(named: "BPFEmbed")
        #if arch(x86_64)
        let arch = "x86"
        #elseif arch(arm64)
        let arch = "arm64"
        #else
        #error("unsupported architecture for BPF builds")
        #endif
        let work = context.pluginWorkDirectoryURL
        var commands: [Command] = []
        var embedArgs: [String] = []
        var stripped: [URL] = []
        for source in sources {
            let stem = String(source.lastPathComponent.dropLast(".bpf.c".count))
            let object = work.appending(path: "\(stem).bpf.o")
            let small = work.appending(path: "\(stem).stripped.o")
            commands.append(.buildCommand(
                displayName: "Compiling BPF \(source.lastPathComponent)",
                executable: clang.url,
                arguments: [
                    "-g", "-O2", "-target", "bpf", "-D__TARGET_ARCH_\(arch)",
                    "-Wall", "-Werror", "-I", bpfDir.path(), "-I", bpfDir.appending(path: "include").path(),
                    "-c", source.path(), "-o", object.path(),
                ],
                inputFiles: [source] + headers,
                outputFiles: [object]
            ))
            commands.append(.buildCommand(
                displayName: "Stripping DWARF from \(stem).bpf.o",
                executable: objcopy.url,
                arguments: ["--strip-debug", object.path(), small.path()],
                inputFiles: [object],
                outputFiles: [small]
            ))
            embedArgs.append("\(stem)=\(small.path())")
            stripped.append(small)
        }
        let output = work.appending(path: "EmbeddedBPFObjects.swift")
        commands.append(.buildCommand(
            displayName: "Embedding BPF objects",
            executable: embed.url,
            arguments: [output.path()] + embedArgs,
            inputFiles: stripped,
            outputFiles: [output]
        ))
        return commands
    }
}
