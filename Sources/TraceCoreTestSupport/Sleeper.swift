import Foundation
import Glibc

/// tests/events/sleeper.c, built once per test process as `tp-sleeper` (also its comm):
/// known numbers of nanosleep (or getppid) calls of known lengths; see the file's header.
public final class Sleeper {
    public static let comm = "tp-sleeper"
    public static let binary = CallChains.build(source: "tests/events/sleeper.c", name: comm, flags: ["-O2"])

    public let process = Process()
    private let input = Pipe()
    private let output = Pipe()
    private var text = ""
    public var pid: Int32 { process.processIdentifier }
    /// The thread that makes the calls.
    public private(set) var tid: Int32 = 0

    public init(_ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: try Self.binary.get())
        process.arguments = arguments
        process.standardInput = input
        process.standardOutput = output
        try process.run()
        try read(until: "\n")
        guard let line = text.split(separator: "\n").first, line.hasPrefix("tid "), let tid = Int32(line.dropFirst(4)) else {
            throw CallChains.Failure(description: "sleeper did not say its tid: \(text)")
        }
        self.tid = tid
    }

    /// Sends the line that starts the calls and waits for "done".
    public func go() throws {
        input.fileHandleForWriting.write(Data("go\n".utf8))
        try read(until: "done\n")
    }

    /// Starts, makes its calls, and exits.
    public func run() throws {
        try go()
        finish()
    }

    private func read(until marker: String) throws {
        while !text.contains(marker) {
            let data = output.fileHandleForReading.availableData
            guard !data.isEmpty else { throw CallChains.Failure(description: "sleeper exited before it said \(marker.debugDescription): \(text)") }
            text += String(decoding: data, as: UTF8.self)
        }
    }

    /// Closes its stdin (it exits then) and waits for it.
    public func finish() {
        try? input.fileHandleForWriting.close()
        process.waitUntilExit()
    }
}
