/// A strict reader of the text format 0.0.4, independent of the writer: it checks that
/// every sample follows its family's HELP and TYPE, that families are not split, and
/// that label values use only the three escapes the format defines.
struct ParsedExposition {
    struct Sample: Equatable {
        var name: String
        var labels: [String: String]
        var value: String
    }

    struct Family {
        var name: String
        var type: String
        var help: String
    }

    struct Malformed: Error, CustomStringConvertible {
        var line: Int
        var reason: String
        var description: String { "line \(line): \(reason)" }
    }

    var families: [Family] = []
    var samples: [Sample] = []

    func family(_ name: String) -> Family? { families.first { $0.name == name } }

    /// Samples named `name`, optionally only those whose labels include `matching`.
    func samples(_ name: String, matching: [String: String] = [:]) -> [Sample] {
        samples.filter { s in s.name == name && matching.allSatisfy { s.labels[$0.key] == $0.value } }
    }

    init(_ text: String) throws {
        guard text.isEmpty || text.hasSuffix("\n") else { throw Malformed(line: 0, reason: "the exposition must end with a newline") }
        var helps: [String: String] = [:]
        var current: Family?
        var closed = Set<String>()
        // Split on the scalar: "\r\n" is one Character, and a raw CR may sit in a label value.
        for (index, scalars) in text.unicodeScalars.split(separator: "\n", omittingEmptySubsequences: false).dropLast().enumerated() {
            let line = Substring(scalars)
            let number = index + 1
            if line.hasPrefix("# HELP ") {
                let rest = line.dropFirst(7)
                guard let space = rest.firstIndex(of: " ") else { throw Malformed(line: number, reason: "HELP without text") }
                helps[String(rest[..<space])] = try Self.unescapeHelp(rest[rest.index(after: space)...], line: number)
            } else if line.hasPrefix("# TYPE ") {
                let parts = line.dropFirst(7).split(separator: " ")
                guard parts.count == 2 else { throw Malformed(line: number, reason: "TYPE needs a name and a type") }
                let name = String(parts[0])
                guard let help = helps[name] else { throw Malformed(line: number, reason: "TYPE \(name) without a HELP line before it") }
                guard ["counter", "gauge", "histogram", "summary", "untyped"].contains(parts[1]) else {
                    throw Malformed(line: number, reason: "unknown type \(parts[1])")
                }
                if let current { closed.insert(current.name) }
                guard !closed.contains(name), family(name) == nil else { throw Malformed(line: number, reason: "family \(name) appears twice") }
                let opened = Family(name: name, type: String(parts[1]), help: help)
                families.append(opened)
                current = opened
            } else if line.hasPrefix("#") {
                continue
            } else {
                guard let family = current else { throw Malformed(line: number, reason: "a sample before any TYPE line") }
                let sample = try Self.parseSample(line, line: number)
                let allowed = family.type == "histogram"
                    ? [family.name + "_bucket", family.name + "_sum", family.name + "_count"]
                    : [family.name]
                guard allowed.contains(sample.name) else {
                    throw Malformed(line: number, reason: "\(sample.name) is not a sample of the open family \(family.name)")
                }
                guard Double(sample.value) != nil || ["+Inf", "-Inf", "NaN"].contains(sample.value) else {
                    throw Malformed(line: number, reason: "value '\(sample.value)' is not a float")
                }
                samples.append(sample)
            }
        }
    }

    static func unescapeHelp(_ text: Substring, line: Int) throws -> String {
        var out = "", escaping = false
        for c in text {
            if escaping {
                switch c {
                case "\\": out.append("\\")
                case "n": out.append("\n")
                default: throw Malformed(line: line, reason: "HELP has the undefined escape \\\(c)")
                }
                escaping = false
            } else if c == "\\" {
                escaping = true
            } else {
                out.append(c)
            }
        }
        guard !escaping else { throw Malformed(line: line, reason: "HELP ends in a lone backslash") }
        return out
    }

    static func parseSample(_ line: Substring, line number: Int) throws -> Sample {
        let chars = Array(line.unicodeScalars)
        var i = 0
        func isNameChar(_ c: Unicode.Scalar, first: Bool, colon: Bool) -> Bool {
            (c >= "a" && c <= "z") || (c >= "A" && c <= "Z") || c == "_" || (colon && c == ":") || (!first && c >= "0" && c <= "9")
        }
        var name = ""
        while i < chars.count, isNameChar(chars[i], first: name.isEmpty, colon: true) { name.unicodeScalars.append(chars[i]); i += 1 }
        guard !name.isEmpty else { throw Malformed(line: number, reason: "no metric name") }
        var labels: [String: String] = [:]
        if i < chars.count, chars[i] == "{" {
            i += 1
            while true {
                guard i < chars.count else { throw Malformed(line: number, reason: "unterminated label set") }
                if chars[i] == "}" { i += 1; break }
                var label = ""
                while i < chars.count, isNameChar(chars[i], first: label.isEmpty, colon: false) { label.unicodeScalars.append(chars[i]); i += 1 }
                guard !label.isEmpty, i + 1 < chars.count, chars[i] == "=", chars[i + 1] == "\"" else {
                    throw Malformed(line: number, reason: "bad label near column \(i)")
                }
                i += 2
                var value = ""
                while true {
                    guard i < chars.count else { throw Malformed(line: number, reason: "unterminated label value") }
                    let c = chars[i]
                    i += 1
                    if c == "\"" { break }
                    if c == "\\" {
                        guard i < chars.count else { throw Malformed(line: number, reason: "lone backslash") }
                        switch chars[i] {
                        case "\\": value.append("\\")
                        case "\"": value.append("\"")
                        case "n": value.append("\n")
                        default: throw Malformed(line: number, reason: "undefined escape \\\(chars[i]) in a label value")
                        }
                        i += 1
                    } else {
                        value.unicodeScalars.append(c)
                    }
                }
                guard labels.updateValue(value, forKey: label) == nil else { throw Malformed(line: number, reason: "label \(label) twice") }
                guard i < chars.count else { throw Malformed(line: number, reason: "unterminated label set") }
                if chars[i] == "," { i += 1 } else if chars[i] != "}" { throw Malformed(line: number, reason: "expected , or } after a label") }
            }
        }
        guard i < chars.count, chars[i] == " " else { throw Malformed(line: number, reason: "no space before the value") }
        let value = String(String.UnicodeScalarView(chars[(i + 1)...]))
        guard !value.isEmpty, !value.contains(" ") else { throw Malformed(line: number, reason: "value '\(value)' (timestamps are not used here)") }
        return Sample(name: name, labels: labels, value: value)
    }
}
