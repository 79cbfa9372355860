#if canImport(Glibc)
import Glibc
#endif

/// Writes raw bytes to 127.0.0.1:`port` and reads until the server closes:
/// for what curl hides (a HEAD response's framing).
enum RawHTTP {
    struct Failure: Error, CustomStringConvertible {
        var operation: String
        var errorNumber: Int32
        var description: String { "\(operation): errno \(errorNumber)" }
    }

    static func exchange(port: Int, _ request: String) throws -> String {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        guard fd >= 0 else { throw Failure(operation: "socket", errorNumber: errno) }
        defer { close(fd) }
        var timeout = timeval(tv_sec: 5, tv_usec: 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))

        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = in_port_t(UInt16(port).bigEndian)
        address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
            }
        }
        guard connected == 0 else { throw Failure(operation: "connect", errorNumber: errno) }

        let bytes = Array(request.utf8)
        var sent = 0
        while sent < bytes.count {
            let n = bytes[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            guard n > 0 else { throw Failure(operation: "send", errorNumber: errno) }
            sent += n
        }

        var received: [UInt8] = []
        var buffer = [UInt8](repeating: 0, count: 4096)
        while true {
            let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n == 0 { break }
            guard n > 0 else { throw Failure(operation: "recv", errorNumber: errno) }
            received += buffer[..<n]
        }
        return String(decoding: received, as: UTF8.self)
    }
}

extension RawHTTP {
    /// One client connection kept open, for responses that arrive piece by piece.
    /// Reads never block a thread: they poll the socket and sleep between tries.
    final class Client {
        private var fd: Int32
        /// Everything received so far.
        private(set) var received: [UInt8] = []
        /// The server closed the connection (or reset it).
        private(set) var ended = false

        /// Connects to 127.0.0.1:`port`; `receiveBuffer` sets SO_RCVBUF before connecting
        /// (a client that reads slowly or not at all).
        init(port: Int, receiveBuffer: Int32? = nil) throws {
            fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            guard fd >= 0 else { throw Failure(operation: "socket", errorNumber: errno) }
            if var size = receiveBuffer {
                setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &size, socklen_t(MemoryLayout<Int32>.size))
            }
            var address = sockaddr_in()
            address.sin_family = sa_family_t(AF_INET)
            address.sin_port = in_port_t(UInt16(port).bigEndian)
            address.sin_addr.s_addr = in_addr_t(UInt32(0x7f00_0001).bigEndian)
            let connected = withUnsafePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) {
                    connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size))
                }
            }
            guard connected == 0 else {
                let error = errno
                Glibc.close(fd)
                throw Failure(operation: "connect", errorNumber: error)
            }
        }

        deinit { close() }

        func send(_ text: String) throws {
            let bytes = Array(text.utf8)
            var sent = 0
            while sent < bytes.count {
                let n = bytes[sent...].withUnsafeBytes { Glibc.send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
                guard n > 0 else { throw Failure(operation: "send", errorNumber: errno) }
                sent += n
            }
        }

        /// Reads until `condition(received)` holds, the server closes, or `timeout`
        /// passes; returns whether the condition holds.
        @discardableResult
        func receive(until condition: ([UInt8]) -> Bool, timeout: Duration = .seconds(5)) async throws -> Bool {
            let deadline = ContinuousClock.now + timeout
            var buffer = [UInt8](repeating: 0, count: 65536)
            while !condition(received), !ended, fd >= 0 {
                let n = buffer.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, Int32(MSG_DONTWAIT)) }
                if n > 0 {
                    received += buffer[..<n]
                    continue
                }
                if n == 0 || (errno != EAGAIN && errno != EWOULDBLOCK) {
                    ended = true
                    break
                }
                guard ContinuousClock.now < deadline else { break }
                try await Task.sleep(for: .milliseconds(2))
            }
            return condition(received)
        }

        /// Reads until `text` has been received.
        @discardableResult
        func receive(_ text: String, timeout: Duration = .seconds(5)) async throws -> Bool {
            let needle = Array(text.utf8)
            return try await receive(until: { $0.contains(subsequence: needle) }, timeout: timeout)
        }

        /// Reads until the server closes the connection; returns whether it did.
        @discardableResult
        func receiveToEnd(timeout: Duration = .seconds(5)) async throws -> Bool {
            _ = try await receive(until: { _ in false }, timeout: timeout)
            return ended
        }

        func close() {
            if fd >= 0 { Glibc.close(fd) }
            fd = -1
        }
    }
}

extension Array where Element == UInt8 {
    func contains(subsequence needle: [UInt8]) -> Bool {
        guard !needle.isEmpty else { return true }
        guard count >= needle.count else { return false }
        for start in 0...(count - needle.count) where self[start] == needle[0] {
            if self[start..<(start + needle.count)].elementsEqual(needle) { return true }
        }
        return false
    }
}
