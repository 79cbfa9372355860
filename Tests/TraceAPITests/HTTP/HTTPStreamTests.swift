import Foundation
import Synchronization
import Testing

@testable import TraceAPI

#if canImport(Glibc)
import Glibc
#endif

/// A body the test feeds by hand: `push` bytes, `end` it; counts reads and closes.
final class PushStream: HTTPBodyStream {
    private struct State {
        var buffered: [UInt8] = []
        var ended = false
        var wake: (@Sendable () -> Void)?
        /// Every wake-up ever handed out, when `repeatsWakeUps` (a sloppy stream).
        var everyWake: [@Sendable () -> Void] = []
        var pendingReads = 0
        var closes = 0
    }

    private let state = Mutex(State())
    /// Calls every wake-up it was ever given, twice, on each push: stale ones must do nothing.
    let repeatsWakeUps: Bool

    init(repeatsWakeUps: Bool = false) {
        self.repeatsWakeUps = repeatsWakeUps
    }

    var closeCount: Int { state.withLock { $0.closes } }
    var pendingReadCount: Int { state.withLock { $0.pendingReads } }

    func push(_ text: String) {
        let wakes = state.withLock { state in
            state.buffered += text.utf8
            let current = state.wake.take()
            return repeatsWakeUps ? state.everyWake + state.everyWake : current.map { [$0] } ?? []
        }
        for wake in wakes { wake() }
    }

    func end() {
        let wake = state.withLock { state in
            state.ended = true
            return state.wake.take()
        }
        wake?()
    }

    func read(maxBytes: Int) -> HTTPBodyChunk {
        state.withLock { state in
            if !state.buffered.isEmpty {
                let count = min(maxBytes, state.buffered.count)
                defer { state.buffered.removeFirst(count) }
                return .bytes(Array(state.buffered.prefix(count)))
            }
            if state.ended { return .finished }
            state.pendingReads += 1
            return .pending
        }
    }

    func onReadable(_ wake: @escaping @Sendable () -> Void) {
        let ready = state.withLock { state in
            if repeatsWakeUps { state.everyWake.append(wake) }
            if !state.buffered.isEmpty || state.ended { return true }
            state.wake = wake
            return false
        }
        if ready { wake() }
    }

    func close() {
        state.withLock { state in
            state.closes += 1
            state.wake = nil
            state.everyWake = []
        }
    }
}

/// Has `count` numbered lines, but says `.pending` before each one and wakes the
/// transport at once: from inside `onReadable`, or from another thread racing the
/// suspension.
final class EagerStream: HTTPBodyStream {
    private struct State {
        var next = 0
        var armed = false
        var closes = 0
    }

    let count: Int
    let wakesSynchronously: Bool
    private let state = Mutex(State())

    init(count: Int, wakesSynchronously: Bool) {
        self.count = count
        self.wakesSynchronously = wakesSynchronously
    }

    var closeCount: Int { state.withLock { $0.closes } }

    func read(maxBytes: Int) -> HTTPBodyChunk {
        state.withLock { state in
            if state.next == count { return .finished }
            if !state.armed {
                state.armed = true
                return .pending
            }
            state.armed = false
            defer { state.next += 1 }
            return .bytes(Array("\(state.next)\n".utf8))
        }
    }

    func onReadable(_ wake: @escaping @Sendable () -> Void) {
        if wakesSynchronously { wake() } else { DispatchQueue.global().async { wake() } }
    }

    func close() { state.withLock { $0.closes += 1 } }
}

/// Never runs dry: as many bytes as asked for, every time.
final class FirehoseStream: HTTPBodyStream {
    private struct State {
        var produced = 0
        var closes = 0
    }

    private let state = Mutex(State())
    var produced: Int { state.withLock { $0.produced } }
    var closeCount: Int { state.withLock { $0.closes } }

    func read(maxBytes: Int) -> HTTPBodyChunk {
        state.withLock { $0.produced += maxBytes }
        return .bytes([UInt8](repeating: UInt8(ascii: "x"), count: maxBytes))
    }

    func onReadable(_ wake: @escaping @Sendable () -> Void) { wake() }
    func close() { state.withLock { $0.closes += 1 } }
}

/// The streams the handler created, in the order requests arrived.
final class StreamLog<Stream: HTTPBodyStream>: Sendable {
    private let streams = Mutex<[Stream]>([])
    private let make: @Sendable () -> Stream

    init(_ make: @escaping @Sendable () -> Stream) { self.make = make }

    func next() -> Stream {
        let stream = make()
        streams.withLock { $0.append(stream) }
        return stream
    }

    var all: [Stream] { streams.withLock { $0 } }
}

extension HTTPServerTests {
    /// Streamed bodies over real sockets. Nested in the socket suite so that it runs
    /// serially with it (both check the process-wide count of live request contexts).
    @Suite("Streamed responses over sockets")
    struct Streams {
        static let eventHeaders: HTTPHeaders = ["Content-Type": "text/event-stream", "Cache-Control": "no-cache"]

        static func router<S: HTTPBodyStream>(_ log: StreamLog<S>, handlerDelay: Duration = .zero) -> Router {
            var router = Router()
            router.get("/events") { _, _ in
                if handlerDelay > .zero { try? await Task.sleep(for: handlerDelay) }
                return .stream(headers: eventHeaders, log.next())
            }
            return router
        }

        static func request(_ path: String = "/events") -> String {
            "GET \(path) HTTP/1.1\r\nHost: localhost\r\n\r\n"
        }

        /// Polls `condition` until it holds or `timeout` passes.
        static func eventually(within timeout: Duration = .seconds(5), _ condition: () -> Bool) async throws -> Bool {
            let deadline = ContinuousClock.now + timeout
            while !condition() {
                guard ContinuousClock.now < deadline else { return false }
                try await Task.sleep(for: .milliseconds(5))
            }
            return true
        }

        /// Head and decoded body of a chunked response; `complete` when the last
        /// chunk (`0\r\n\r\n`) was received.
        static func decodeChunked(_ raw: [UInt8]) -> (head: String, body: String, complete: Bool) {
            let separator = Array("\r\n\r\n".utf8)
            guard let headEnd = (0...max(0, raw.count - 4)).first(where: { raw[$0...].starts(with: separator) }),
                raw.count >= 4
            else { return ("", "", false) }
            let head = String(decoding: raw[..<headEnd], as: UTF8.self)
            var position = headEnd + 4
            var body: [UInt8] = []
            while true {
                guard let lineEnd = (position..<raw.count).first(where: { raw[$0...].starts(with: [13, 10]) }),
                    let size = Int(String(decoding: raw[position..<lineEnd], as: UTF8.self), radix: 16)
                else { return (head, String(decoding: body, as: UTF8.self), false) }
                let dataStart = lineEnd + 2
                if size == 0 {
                    return (head, String(decoding: body, as: UTF8.self), raw[dataStart...].starts(with: [13, 10]))
                }
                guard dataStart + size + 2 <= raw.count else { return (head, String(decoding: body, as: UTF8.self), false) }
                body += raw[dataStart..<(dataStart + size)]
                position = dataStart + size + 2
            }
        }

        static func receivedHead(_ client: RawHTTP.Client) async throws -> Bool {
            try await client.receive("\r\n\r\n")
        }

        /// A client that sent a stream request to `server` and got the response head, and
        /// the stream the handler made for it.
        static func open(_ log: StreamLog<PushStream>, on server: HTTPServer,
                         sourceLocation: SourceLocation = #_sourceLocation) async throws -> (RawHTTP.Client, PushStream) {
            let client = try RawHTTP.Client(port: server.port)
            try client.send(request())
            #expect(try await receivedHead(client), sourceLocation: sourceLocation)
            return (client, try #require(log.all.first, sourceLocation: sourceLocation))
        }

        /// Open fds of this process that are TCP sockets bound to local `port`: the
        /// server's listening socket and its accepted connections (the test's own client
        /// sockets have ephemeral local ports). Exact even while other suites open fds.
        static func serverSockets(port: Int) -> Int {
            var inodes = Set<String>()
            for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
                // Read to the end: /proc files report size 0, and a whole-file read may stop
                // after the first page (TIME_WAIT entries of earlier tests fill it).
                guard let data = FileHandle(forReadingAtPath: table)?.readDataToEndOfFile() else { continue }
                let text = String(decoding: data, as: UTF8.self)
                for line in text.split(separator: "\n").dropFirst() {
                    let fields = line.split(separator: " ")
                    guard fields.count > 9, let colon = fields[1].lastIndex(of: ":"),
                        Int(fields[1][fields[1].index(after: colon)...], radix: 16) == port
                    else { continue }
                    inodes.insert(String(fields[9]))
                }
            }
            let entries = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
            return entries.count(where: { entry in
                guard let target = try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/fd/\(entry)"),
                    target.hasPrefix("socket:[")
                else { return false }
                return inodes.contains(String(target.dropFirst(8).dropLast()))
            })
        }

        static func threadCount() -> Int {
            (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/task").count) ?? 0
        }

        @Test func chunksArriveInOrderAndTheStreamEndsCleanly() async throws {
            let log = StreamLog { PushStream() }
            try await HTTPServerTests.withServer(router: Self.router(log)) { server, _ in
                let (client, stream) = try await Self.open(log, on: server)

                stream.push("data: one\n\n")
                #expect(try await client.receive("data: one\n\n"))
                stream.push("data: two\n\n")
                stream.push("data: three\n\n")
                stream.end()
                #expect(try await client.receiveToEnd(), "the connection stays open after the end")

                let (head, body, complete) = Self.decodeChunked(client.received)
                #expect(head.hasPrefix("HTTP/1.1 200 OK\r\n"))
                #expect(head.contains("\r\nTransfer-Encoding: chunked"))
                #expect(head.contains("\r\nContent-Type: text/event-stream"))
                #expect(head.contains("\r\nConnection: close"))
                #expect(!head.contains("Content-Length"))
                #expect(body == "data: one\n\ndata: two\n\ndata: three\n\n")
                #expect(complete, "no last chunk: \(String(decoding: client.received, as: UTF8.self))")
                #expect(try await Self.eventually { stream.closeCount > 0 })
                #expect(stream.closeCount == 1)
                #expect(server.requestCounts[.get, .ok] == 1)
            }
            try await HTTPServerTests.expectNoLiveRequests()
        }

        @Test func curlWithoutBufferingReceivesEveryChunk() async throws {
            let log = StreamLog { PushStream() }
            try await HTTPServerTests.withServer(router: Self.router(log)) { _, base in
                let feeder = Task {
                    guard try await Self.eventually({ !log.all.isEmpty }) else { return }
                    let stream = log.all[0]
                    for n in 0..<20 {
                        stream.push("{\"n\":\(n)}\n")
                        try await Task.sleep(for: .milliseconds(5))
                    }
                    stream.end()
                }
                let response = try await Curl.request("GET", base + "/events", arguments: ["-N"])
                try await feeder.value
                #expect(response.exitCode == 0, "\(response.stderr)")
                #expect(response.status == 200)
                #expect(response.headers["Transfer-Encoding"] == "chunked")
                #expect(response.text == (0..<20).map { "{\"n\":\($0)}\n" }.joined())
                #expect(try await Self.eventually { log.all.first?.closeCount == 1 })
            }
        }

        @Test func pendingStreamParksAndIsDeliveredPromptlyWhenWoken() async throws {
            let log = StreamLog { PushStream() }
            try await HTTPServerTests.withServer(router: Self.router(log)) { server, _ in
                let (client, stream) = try await Self.open(log, on: server)
                try await Task.sleep(for: .milliseconds(300))
                // Parked, not polled: one `.pending` read in 300 ms.
                #expect(stream.pendingReadCount == 1)

                let woken = ContinuousClock.now
                stream.push("data: late\n\n")
                #expect(try await client.receive("data: late\n\n"))
                let latency = ContinuousClock.now - woken
                #expect(latency < .milliseconds(500), "delivered \(latency) after the wake-up")
                #expect(try await Self.eventually { stream.pendingReadCount == 2 })
                stream.end()
                #expect(try await client.receiveToEnd())
                #expect(Self.decodeChunked(client.received).complete)
            }
        }

        @Test(arguments: [true, false])
        func wakeUpsRightAwayOrFromAnotherThreadLoseNothing(synchronously: Bool) async throws {
            let log = StreamLog { EagerStream(count: 300, wakesSynchronously: synchronously) }
            try await HTTPServerTests.withServer(router: Self.router(log)) { server, _ in
                let client = try RawHTTP.Client(port: server.port)
                try client.send(Self.request())
                #expect(try await client.receiveToEnd())
                let (_, body, complete) = Self.decodeChunked(client.received)
                #expect(complete)
                #expect(body == (0..<300).map { "\($0)\n" }.joined())
                #expect(try await Self.eventually { log.all.first?.closeCount == 1 })
            }
        }

        @Test func staleAndRepeatedWakeUpsDoNothing() async throws {
            let log = StreamLog { PushStream(repeatsWakeUps: true) }
            try await HTTPServerTests.withServer(router: Self.router(log)) { server, _ in
                let (client, stream) = try await Self.open(log, on: server)
                for n in 0..<10 {
                    stream.push("data: \(n)\n\n")
                    #expect(try await client.receive("data: \(n)\n\n"))
                }
                try await Task.sleep(for: .milliseconds(100))
                // Each push woke the connection at most once; a stale wake-up that resumed
                // it again would show as extra `.pending` reads (or a stuck connection).
                #expect(stream.pendingReadCount <= 11)
                stream.end()
                #expect(try await client.receiveToEnd())
                #expect(Self.decodeChunked(client.received).complete)
                #expect(try await Self.eventually { stream.closeCount == 1 })
            }
        }

        @Test func sixtyFourIdleStreamsOnTwoPollingThreadsAllReceiveLaterData() async throws {
            let log = StreamLog { PushStream() }
            let configuration = HTTPServer.Configuration(port: 0, threadPoolSize: 2)
            try await HTTPServerTests.withServer(configuration, router: Self.router(log)) { server, _ in
                let threadsBefore = Self.threadCount()
                var clients: [RawHTTP.Client] = []
                for _ in 0..<64 {
                    let client = try RawHTTP.Client(port: server.port)
                    try client.send(Self.request())
                    clients.append(client)
                }
                for client in clients { #expect(try await Self.receivedHead(client)) }
                #expect(try await Self.eventually { log.all.count == 64 && log.all.allSatisfy { $0.pendingReadCount == 1 } })
                let threadsAdded = Self.threadCount() - threadsBefore
                #expect(threadsAdded < 32, "64 idle streams added \(threadsAdded) threads")

                for (n, stream) in log.all.enumerated() { stream.push("data: \(n)\n\n") }
                var received = Set<String>()
                for client in clients {
                    #expect(try await client.receive(until: { Self.decodeChunked($0).body.hasSuffix("\n\n") }))
                    received.insert(Self.decodeChunked(client.received).body)
                }
                #expect(received == Set((0..<64).map { "data: \($0)\n\n" }))

                for stream in log.all { stream.end() }
                for client in clients {
                    #expect(try await client.receiveToEnd())
                    #expect(Self.decodeChunked(client.received).complete)
                }
                #expect(try await Self.eventually { log.all.allSatisfy { $0.closeCount == 1 } })
                #expect(server.requestCounts[.get, .ok] == 64)
            }
            try await HTTPServerTests.expectNoLiveRequests()
        }

        @Test func clientThatDisconnectsClosesTheStreamOnce() async throws {
            let log = StreamLog { PushStream() }
            try await HTTPServerTests.withServer(router: Self.router(log)) { server, _ in
                let (client, stream) = try await Self.open(log, on: server)
                stream.push("data: first\n\n")
                #expect(try await client.receive("data: first\n\n"))
                client.close()

                // A parked connection is not watched; the next write finds the client gone.
                // Real streams write a keep-alive every 15 s; this one every 20 ms.
                let closed = try await Self.eventually {
                    stream.push(": keep-alive\n\n")
                    usleep(20_000)
                    return stream.closeCount > 0
                }
                #expect(closed)
                for _ in 0..<5 {
                    stream.push(": keep-alive\n\n")
                    try await Task.sleep(for: .milliseconds(20))
                }
                #expect(stream.closeCount == 1)
                #expect(try await Self.eventually { Self.serverSockets(port: server.port) == 1 })
            }
            try await HTTPServerTests.expectNoLiveRequests()
        }

        @Test func streamReturnedAfterTheClientLeftIsClosedOnce() async throws {
            let log = StreamLog { PushStream() }
            try await HTTPServerTests.withServer(router: Self.router(log, handlerDelay: .milliseconds(300))) { _, base in
                let response = try await Curl.request("GET", base + "/events", timeout: 0.1)
                #expect(response.exitCode == 28)  // curl: operation timed out
                #expect(try await Self.eventually { !log.all.isEmpty })
                let stream = log.all[0]
                let closed = try await Self.eventually {
                    stream.push(": keep-alive\n\n")
                    usleep(20_000)
                    return stream.closeCount > 0
                }
                #expect(closed)
                #expect(stream.closeCount == 1)
            }
            try await HTTPServerTests.expectNoLiveRequests()
        }

        @Test func stopEndsOpenStreamsPromptlyAndClosesEachOnce() async throws {
            let log = StreamLog { PushStream() }
            let server = HTTPServer(
                configuration: HTTPServer.Configuration(port: 0, shutdownGracePeriod: .seconds(5)),
                responder: Self.router(log))
            try server.start()
            var clients: [RawHTTP.Client] = []
            for _ in 0..<8 {
                let client = try RawHTTP.Client(port: server.port)
                try client.send(Self.request())
                clients.append(client)
            }
            for client in clients { #expect(try await Self.receivedHead(client)) }
            #expect(try await Self.eventually { log.all.count == 8 })
            // Half of them parked, half with data just pushed (not parked when stop comes).
            for stream in log.all.prefix(4) { stream.push("data: before stop\n\n") }

            let started = ContinuousClock.now
            server.stop()
            let elapsed = ContinuousClock.now - started
            // Without ending the streams, stop would wait the whole 5 s grace period.
            #expect(elapsed < .seconds(2), "stop took \(elapsed)")
            #expect(log.all.map(\.closeCount) == Array(repeating: 1, count: 8))
            for client in clients {
                #expect(try await client.receiveToEnd())
                #expect(Self.decodeChunked(client.received).complete, "\(String(decoding: client.received, as: UTF8.self))")
            }
            for stream in log.all { stream.push("data: after stop\n\n") }
            #expect(log.all.map(\.closeCount) == Array(repeating: 1, count: 8))
            try await HTTPServerTests.expectNoLiveRequests()
        }

        @Test func streamReturnedAfterStopIsClosedUnsent() async throws {
            let log = StreamLog { PushStream() }
            let server = HTTPServer(
                configuration: HTTPServer.Configuration(port: 0), responder: Self.router(log, handlerDelay: .milliseconds(400)))
            try server.start()
            let client = try RawHTTP.Client(port: server.port)
            try client.send(Self.request())
            try await Task.sleep(for: .milliseconds(100))
            server.stop()
            #expect(try await client.receiveToEnd())
            #expect(String(decoding: client.received, as: UTF8.self).hasPrefix("HTTP/1.1 503 "))
            #expect(try await Self.eventually { log.all.first?.closeCount == 1 })
            try await Task.sleep(for: .milliseconds(50))
            #expect(log.all.first?.closeCount == 1)
            try await HTTPServerTests.expectNoLiveRequests()
        }

        @Test func clientThatNeverReadsIsDroppedAfterTheStreamTimeout() async throws {
            let log = StreamLog { FirehoseStream() }
            // connectionTimeout far above the bound below: only streamTimeout can end it in time.
            let configuration = HTTPServer.Configuration(port: 0, connectionTimeout: .seconds(30), streamTimeout: .seconds(1))
            try await HTTPServerTests.withServer(configuration, router: Self.router(log)) { server, _ in
                let client = try RawHTTP.Client(port: server.port, receiveBuffer: 4096)
                try client.send(Self.request())
                #expect(try await Self.eventually { !log.all.isEmpty })
                let stream = log.all[0]
                let started = ContinuousClock.now
                #expect(try await Self.eventually(within: .seconds(8)) { stream.closeCount > 0 })
                let elapsed = ContinuousClock.now - started
                #expect(elapsed < .seconds(8), "dropped after \(elapsed)")
                #expect(stream.closeCount == 1)
                #expect(stream.produced > 64 * 1024, "only \(stream.produced) bytes were produced")
                #expect(try await Self.eventually { Self.serverSockets(port: server.port) == 1 })
                client.close()
            }
            try await HTTPServerTests.expectNoLiveRequests()
        }

        @Test func healthyStreamOutlivesTheConnectionTimeout() async throws {
            let log = StreamLog { PushStream() }
            let configuration = HTTPServer.Configuration(port: 0, connectionTimeout: .seconds(1), streamTimeout: .seconds(30))
            try await HTTPServerTests.withServer(configuration, router: Self.router(log)) { server, _ in
                let (client, stream) = try await Self.open(log, on: server)
                // Parked for twice the connection timeout, then written to every 300 ms.
                try await Task.sleep(for: .milliseconds(2200))
                for n in 0..<8 {
                    stream.push("data: \(n)\n\n")
                    #expect(try await client.receive("data: \(n)\n\n"))
                    try await Task.sleep(for: .milliseconds(300))
                }
                #expect(stream.closeCount == 0)
                #expect(!client.ended)
                stream.end()
                #expect(try await client.receiveToEnd())
                #expect(Self.decodeChunked(client.received).complete)
            }
        }

        @Test func headGetsTheHeadAndClosesTheStream() async throws {
            let log = StreamLog { PushStream() }
            try await HTTPServerTests.withServer(router: Self.router(log)) { server, _ in
                let client = try RawHTTP.Client(port: server.port)
                try client.send("HEAD /events HTTP/1.1\r\nHost: localhost\r\n\r\n")
                #expect(try await client.receiveToEnd())
                let text = String(decoding: client.received, as: UTF8.self)
                #expect(text.hasPrefix("HTTP/1.1 200 OK\r\n"))
                #expect(text.hasSuffix("\r\n\r\n"))
                #expect(try await Self.eventually { log.all.first?.closeCount == 1 })
            }
        }

        @Test func noServerSocketOutlivesItsStream() async throws {
            let log = StreamLog { PushStream() }
            let server = HTTPServer(configuration: HTTPServer.Configuration(port: 0), responder: Self.router(log))
            try server.start()
            let port = server.port
            #expect(Self.serverSockets(port: port) == 1)

            // One finished, one whose client left, one open at stop.
            var clients: [RawHTTP.Client] = []
            for _ in 0..<3 {
                let client = try RawHTTP.Client(port: port)
                try client.send(Self.request())
                #expect(try await Self.receivedHead(client))
                clients.append(client)
            }
            #expect(try await Self.eventually { log.all.count == 3 })
            let streams = log.all
            streams[0].end()
            #expect(try await clients[0].receiveToEnd())
            clients[1].close()
            #expect(try await Self.eventually {
                streams[1].push(": keep-alive\n\n")
                usleep(20_000)
                return streams[1].closeCount > 0
            })
            #expect(
                try await Self.eventually { Self.serverSockets(port: port) == 2 },
                "listening socket and the open stream, not \(Self.serverSockets(port: port)) sockets")

            server.stop()
            #expect(Self.serverSockets(port: port) == 0)
            #expect(streams.map(\.closeCount) == [1, 1, 1])
            for client in clients { client.close() }
            try await HTTPServerTests.expectNoLiveRequests()
        }
    }
}
