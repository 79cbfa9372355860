/// Label pairs escaped and rendered once (`a="x",b="y"`), to be written on many sample
/// lines, such as a probe's identity on each of its histogram buckets.
public struct LabelSet: Sendable, Hashable {
    /// The pairs as they appear between the braces, without the braces.
    public let rendered: [UInt8]

    /// Renders `pairs` in the given order.
    ///
    /// Every name must be a valid label name and appear once; a violation is a
    /// programming error (`precondition`).
    public init(_ pairs: KeyValuePairs<String, String>) {
        self.init(pairs.map { (name: $0.key, value: $0.value) })
    }

    /// Renders `values` under `names`, which the caller checked once (valid, distinct) for
    /// the many label sets it makes with them: a key table's thousands of keys.
    init(checkedNames names: [String], values: [String], extra: (name: String, value: String)? = nil) {
        var bytes: [UInt8] = []
        for (i, (name, value)) in zip(names, values).enumerated() {
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(contentsOf: name.utf8)
            bytes.append(contentsOf: [UInt8(ascii: "="), UInt8(ascii: "\"")])
            ExpositionWriter.appendEscaped(value, to: &bytes)
            bytes.append(UInt8(ascii: "\""))
        }
        if let extra {
            if !bytes.isEmpty { bytes.append(UInt8(ascii: ",")) }
            bytes.append(contentsOf: extra.name.utf8)
            bytes.append(contentsOf: [UInt8(ascii: "="), UInt8(ascii: "\"")])
            ExpositionWriter.appendEscaped(extra.value, to: &bytes)
            bytes.append(UInt8(ascii: "\""))
        }
        rendered = bytes
    }

    /// Renders `pairs` in the given order (see ``init(_:)-(KeyValuePairs<String,String>)``).
    public init(_ pairs: [(name: String, value: String)]) {
        var bytes: [UInt8] = []
        var seen = Set<String>()
        for (i, pair) in pairs.enumerated() {
            precondition(ExpositionWriter.isLabelName(pair.name),
                         "'\(pair.name)' is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __).")
            precondition(seen.insert(pair.name).inserted, "The label '\(pair.name)' appears twice in one label set.")
            if i > 0 { bytes.append(UInt8(ascii: ",")) }
            bytes.append(contentsOf: pair.name.utf8)
            bytes.append(UInt8(ascii: "="))
            bytes.append(UInt8(ascii: "\""))
            ExpositionWriter.appendEscaped(pair.value, to: &bytes)
            bytes.append(UInt8(ascii: "\""))
        }
        rendered = bytes
    }
}
