import Foundation
import Glibc

/// tests/stacks/callchains.c, built once per test process with frame pointers and no
/// inlining as `tp-callchains` (also its comm), started with arguments; see the file's
/// header for what each mode does. The stack tests' workload with known call chains.
public final class CallChains {
    public static let comm = "tp-callchains"

    /// The built program, or why it could not be built (clang is on PATH wherever the
    /// Swift toolchain is).
    public static let binary = build(source: "tests/stacks/callchains.c", name: comm, flags: ["-O0", "-fno-omit-frame-pointer"])

    /// Builds `source` (relative to the repository) with clang into a per-process
    /// temporary directory as `name`, or says why it could not.
    public static func build(source: String, name: String, flags: [String]) -> Result<String, BuildFailure> {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent(source).path
        let dir = NSTemporaryDirectory() + "\(name)-\(getpid())"
        let out = "\(dir)/\(name)"
        let clang = Process()
        clang.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        clang.arguments = ["clang"] + flags + ["-o", out, path]
        let log = Pipe()
        clang.standardOutput = log
        clang.standardError = log
        do {
            try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
            try clang.run()
        } catch {
            return .failure(BuildFailure(description: "cannot run clang on \(path): \(error)"))
        }
        let text = String(decoding: log.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        clang.waitUntilExit()
        guard clang.terminationStatus == 0 else { return .failure(BuildFailure(description: "clang failed building \(path):\n\(text)")) }
        return .success(out)
    }

    public struct BuildFailure: Error, CustomStringConvertible { public var description: String }
    public struct Failure: Error, CustomStringConvertible { public var description: String }

    public let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    public var pid: Int32 { process.processIdentifier }

    public init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: try Self.binary.get())
        process.arguments = arguments
        process.standardInput = input
        process.standardOutput = output
        try process.run()
    }

    /// Sends the line that starts the calls and waits for "done".
    public func go() throws {
        input.fileHandleForWriting.write(Data("go\n".utf8))
        var text = ""
        while !text.contains("done\n") {
            let data = output.fileHandleForReading.availableData
            guard !data.isEmpty else { throw Failure(description: "callchains exited before it said done: \(text)") }
            text += String(decoding: data, as: UTF8.self)
        }
    }

    /// Closes its stdin (it exits then) and waits for it.
    public func finish() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}
