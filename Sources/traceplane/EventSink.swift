import ArgumentParser
import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// Where `probe events` writes: lines for stdout (the table, or raw NDJSON) and notices
/// for stderr, each without its newline.
struct EventSink: Sendable {
    var out: @Sendable (String) throws -> Void
    var err: @Sendable (String) -> Void

    /// The process's stdout and stderr, one write(2) per line, so each line is out as soon
    /// as its event arrives. A reader that went away (EPIPE, `| head`) ends the command quietly.
    static let standard = EventSink(
        out: { line in
            do {
                try FileDescriptorWriter.write(line + "\n", to: STDOUT_FILENO)
            } catch let error as FileDescriptorWriter.Failure where error.errno == EPIPE {
                throw ExitCode.success
            }
        },
        err: { line in try? FileDescriptorWriter.write(line + "\n", to: STDERR_FILENO) })
}

/// Unbuffered writes of whole strings to a file descriptor.
enum FileDescriptorWriter {
    /// A write that failed, with its errno.
    struct Failure: Error, CustomStringConvertible {
        var errno: Int32
        var description: String { "write failed: \(String(cString: strerror(errno)))" }
    }

    /// Writes all of `text`, retrying on EINTR and after short writes.
    /// - Throws: ``Failure`` with the errno of a write that failed.
    static func write(_ text: String, to fd: Int32) throws(Failure) {
        var bytes = Array(text.utf8)[...]
        while !bytes.isEmpty {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress, $0.count) }
            if n < 0 {
                if errno == EINTR { continue }
                throw Failure(errno: errno)
            }
            bytes = bytes.dropFirst(n)
        }
    }
}
