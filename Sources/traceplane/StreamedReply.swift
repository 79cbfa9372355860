import Foundation
#if canImport(FoundationNetworking)
import FoundationNetworking
#endif

extension AgentClient {
    /// A response whose body is read as it arrives (`GET …/events`).
    struct StreamedReply: Sendable {
        var status: Int
        /// Response headers, by lowercased name.
        var headers: [String: String]
        /// The body in the pieces it arrived in. It finishes when the agent ends the
        /// response and throws a ``TransportError`` when the connection fails or goes
        /// idle. Ending the iteration early (or cancelling its task) closes the connection.
        var body: AsyncThrowingStream<Data, any Error>

        /// The rest of the body, at most `limit` bytes (an error reply's problem+json).
        func collect(limit: Int = 1 << 16) async -> Data {
            var data = Data()
            do {
                for try await chunk in body {
                    data.append(chunk.prefix(limit - data.count))
                    if data.count >= limit { break }
                }
            } catch {}
            return data
        }
    }

    /// A GET whose body is handed over as it arrives, for endpoints that stream.
    ///
    /// - Parameters:
    ///   - headers: request headers, sent as given (e.g. `Accept`, `Last-Event-ID`).
    ///   - idleTimeout: the connection is given up when nothing at all (not even a
    ///     keep-alive) arrives for this long.
    /// - Throws: ``TransportError`` when no response head arrives. Any status is a reply.
    func stream(_ path: String, headers: [String: String] = [:], idleTimeout: TimeInterval = 60) async throws(TransportError) -> StreamedReply {
        let url = Self.url(base, path)
        var all = headers
        if let token { all["Authorization"] = "Bearer \(token)" }
        if let caFile, url.scheme == "https" {
            return try await CurlTransport.stream(url, headers: all, caFile: caFile, idleTimeout: idleTimeout)
        }
        var request = URLRequest(url: url)
        request.httpMethod = "GET"
        // On URLSession an idle timeout: every byte received restarts it.
        request.timeoutInterval = idleTimeout
        for (name, value) in all { request.setValue(value, forHTTPHeaderField: name) }
        let delegate = StreamingDelegate(timeout: idleTimeout)
        // The session holds its delegate until it is invalidated, when the task completes.
        let session = URLSession(configuration: .ephemeral, delegate: delegate, delegateQueue: nil)
        let task = session.dataTask(with: request)
        delegate.onTermination(cancel: task)
        do {
            let response = try await withTaskCancellationHandler {
                try await withCheckedThrowingContinuation { continuation in
                    delegate.awaitHead(continuation)
                    task.resume()
                }
            } onCancel: {
                task.cancel()
            }
            var headers: [String: String] = [:]
            for (name, value) in response.allHeaderFields {
                if let name = name as? String, let value = value as? String { headers[name.lowercased()] = value }
            }
            return StreamedReply(status: response.statusCode, headers: headers, body: delegate.body)
        } catch let error as TransportError {
            throw error
        } catch {
            throw Self.transportError(error, timeout: idleTimeout)
        }
    }

    /// What a URLSession error means to the user, and whether another try may help.
    static func transportError(_ error: any Error, timeout: TimeInterval) -> TransportError {
        let retryable: Bool
        if let error = error as? URLError {
            retryable = [.timedOut, .cannotConnectToHost, .networkConnectionLost, .cannotFindHost, .dnsLookupFailed,
                         .notConnectedToInternet, .badServerResponse, .zeroByteResource].contains(error.code)
        } else {
            retryable = false
        }
        let description = switch (error as? URLError)?.code {
        case .timedOut?: "no answer within \(Int(timeout.rounded(.up)))s (timed out)"
        case .cancelled?: "cancelled"
        default: error.localizedDescription
        }
        return TransportError(description: description, retryable: retryable)
    }
}

/// Hands a data task's response head to one waiter and its body to an AsyncThrowingStream.
/// URLSession calls it on its delegate queue (serial); `lock` guards the head waiter,
/// which the caller's task sets.
private final class StreamingDelegate: NSObject, URLSessionDataDelegate, @unchecked Sendable {
    let body: AsyncThrowingStream<Data, any Error>
    private let continuation: AsyncThrowingStream<Data, any Error>.Continuation
    private let timeout: TimeInterval
    private let lock = NSLock()
    private var head: CheckedContinuation<HTTPURLResponse, any Error>?

    init(timeout: TimeInterval) {
        (body, continuation) = AsyncThrowingStream<Data, any Error>.makeStream()
        self.timeout = timeout
    }

    func onTermination(cancel task: URLSessionDataTask) {
        continuation.onTermination = { _ in task.cancel() }
    }

    func awaitHead(_ waiter: CheckedContinuation<HTTPURLResponse, any Error>) {
        lock.withLock { head = waiter }
    }

    private func takeHead() -> CheckedContinuation<HTTPURLResponse, any Error>? {
        lock.withLock {
            defer { head = nil }
            return head
        }
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive response: URLResponse,
                    completionHandler: @escaping @Sendable (URLSession.ResponseDisposition) -> Void) {
        completionHandler(.allow)
        if let http = response as? HTTPURLResponse {
            takeHead()?.resume(returning: http)
        } else {
            takeHead()?.resume(throwing: AgentClient.TransportError(description: "not an HTTP response", retryable: false))
        }
    }

    func urlSession(_ session: URLSession, dataTask: URLSessionDataTask, didReceive data: Data) {
        continuation.yield(data)
    }

    func urlSession(_ session: URLSession, task: URLSessionTask, didCompleteWithError error: (any Error)?) {
        if let error {
            let failure = AgentClient.transportError(error, timeout: timeout)
            takeHead()?.resume(throwing: failure)
            continuation.finish(throwing: failure)
        } else {
            takeHead()?.resume(throwing: AgentClient.TransportError(description: "the connection closed before a response", retryable: true))
            continuation.finish()
        }
        session.finishTasksAndInvalidate()
    }
}
