import Synchronization

/// Counts served requests by method and status code; safe from any thread.
///
/// Create one and pass it to ``HTTPServer/init(configuration:responder:requestCounter:logger:)``;
/// a metrics route can hold the same instance and read ``snapshot()``.
public final class HTTPRequestCounter: Sendable {
    /// One time series: the method (well-known methods only, others as `OTHER`,
    /// so that clients cannot grow the label set) and the status code.
    public struct Key: Hashable, Sendable, Comparable {
        public var method: String
        public var status: Int

        public init(method: String, status: Int) {
            self.method = method
            self.status = status
        }

        public static func < (lhs: Key, rhs: Key) -> Bool {
            (lhs.method, lhs.status) < (rhs.method, rhs.status)
        }
    }

    private let counts = Mutex<[Key: UInt64]>([:])

    public init() {}

    /// Records one response sent with `status` to a `method` request.
    public func record(method: HTTPMethod, status: HTTPStatus) {
        let label = HTTPMethod.wellKnown.contains(method) ? method.rawValue : "OTHER"
        counts.withLock { $0[Key(method: label, status: status.code), default: 0] += 1 }
    }

    /// A consistent copy of all counters.
    public func snapshot() -> HTTPRequestCounts {
        HTTPRequestCounts(counts: counts.withLock { $0 })
    }
}

/// A point-in-time copy of an ``HTTPRequestCounter``.
public struct HTTPRequestCounts: Sendable, Hashable {
    public var counts: [HTTPRequestCounter.Key: UInt64]

    public init(counts: [HTTPRequestCounter.Key: UInt64] = [:]) { self.counts = counts }

    /// The count for one method and status (0 if none).
    public subscript(method: HTTPMethod, status: HTTPStatus) -> UInt64 {
        counts[HTTPRequestCounter.Key(method: method.rawValue, status: status.code)] ?? 0
    }

    /// All requests counted.
    public var total: UInt64 { counts.values.reduce(0, +) }

    /// The series sorted by method then status, for stable exposition output.
    public var sorted: [(key: HTTPRequestCounter.Key, count: UInt64)] {
        counts.sorted { $0.key < $1.key }.map { (key: $0.key, count: $0.value) }
    }
}
