import Foundation
import TraceAPI
import TraceCore
import Yams

/// A probe set written as YAML: a list of probe specs in the API's JSON shape, or a
/// mapping with a single `probes:` list.
///
/// ```yaml
/// probes:
///   - name: read-latency
///     target: {type: syscall, name: read}
///     mechanisms: [fentry, kprobe, tracepoint]
///     labels: {owner: ctrl-1}
///   - name: switches
///     target: {type: tracepoint, name: "sched:sched_switch"}
///   - name: read-sizes
///     target: {type: syscall, name: read}
///     filter: {min_latency_ns: 1000}
///     aggregate: {by: [comm, "arg:fd"], value: ret, by_process: false}
/// ```
///
/// Each entry is decoded as strictly as `PUT /v1/probes/{name}` decodes a body (unknown
/// fields, wrong types and missing members are errors) and then checked with
/// ``ProbeSpec/validate()``. Every entry needs a unique `name`: a probe set is applied by
/// name, so that applying it twice changes nothing.
enum ProbeFile {
    /// Largest probe file read, in bytes.
    static let maxBytes = 1 << 20
    /// Deepest YAML nesting accepted (the same bound as a request body).
    static let maxDepth = SpecDecoder.maxDepth

    /// Reads and checks the probe file at `path`.
    ///
    /// - Returns: the specs in file order, each with its `name` set. May be empty
    ///   (`probes: []`); callers that need probes say so.
    /// - Throws: ``ProbeFileError`` naming the file and, per problem, the 1-based entry
    ///   and its line; every problem of every entry is reported at once.
    static func load(_ path: String) throws(ProbeFileError) -> [ProbeSpec] {
        guard let data = FileManager.default.contents(atPath: path) else {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot be read" : "does not exist"
            throw ProbeFileError(file: path, problems: [.init(message: reason)])
        }
        guard data.count <= maxBytes else {
            throw ProbeFileError(file: path, problems: [.init(message: "is \(data.count) bytes; a probe file is at most \(maxBytes)")])
        }
        guard let text = String(data: data, encoding: .utf8) else {
            throw ProbeFileError(file: path, problems: [.init(message: "is not UTF-8 text")])
        }
        return try parse(text, file: path)
    }

    /// Parses probe-file text; `file` names it in errors.
    static func parse(_ text: String, file: String) throws(ProbeFileError) -> [ProbeSpec] {
        let root: Node?
        do {
            root = try Yams.compose(yaml: text)
        } catch {
            throw ProbeFileError(file: file, problems: [.init(message: "is not valid YAML: \(describe(error))")])
        }
        let entries: Node.Sequence
        switch root {
        case .none:
            throw ProbeFileError(file: file, problems: [.init(message: "is empty; write a list of probe specs or `probes:` with a list")])
        case .sequence(let list)?:
            entries = list
        case .mapping(let mapping)?:
            let keys = Array(mapping.keys.map { $0.string ?? "?" })
            guard keys == ["probes"], let value = mapping["probes"] else {
                throw ProbeFileError(file: file, problems: [.init(line: mapping.mark?.line,
                    message: "has top-level keys \(keys.map { "`\($0)`" }.joined(separator: ", ")); the only one allowed is `probes` (a list of probe specs)")])
            }
            if case .scalar = value, value.null != nil { return [] }
            guard case .sequence(let list) = value else {
                throw ProbeFileError(file: file, problems: [.init(line: value.mark?.line, message: "`probes` must be a list of probe specs")])
            }
            entries = list
        case .some:
            throw ProbeFileError(file: file, problems: [.init(line: root?.mark?.line,
                message: "must hold a list of probe specs, or `probes:` with a list")])
        }

        var specs: [ProbeSpec] = []
        var problems: [ProbeFileError.Problem] = []
        var firstEntry: [String: Int] = [:]
        for (offset, node) in entries.enumerated() {
            let index = offset + 1
            let line = node.mark?.line
            func fail(_ message: String, name: String? = nil) {
                problems.append(.init(entry: index, line: line, name: name, message: message))
            }
            guard case .mapping = node else {
                fail("must be a mapping (a probe spec), not \(kind(of: node))")
                continue
            }
            let value: JSONValue
            do {
                value = try json(from: node, depth: 0)
            } catch {
                fail(error.message)
                continue
            }
            guard case .object(let members) = value else { continue }
            var name: String?
            if case .string(let n)? = members["name"] { name = n }
            let spec: ProbeSpec
            do {
                spec = try SpecDecoder.decode(Array(try JSONEncoder().encode(value)))
            } catch let problem as Problem {
                for error in fieldErrors(problem) { fail("\(error.field) \(error.message)\(quoteHint(error))", name: name) }
                continue
            } catch {
                fail("cannot be read: \(error)", name: name)
                continue
            }
            let errors = spec.validate()
            for error in errors { fail("\(error.field) \(error.message)", name: name) }
            guard let specName = spec.name else {
                fail("name is required: a probe set is applied by name (e.g. `name: read-latency`)")
                continue
            }
            if let earlier = firstEntry[specName] {
                fail("name `\(specName)` is already used by entry \(earlier)", name: specName)
                continue
            }
            firstEntry[specName] = index
            if errors.isEmpty { specs.append(spec) }
        }
        guard problems.isEmpty else { throw ProbeFileError(file: file, problems: problems) }
        return specs
    }

    struct ConversionError: Error {
        var message: String
    }

    /// The JSON value a YAML node stands for. Quoted scalars are strings; plain scalars
    /// follow YAML's core types (null, bool, int, float), anything else is a string.
    static func json(from node: Node, depth: Int) throws(ConversionError) -> JSONValue {
        guard depth < maxDepth else { throw ConversionError(message: "is nested deeper than \(maxDepth) levels") }
        switch node {
        case .scalar(let scalar):
            if scalar.style != .plain && scalar.style != .any { return .string(scalar.string) }
            switch node.tag.description {
            case Tag.Name.null.rawValue: return .null
            case Tag.Name.bool.rawValue: return node.bool.map(JSONValue.bool) ?? .string(scalar.string)
            case Tag.Name.int.rawValue:
                if let int = node.int { return .integer(Int64(int)) }
                return node.float.map(JSONValue.number) ?? .string(scalar.string)
            case Tag.Name.float.rawValue:
                guard let number = node.float, number.isFinite else {
                    throw ConversionError(message: "`\(scalar.string)` (line \(scalar.mark?.line ?? 0)) is not a finite number")
                }
                return .number(number)
            default: return .string(scalar.string)
            }
        case .sequence(let sequence):
            var items: [JSONValue] = []
            for item in sequence { items.append(try json(from: item, depth: depth + 1)) }
            return .array(items)
        case .mapping(let mapping):
            var members: [String: JSONValue] = [:]
            for (key, value) in mapping {
                guard case .scalar(let scalar) = key else {
                    throw ConversionError(message: "has a key that is not a plain string (line \(key.mark?.line ?? 0))")
                }
                members[scalar.string] = try json(from: value, depth: depth + 1)
            }
            return .object(members)
        case .alias:
            throw ConversionError(message: "uses a YAML alias that could not be resolved")
        }
    }

    static func fieldErrors(_ problem: Problem) -> [FieldError] {
        guard case .array(let items)? = problem.extensions["errors"] else {
            return [FieldError(field: "(entry)", message: problem.detail ?? problem.title)]
        }
        return items.compactMap { item in
            guard case .object(let o) = item, case .string(let field)? = o["field"], case .string(let message)? = o["message"] else { return nil }
            return FieldError(field: field == "(body)" ? "(entry)" : field, message: message)
        }
    }

    /// YAML reads `on`, `1.0` or `2024-01-01` as non-strings; say how to keep the text.
    static func quoteHint(_ error: FieldError) -> String {
        error.message.hasSuffix("must be a string, not a number") || error.message.hasSuffix("must be a string, not a boolean")
            ? " (quote the value in YAML to keep it a string)" : ""
    }

    static func kind(of node: Node) -> String {
        switch node {
        case .scalar: "a scalar"
        case .sequence: "a list"
        case .mapping: "a mapping"
        case .alias: "an alias"
        }
    }

    /// One line: where, what, and while doing what (Yams' own text spans several lines).
    static func describe(_ error: any Error) -> String {
        func at(_ mark: Mark) -> String { "line \(mark.line), column \(mark.column)" }
        func during(_ context: YamlError.Context?) -> String {
            context.map { " (\($0.text) at \(at($0.mark)))" } ?? ""
        }
        switch error as? YamlError {
        case .scanner(let context, let problem, let mark, _)?, .parser(let context, let problem, let mark, _)?,
             .composer(let context, let problem, let mark, _)?:
            return "\(at(mark)): \(problem)\(during(context))"
        case .duplicatedKeysInMapping(let duplicates, let context)?:
            return "\(at(context.mark)): duplicate key\(duplicates.count == 1 ? "" : "s") \(duplicates.sorted().map { "`\($0)`" }.joined(separator: ", "))"
        default:
            return String(describing: error).split(separator: "\n").first.map(String.init) ?? "\(error)"
        }
    }
}

/// A probe file that cannot be used: every problem found, each with its entry and line.
struct ProbeFileError: Error, CustomStringConvertible {
    struct Problem: Sendable, Hashable {
        /// 1-based position in the list; nil for problems with the file as a whole.
        var entry: Int?
        var line: Int?
        var name: String?
        var message: String

        init(entry: Int? = nil, line: Int? = nil, name: String? = nil, message: String) {
            self.entry = entry
            self.line = line
            self.name = name
            self.message = message
        }
    }

    var file: String
    var problems: [Problem]

    var description: String {
        if problems.count == 1, problems[0].entry == nil {
            let p = problems[0]
            return "probe file \(file)\(p.line.map { " (line \($0))" } ?? ""): \(p.message)"
        }
        let lines = problems.map { p -> String in
            var place = p.entry.map { "entry \($0)" } ?? "file"
            if let line = p.line { place += " (line \(line)\(p.name.map { ", \($0)" } ?? ""))" }
            return "  \(place): \(p.message)"
        }
        return "probe file \(file) has \(problems.count) problem\(problems.count == 1 ? "" : "s"):\n" + lines.joined(separator: "\n")
    }
}
