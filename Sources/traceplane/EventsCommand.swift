import ArgumentParser
import Foundation

extension ProbeCommand {
    struct Events: AsyncParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Print a probe's slow calls one by one (GET /v1/probes/NAME/events).",
            discussion: """
                The probe needs an events member (probe add --events, or any --events-* option). \
                Without -f, prints the events the agent still holds (its last 1024) and exits; \
                with -f, keeps printing new ones until the probe is deleted, replaced or expires, or Ctrl-C. \
                Missed events and the reason the stream ended are reported on stderr.
                """)

        @Argument(help: "Probe name.") var name: String
        @Flag(name: .shortAndLong, help: "Keep printing events as they happen.") var follow = false
        @Flag(help: "Print the stream's NDJSON lines as received (keep-alives left out).") var json = false
        @Option(name: .customLong("since-id"), help: ArgumentHelp("Start after the event with this seq (sent as Last-Event-ID).", valueName: "seq"))
        var sinceID: UInt64?
        @OptionGroup var connection: Connection

        /// The request path, with the query.
        var path: String { "/v1/probes/\(name)/events" + (follow ? "" : "?follow=false") }

        var requestHeaders: [String: String] {
            var headers = ["Accept": "application/x-ndjson"]
            if let sinceID { headers["Last-Event-ID"] = String(sinceID) }
            return headers
        }

        func run() async throws {
            try await stream(from: connection.client(), to: .standard)
        }

        /// The whole command against `client`, writing what it prints to `sink`: the
        /// header (not with `--json`), one line per event as it arrives, and notices for
        /// gaps and the end. This is the entry point for end-to-end tests.
        ///
        /// - Returns: the `end` line's reason (`caught-up` without -f; `deleted`,
        ///   `replaced`, `expired` or `shutdown`).
        /// - Throws: ``AgentClient/Failure`` for no reply, an error reply (with its
        ///   problem's detail: 404 no such probe, 409 no `events` member), a reply that is
        ///   not NDJSON, a malformed line, or a stream that stops without an `end` line;
        ///   `CancellationError` when the task is cancelled (the connection is closed);
        ///   and whatever `sink.out` throws.
        @discardableResult
        func stream(from client: AgentClient, to sink: EventSink, timeZone: TimeZone = .current) async throws -> String {
            let reply: AgentClient.StreamedReply
            do {
                reply = try await client.stream(path, headers: requestHeaders)
            } catch {
                throw AgentClient.Failure(description: "cannot reach the agent at \(client.base.absoluteString): \(error.description)")
            }
            guard (200..<300).contains(reply.status) else {
                throw AgentClient.failure("GET", path, AgentClient.Reply(status: reply.status, headers: reply.headers, body: await reply.collect()))
            }
            let type = reply.headers["content-type"] ?? ""
            guard type.lowercased().hasPrefix("application/x-ndjson") else {
                throw AgentClient.Failure(description: "GET \(path): the agent answered \(type.isEmpty ? "without a content type" : type), not application/x-ndjson")
            }
            return try await EventPrinter(probe: name, json: json, timeZone: timeZone).printStream(reply.body, to: sink)
        }
    }
}
