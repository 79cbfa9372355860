import Foundation
import TraceCore

/// Decodes a probe spec strictly: bounded nesting, no unknown fields, clear field errors.
public enum SpecDecoder {
    /// Deepest JSON nesting accepted in a request body.
    public static let maxDepth = 16

    /// - Throws: a 400 ``Problem`` describing every problem found. Every 400 carries
    ///   `errors` (`field`, `message`); `(body)` names the body as a whole.
    public static func decode(_ body: [UInt8]) throws(Problem) -> ProbeSpec {
        if body.isEmpty { throw badRequest("The request body is empty; send a probe spec as JSON.") }
        switch scan(body, depthLimit: maxDepth) {
        case .tooDeep(let depth)?:
            throw badRequest("The JSON is nested deeper than \(maxDepth) levels (\(depth)+).")
        case .trailingComma(let offset)?:
            throw badRequest("The body is not valid JSON: a comma before a closing bracket (byte \(offset)).")
        case nil:
            break
        }
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(body))
        } catch DecodingError.typeMismatch(_, let context) where !context.codingPath.isEmpty {
            // The structure parsed, yet this value fits none of JSONValue's cases: a number
            // beyond Double's range (1e400), or a string that cannot be read (a raw control
            // character, an invalid escape, invalid UTF-8, an unpaired surrogate).
            throw invalid([FieldError(field: path(context.codingPath),
                                      message: "cannot be read: a number out of range, or a string with a raw control character, an invalid escape or invalid UTF-8")])
        } catch {
            throw badRequest("The body is not valid JSON: \(describe(error))")
        }
        guard case .object = value else {
            throw badRequest("The body must be a JSON object (a probe spec).")
        }
        var errors: [FieldError] = []
        check(value, path: "", into: &errors)
        if !errors.isEmpty { throw invalid(errors) }
        do {
            return try JSONDecoder().decode(ProbeSpec.self, from: Data(body))
        } catch let error as DecodingError {
            throw invalid([fieldError(error)])
        } catch {
            throw badRequest("The probe spec could not be read: \(error)")
        }
    }

    /// A 400 about the body as a whole, with the same `errors` member as field problems.
    static func badRequest(_ detail: String) -> Problem {
        Problem.badRequest(detail: detail, errors: [.object(["field": "(body)", "message": .string(detail)])])
    }

    static func invalid(_ errors: [FieldError]) -> Problem {
        Problem(slug: "invalid-spec", title: "Invalid Probe Spec", status: .badRequest,
                detail: "The probe spec is invalid: " + errors.map { "\($0.field) \($0.message)" }.joined(separator: "; "),
                extensions: ["errors": .array(errors.map { .object(["field": .string($0.field), "message": .string($0.message)]) })])
    }

    /// The members of each object (by path) and their JSON types; `required` members must
    /// be present and not null, the others may be null (the same as absent).
    enum Kind { case string, integer, number, boolean, object, strings, stringMap }
    static let kinds: [String: [String: Kind]] = [
        "": ["name": .string, "target": .object, "mechanisms": .strings, "filter": .object,
             "ttl_seconds": .integer, "labels": .stringMap, "aggregate": .object, "events": .object,
             "budget": .object],
        "budget": ["max_cpu_percent": .number, "max_events_per_second": .integer],
        "events": ["min_latency_ns": .integer, "max_per_second": .integer, "buffer_kib": .integer],
        // Only JSON types here: how many keys, which names and what bounds are
        // AggregatePlan.resolve's (field errors such as `aggregate.by`).
        "aggregate": ["by": .strings, "value": .string, "histogram": .object, "max_keys": .integer, "by_process": .boolean],
        "aggregate.histogram": ["kind": .string, "min": .integer, "max": .integer, "step": .integer],
        "target": ["type": .string, "name": .string, "path": .string, "symbol": .string, "frequency_hz": .integer],
        "filter": ["pid": .integer, "comm": .string, "min_latency_ns": .integer, "cgroup": .string, "container_id": .string, "pod_uid": .string],
    ]
    static let required: [String: [String]] = ["": ["target"], "target": ["type"], "aggregate.histogram": ["kind"]]

    /// Collects unknown members, missing required ones and wrong JSON types, in one pass,
    /// so that the ``ProbeSpec`` decoding after it cannot fail.
    static func check(_ value: JSONValue, path: String, into errors: inout [FieldError]) {
        guard case .object(let members) = value, let kinds = kinds[path] else { return }
        func child(_ key: String) -> String { path.isEmpty ? key : "\(path).\(key)" }
        for key in required[path] ?? [] where members[key] == nil {
            errors.append(FieldError(field: child(key), message: "is required"))
        }
        for (key, member) in members.sorted(by: { $0.key < $1.key }) {
            let field = child(key)
            guard let kind = kinds[key] else {
                errors.append(FieldError(field: String(field.prefix(128)), message: "is not a known field (known: \(kinds.keys.sorted().joined(separator: ", ")))"))
                continue
            }
            if member == .null {
                if required[path]?.contains(key) == true { errors.append(FieldError(field: field, message: "must not be null")) }
                continue
            }
            switch kind {
            case .string:
                if case .string = member { continue }
                errors.append(FieldError(field: field, message: "must be a string, not \(typeName(member))"))
            case .integer:
                if let problem = integerProblem(member) { errors.append(FieldError(field: field, message: problem)) }
            case .number:
                switch member {
                case .integer, .number: continue
                default: errors.append(FieldError(field: field, message: "must be a number, not \(typeName(member))"))
                }
            case .boolean:
                if case .bool = member { continue }
                errors.append(FieldError(field: field, message: "must be a boolean (true or false), not \(typeName(member))"))
            case .object:
                guard case .object = member else {
                    errors.append(FieldError(field: field, message: "must be an object, not \(typeName(member))"))
                    continue
                }
                check(member, path: field, into: &errors)
            case .strings:
                guard case .array(let items) = member else {
                    errors.append(FieldError(field: field, message: "must be an array of strings, not \(typeName(member))"))
                    continue
                }
                for (i, item) in items.enumerated().prefix(32) {
                    if case .string = item { continue }
                    errors.append(FieldError(field: "\(field)[\(i)]", message: "must be a string, not \(typeName(item))"))
                }
            case .stringMap:
                guard case .object(let entries) = member else {
                    errors.append(FieldError(field: field, message: "must be an object of strings, not \(typeName(member))"))
                    continue
                }
                for (name, item) in entries.sorted(by: { $0.key < $1.key }).prefix(64) {
                    if case .string = item { continue }
                    errors.append(FieldError(field: "\(field).\(name.prefix(64))", message: "must be a string, not \(typeName(item))"))
                }
            }
        }
    }

    /// Why `value` is not an integer the spec can hold, or nil. JSONValue keeps integral
    /// numbers that fit 64 bits as `.integer`, so a `.number` is fractional or too large.
    static func integerProblem(_ value: JSONValue) -> String? {
        switch value {
        case .integer: return nil
        case .number(let number):
            return number.rounded(.towardZero) == number ? "is out of range (\(number))" : "must be an integer, not \(number)"
        default: return "must be an integer, not \(typeName(value))"
        }
    }

    static func typeName(_ value: JSONValue) -> String {
        switch value {
        case .null: "null"
        case .bool: "a boolean"
        case .integer, .number: "a number"
        case .string: "a string"
        case .array: "an array"
        case .object: "an object"
        }
    }

    static func path(_ codingPath: [any CodingKey]) -> String {
        let joined = codingPath.reduce("") { acc, key in
            if let index = key.intValue { return acc + "[\(index)]" }
            return acc.isEmpty ? key.stringValue : acc + "." + key.stringValue
        }
        return joined.isEmpty ? "(body)" : String(joined.prefix(128))
    }

    static func fieldError(_ error: DecodingError) -> FieldError {
        func path(_ context: DecodingError.Context, _ extra: String? = nil) -> String {
            var parts = context.codingPath.map { $0.intValue.map { "[\($0)]" } ?? $0.stringValue }
            if let extra { parts.append(extra) }
            let joined = parts.reduce("") { acc, p in p.hasPrefix("[") ? acc + p : (acc.isEmpty ? p : acc + "." + p) }
            return joined.isEmpty ? "(body)" : joined
        }
        switch error {
        case .typeMismatch(let type, let context):
            return FieldError(field: path(context), message: "has the wrong type: expected \(jsonType(type))")
        case .valueNotFound(let type, let context):
            return FieldError(field: path(context), message: "must not be null (expected \(jsonType(type)))")
        case .keyNotFound(let key, let context):
            return FieldError(field: path(context, key.stringValue), message: "is required")
        case .dataCorrupted(let context):
            let field = path(context)
            if field.hasSuffix("type") {
                return FieldError(field: field, message: "must be one of: \(TargetType.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            return FieldError(field: field, message: "has an invalid value (\(context.debugDescription))")
        @unknown default:
            return FieldError(field: "(body)", message: "could not be decoded")
        }
    }

    static func jsonType(_ type: Any.Type) -> String {
        switch type {
        case is String.Type: "a string"
        case is Int.Type, is Int64.Type, is UInt64.Type: "an integer (in range)"
        case is Double.Type: "a number"
        case is Bool.Type: "a boolean"
        case is [String].Type, is [Any].Type: "an array"
        default: type is any Collection.Type ? "an array" : "an object"
        }
    }

    static func describe(_ error: any Error) -> String {
        if case DecodingError.dataCorrupted(let context) = error {
            let underlying = (context.underlyingError as NSError?)?.userInfo[NSDebugDescriptionErrorKey] as? String
            return underlying ?? context.debugDescription
        }
        return "\(error)"
    }

    enum ScanProblem: Equatable {
        /// Nesting went beyond the limit (the depth reached).
        case tooDeep(Int)
        /// `,]` or `,}`, which Foundation's parser accepts but RFC 8259 does not
        /// (a parser in front of the agent could read the body differently).
        case trailingComma(offset: Int)
    }

    /// One pass over the bytes before any parsing, outside strings: nesting depth and
    /// trailing commas.
    static func scan(_ bytes: [UInt8], depthLimit: Int) -> ScanProblem? {
        var depth = 0, inString = false, escaped = false
        var last: UInt8 = 0  // the last byte outside strings that is not whitespace
        for (offset, b) in bytes.enumerated() {
            if inString {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inString = false }
                continue
            }
            switch b {
            case 0x20, 0x09, 0x0A, 0x0D: continue
            case 0x22: inString = true
            case 0x5B, 0x7B:
                depth += 1
                if depth > depthLimit { return .tooDeep(depth) }
            case 0x5D, 0x7D:
                if last == 0x2C { return .trailingComma(offset: offset) }
                depth -= 1
            default: break
            }
            last = b
        }
        return nil
    }
}
