import Foundation
import TraceCore

/// Decodes a probe spec strictly: bounded nesting, no unknown fields, clear field errors.
public enum SpecDecoder {
    /// Deepest JSON nesting accepted in a request body.
    public static let maxDepth = 16

    static let allowed: [String: Set<String>] = [
        "": ["name", "target", "mechanisms", "filter", "ttl_seconds", "labels"],
        "target": ["type", "name", "path", "symbol"],
        "filter": ["pid", "comm"],
    ]

    /// - Throws: a 400 ``Problem`` describing every problem found.
    public static func decode(_ body: [UInt8]) throws(Problem) -> ProbeSpec {
        if body.isEmpty { throw Problem.badRequest(detail: "The request body is empty; send a probe spec as JSON.") }
        if let depth = nestingBeyond(body, limit: maxDepth) {
            throw Problem.badRequest(detail: "The JSON is nested deeper than \(maxDepth) levels (\(depth)+).")
        }
        let value: JSONValue
        do {
            value = try JSONDecoder().decode(JSONValue.self, from: Data(body))
        } catch {
            throw Problem.badRequest(detail: "The body is not valid JSON: \(describe(error))")
        }
        guard case .object = value else {
            throw Problem.badRequest(detail: "The body must be a JSON object (a probe spec).")
        }
        var errors: [FieldError] = []
        unknownFields(value, path: "", into: &errors)
        if !errors.isEmpty { throw invalid(errors) }
        do {
            return try JSONDecoder().decode(ProbeSpec.self, from: Data(body))
        } catch let error as DecodingError {
            throw invalid([fieldError(error)])
        } catch {
            throw Problem.badRequest(detail: "The probe spec could not be read: \(error)")
        }
    }

    static func invalid(_ errors: [FieldError]) -> Problem {
        Problem(slug: "invalid-spec", title: "Invalid Probe Spec", status: .badRequest,
                detail: "The probe spec is invalid: " + errors.map { "\($0.field) \($0.message)" }.joined(separator: "; "),
                extensions: ["errors": .array(errors.map { .object(["field": .string($0.field), "message": .string($0.message)]) })])
    }

    static func unknownFields(_ value: JSONValue, path: String, into errors: inout [FieldError]) {
        guard case .object(let members) = value, let known = allowed[path] else { return }
        for (key, child) in members.sorted(by: { $0.key < $1.key }) {
            let childPath = path.isEmpty ? key : "\(path).\(key)"
            if !known.contains(key) {
                errors.append(FieldError(field: String(childPath.prefix(128)), message: "is not a known field (known: \(known.sorted().joined(separator: ", ")))"))
            } else {
                unknownFields(child, path: childPath, into: &errors)
            }
        }
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

    /// The depth reached when nesting goes beyond `limit`, else nil. Skips strings.
    static func nestingBeyond(_ bytes: [UInt8], limit: Int) -> Int? {
        var depth = 0, inString = false, escaped = false
        for b in bytes {
            if inString {
                if escaped { escaped = false } else if b == 0x5C { escaped = true } else if b == 0x22 { inString = false }
                continue
            }
            switch b {
            case 0x22: inString = true
            case 0x5B, 0x7B:
                depth += 1
                if depth > limit { return depth }
            case 0x5D, 0x7D: depth -= 1
            default: break
            }
        }
        return nil
    }
}
