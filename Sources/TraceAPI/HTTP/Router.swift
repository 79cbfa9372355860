/// Something that turns a complete request into a complete response.
///
/// The server calls it from a Swift task, never from a libmicrohttpd thread, so
/// it may take its time; it must not throw: failures are responses (problems).
public protocol HTTPResponder: Sendable {
    func respond(to request: HTTPRequest) async -> HTTPResponse
}

/// Maps a method and a path pattern to a handler.
///
/// Patterns are absolute paths whose segments are literals or `{name}`
/// parameters, e.g. `/v1/probes/{name}`. A parameter matches one non-empty
/// segment, percent-decoded. When several patterns match, the one with a literal
/// at the first position where they differ wins.
///
/// - Unknown path: 404 problem.
/// - Known path, other method: 405 problem with an `Allow` header.
/// - `HEAD` is answered by the `GET` route of the path (the transport sends no
///   body), unless a `HEAD` route is registered.
/// - A non-empty body whose media type the route does not accept: 415 problem
///   (see ``BodyPolicy``). This check runs after routing, before the handler.
public struct Router: HTTPResponder {
    public typealias Handler = @Sendable (HTTPRequest, _ parameters: [String: String]) async -> HTTPResponse

    /// Which request bodies a route accepts. Empty bodies are always accepted.
    public enum BodyPolicy: Sendable, Hashable {
        /// `application/json` (parameters such as `charset` allowed).
        case json
        /// Exactly these media types (lowercase, without parameters).
        case mediaTypes(Set<String>)
        /// Anything, including no `Content-Type`.
        case any

        func accepts(_ mediaType: String?) -> Bool {
            switch self {
            case .any: true
            case .json: mediaType == "application/json"
            case .mediaTypes(let types): mediaType.map(types.contains) ?? false
            }
        }

        var acceptedTypes: [String] {
            switch self {
            case .any: ["*/*"]
            case .json: ["application/json"]
            case .mediaTypes(let types): types.sorted()
            }
        }
    }

    private enum Segment: Hashable {
        case literal(String)
        case parameter(String)
    }

    private struct Route: Sendable {
        var method: HTTPMethod
        var pattern: String
        var segments: [Segment]
        var bodyPolicy: BodyPolicy
        var handler: Handler
    }

    private var routes: [Route] = []

    /// The policy of POST, PUT and PATCH routes registered without one;
    /// other methods default to ``BodyPolicy/any``.
    public var defaultBodyPolicy: BodyPolicy

    static let methodsWithBody: Set<HTTPMethod> = [.post, .put, .patch]

    /// Creates an empty router. By default POST, PUT and PATCH bodies must be JSON.
    public init(defaultBodyPolicy: BodyPolicy = .json) {
        self.defaultBodyPolicy = defaultBodyPolicy
    }

    /// Registers `handler` for `method` on `pattern`.
    ///
    /// Misuse (a pattern not starting with `/`, a malformed or repeated
    /// parameter, the same method and pattern twice) is a precondition failure.
    public mutating func on(
        _ method: HTTPMethod, _ pattern: String, accepting bodyPolicy: BodyPolicy? = nil,
        _ handler: @escaping Handler
    ) {
        let segments = Self.parse(pattern: pattern)
        precondition(
            !routes.contains { $0.method == method && $0.segments == segments },
            "Route \(method) \(pattern) is registered twice.")
        routes.append(
            Route(
                method: method, pattern: pattern, segments: segments,
                bodyPolicy: bodyPolicy ?? (Self.methodsWithBody.contains(method) ? defaultBodyPolicy : .any),
                handler: handler))
    }

    public mutating func get(_ pattern: String, _ handler: @escaping Handler) {
        on(.get, pattern, handler)
    }

    public mutating func post(_ pattern: String, accepting bodyPolicy: BodyPolicy? = nil, _ handler: @escaping Handler) {
        on(.post, pattern, accepting: bodyPolicy, handler)
    }

    public mutating func put(_ pattern: String, accepting bodyPolicy: BodyPolicy? = nil, _ handler: @escaping Handler) {
        on(.put, pattern, accepting: bodyPolicy, handler)
    }

    public mutating func delete(_ pattern: String, _ handler: @escaping Handler) {
        on(.delete, pattern, handler)
    }

    public func respond(to request: HTTPRequest) async -> HTTPResponse {
        switch resolve(method: request.method, path: request.path) {
        case .notFound:
            return .problem(.notFound(path: request.path))
        case .methodNotAllowed(let allowed):
            return .problem(
                .methodNotAllowed(method: request.method, path: request.path, allowed: allowed),
                headers: ["Allow": allowed.map(\.rawValue).joined(separator: ", ")])
        case .found(let index, let parameters):
            let route = routes[index]
            if !request.body.isEmpty, !route.bodyPolicy.accepts(request.mediaType) {
                return .problem(
                    .unsupportedMediaType(
                        received: request.headers["Content-Type"], accepted: route.bodyPolicy.acceptedTypes))
            }
            return await route.handler(request, parameters)
        }
    }

    // MARK: Matching

    enum Resolution: Equatable {
        case found(routeIndex: Int, parameters: [String: String])
        case methodNotAllowed(allowed: [HTTPMethod])
        case notFound
    }

    /// Finds the route for `method` and `path` (percent-encoded), without calling it.
    func resolve(method: HTTPMethod, path: String) -> Resolution {
        guard path.hasPrefix("/") else { return .notFound }
        let pathSegments = path.utf8.split(separator: UInt8(ascii: "/"), omittingEmptySubsequences: false)
            .dropFirst()
            .map { HTTPRequest.percentDecode(Substring($0), plusIsSpace: false) }

        var matches: [(index: Int, parameters: [String: String])] = []
        for (index, route) in routes.enumerated() {
            if let parameters = Self.match(route.segments, pathSegments) {
                matches.append((index, parameters))
            }
        }
        guard !matches.isEmpty else { return .notFound }

        let lookup = method == .head && !matches.contains { routes[$0.index].method == .head } ? .get : method
        let candidates = matches.filter { routes[$0.index].method == lookup }
        if let best = candidates.min(by: { Self.isMoreSpecific(routes[$0.index].segments, than: routes[$1.index].segments) }) {
            return .found(routeIndex: best.index, parameters: best.parameters)
        }

        var allowed = Set(matches.map { routes[$0.index].method })
        if allowed.contains(.get) { allowed.insert(.head) }
        return .methodNotAllowed(
            allowed: allowed.sorted { ($0.sortRank, $0.rawValue) < ($1.sortRank, $1.rawValue) })
    }

    private static func match(_ pattern: [Segment], _ path: [String]) -> [String: String]? {
        guard pattern.count == path.count else { return nil }
        var parameters: [String: String] = [:]
        for (segment, value) in zip(pattern, path) {
            switch segment {
            case .literal(let literal):
                guard literal == value else { return nil }
            case .parameter(let name):
                guard !value.isEmpty else { return nil }
                parameters[name] = value
            }
        }
        return parameters
    }

    /// Literal beats parameter at the first position where two patterns differ.
    private static func isMoreSpecific(_ a: [Segment], than b: [Segment]) -> Bool {
        for (x, y) in zip(a, b) {
            switch (x, y) {
            case (.literal, .parameter): return true
            case (.parameter, .literal): return false
            default: continue
            }
        }
        return false
    }

    private static func parse(pattern: String) -> [Segment] {
        precondition(pattern.hasPrefix("/"), "A route pattern must start with \"/\"; got \"\(pattern)\".")
        var names: Set<String> = []
        return pattern.split(separator: "/", omittingEmptySubsequences: false).dropFirst().map { part in
            if part.hasPrefix("{") && part.hasSuffix("}") && part.count > 2 {
                let name = String(part.dropFirst().dropLast())
                precondition(
                    !name.contains("{") && !name.contains("}"), "Malformed parameter \"\(part)\" in \"\(pattern)\".")
                precondition(names.insert(name).inserted, "Parameter {\(name)} appears twice in \"\(pattern)\".")
                return .parameter(name)
            }
            precondition(
                !part.contains("{") && !part.contains("}"),
                "A parameter must be a whole segment such as {name}; got \"\(part)\" in \"\(pattern)\".")
            return .literal(String(part))
        }
    }
}
