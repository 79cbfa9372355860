import Foundation
/// The metric types of the Prometheus text format.
public enum MetricType: String, Sendable, Hashable {
    case counter, gauge, histogram, untyped
}

/// Writes the Prometheus text exposition format 0.0.4 straight into one byte buffer,
/// with no intermediate object per sample.
///
/// A family is opened with ``family(_:type:help:)`` (its `# HELP` and `# TYPE` lines);
/// each sample of it then follows as ``sample(_:)``, any ``label(_:_:)``/``labels(_:)``,
/// and one `value` call that ends the line. Samples can only name the open family, so
/// a family's samples are always grouped, as the format requires. Label values and help
/// text are escaped here. Misuse (an invalid name, a family written twice, a value with
/// no sample, a `_bucket` sample outside a histogram) is a programming error and stops
/// the process with a `precondition`.
public struct ExpositionWriter {
    /// Which sample of a family a line is: the family itself, or a histogram's parts.
    public enum Suffix: Sendable, Hashable {
        case none, bucket, sum, count
    }

    private enum State {
        case noFamily, betweenSamples, afterName, inLabels
    }

    /// The exposition so far.
    public private(set) var bytes: [UInt8]
    private var familyName: String = ""
    private var familyType: MetricType = .untyped
    private var families: Set<String> = []
    private var state: State = .noFamily

    /// - Parameter capacity: bytes to reserve up front, so that the buffer rarely grows.
    public init(capacity: Int = 4_096) {
        bytes = []
        bytes.reserveCapacity(capacity)
    }

    /// Opens a family: writes its `# HELP` and `# TYPE` lines.
    ///
    /// `name` must be a valid metric name that no earlier family of this exposition used;
    /// counters must end in `_total`.
    public mutating func family(_ name: String, type: MetricType, help: String) {
        precondition(state == .noFamily || state == .betweenSamples,
                     "A family was opened while the sample line before it was unfinished; end each sample with a value.")
        precondition(Self.isMetricName(name), "'\(name)' is not a valid Prometheus metric name ([a-zA-Z_:][a-zA-Z0-9_:]*).")
        precondition(type != .counter || name.hasSuffix("_total"), "The counter '\(name)' must end in _total.")
        precondition(families.insert(name).inserted, "The family '\(name)' was written twice; its samples must be grouped under one HELP/TYPE.")
        familyName = name
        familyType = type
        append("# HELP ")
        append(name)
        bytes.append(UInt8(ascii: " "))
        for byte in help.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): append("\\\\")
            case UInt8(ascii: "\n"): append("\\n")
            default: bytes.append(byte)
            }
        }
        append("\n# TYPE ")
        append(name)
        bytes.append(UInt8(ascii: " "))
        append(type.rawValue)
        bytes.append(UInt8(ascii: "\n"))
        state = .betweenSamples
    }

    /// Starts a sample line of the open family: the family name plus `suffix`.
    public mutating func sample(_ suffix: Suffix = .none) {
        precondition(state == .betweenSamples, state == .noFamily
                     ? "A sample was written before any family; call family(_:type:help:) first."
                     : "A sample was started while the one before it was unfinished; end each sample with a value.")
        precondition(suffix == .none || familyType == .histogram,
                     "The \(familyType.rawValue) '\(familyName)' cannot have _bucket, _sum or _count samples; only histograms have them.")
        append(familyName)
        switch suffix {
        case .none: break
        case .bucket: append("_bucket")
        case .sum: append("_sum")
        case .count: append("_count")
        }
        state = .afterName
    }

    /// Adds a label to the sample line, escaping its value (backslash, double quote, newline).
    public mutating func label(_ name: String, _ value: String) {
        precondition(Self.isLabelName(name), "'\(name)' is not a valid Prometheus label name ([a-zA-Z_][a-zA-Z0-9_]*, not starting with __).")
        openLabel()
        append(name)
        append("=\"")
        Self.appendEscaped(value, to: &bytes)
        bytes.append(UInt8(ascii: "\""))
    }

    /// Adds labels rendered and escaped before (a probe's identity, written on many lines).
    public mutating func labels(_ set: LabelSet) {
        guard !set.rendered.isEmpty else { return }
        openLabel()
        bytes.append(contentsOf: set.rendered)
    }

    /// Ends the sample line with an unsigned integer value.
    public mutating func value(_ value: UInt64) {
        closeLabels()
        Self.appendDecimal(value, to: &bytes)
        bytes.append(UInt8(ascii: "\n"))
        state = .betweenSamples
    }

    /// Ends the sample line with a fractional value (a ratio), to nine decimals at most.
    public mutating func value(double value: Double) {
        closeLabels()
        if !value.isFinite {
            bytes.append(contentsOf: Array((value.isNaN ? "NaN" : value > 0 ? "+Inf" : "-Inf").utf8))
        } else {
            var text = String(format: "%.9f", value)
            while text.hasSuffix("0") { text.removeLast() }
            if text.hasSuffix(".") { text.removeLast() }
            bytes.append(contentsOf: Array(text.utf8))
        }
        bytes.append(UInt8(ascii: "\n"))
        state = .betweenSamples
    }

    /// Ends the sample line with an integer value.
    public mutating func value(_ value: Int) {
        closeLabels()
        if value < 0 { bytes.append(UInt8(ascii: "-")) }
        Self.appendDecimal(UInt64(value.magnitude), to: &bytes)
        bytes.append(UInt8(ascii: "\n"))
        state = .betweenSamples
    }

    /// Ends the sample line with a duration given in nanoseconds, written in seconds as an
    /// exact decimal (`0.000001023`): no floating-point rounding, the same text every time.
    public mutating func value(secondsFromNanoseconds nanoseconds: UInt64) {
        closeLabels()
        Self.appendSeconds(nanoseconds: nanoseconds, to: &bytes)
        bytes.append(UInt8(ascii: "\n"))
        state = .betweenSamples
    }

    /// Ends the sample line with a signed count of nanoseconds, in seconds (see
    /// ``value(secondsFromNanoseconds:)``); a key table keeps its value sums signed.
    public mutating func value(signedSecondsFromNanoseconds nanoseconds: Int64) {
        closeLabels()
        Self.appendSeconds(signedNanoseconds: nanoseconds, to: &bytes)
        bytes.append(UInt8(ascii: "\n"))
        state = .betweenSamples
    }

    /// Ends the sample line with a duration, in seconds (nanosecond resolution).
    public mutating func value(seconds duration: Duration) {
        let (s, attoseconds) = duration.components
        precondition(s >= 0, "A negative duration (\(duration)) cannot be exposed as seconds here.")
        let nanoseconds = UInt64(s).multipliedReportingOverflow(by: 1_000_000_000)
        value(secondsFromNanoseconds: nanoseconds.overflow ? .max : nanoseconds.partialValue &+ UInt64(attoseconds / 1_000_000_000))
    }

    // MARK: - Encoding

    /// Appends `value` with backslash, double quote and newline escaped, as label values need.
    static func appendEscaped(_ value: String, to bytes: inout [UInt8]) {
        for byte in value.utf8 {
            switch byte {
            case UInt8(ascii: "\\"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "\\"))
            case UInt8(ascii: "\""): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "\""))
            case UInt8(ascii: "\n"): bytes.append(UInt8(ascii: "\\")); bytes.append(UInt8(ascii: "n"))
            default: bytes.append(byte)
            }
        }
    }

    /// Appends `value` in decimal.
    static func appendDecimal(_ value: UInt64, to bytes: inout [UInt8]) {
        if value == 0 {
            bytes.append(UInt8(ascii: "0"))
            return
        }
        let start = bytes.count
        var rest = value
        while rest > 0 {
            bytes.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: rest % 10))
            rest /= 10
        }
        reverse(&bytes, from: start)
    }

    /// Appends `nanoseconds` as seconds: an exact decimal with no trailing zeros.
    static func appendSeconds(nanoseconds: UInt64, to bytes: inout [UInt8]) {
        appendDecimal(nanoseconds / 1_000_000_000, to: &bytes)
        var fraction = nanoseconds % 1_000_000_000
        guard fraction != 0 else { return }
        bytes.append(UInt8(ascii: "."))
        var digits = 9
        while fraction % 10 == 0 {
            fraction /= 10
            digits -= 1
        }
        let start = bytes.count
        for _ in 0..<digits {
            bytes.append(UInt8(ascii: "0") &+ UInt8(truncatingIfNeeded: fraction % 10))
            fraction /= 10
        }
        reverse(&bytes, from: start)
    }

    /// Appends `nanoseconds` as seconds, with a minus sign when negative.
    static func appendSeconds(signedNanoseconds nanoseconds: Int64, to bytes: inout [UInt8]) {
        if nanoseconds < 0 { bytes.append(UInt8(ascii: "-")) }
        appendSeconds(nanoseconds: nanoseconds.magnitude, to: &bytes)
    }

    private static func reverse(_ bytes: inout [UInt8], from start: Int) {
        var i = start, j = bytes.count - 1
        while i < j {
            bytes.swapAt(i, j)
            i += 1
            j -= 1
        }
    }

    /// `[a-zA-Z_:][a-zA-Z0-9_:]*`.
    static func isMetricName(_ name: String) -> Bool {
        guard let first = name.utf8.first, !isDigit(first) else { return false }
        return name.utf8.allSatisfy { isLetter($0) || isDigit($0) || $0 == UInt8(ascii: "_") || $0 == UInt8(ascii: ":") }
    }

    /// `[a-zA-Z_][a-zA-Z0-9_]*`, not starting with `__` (reserved for Prometheus itself).
    static func isLabelName(_ name: String) -> Bool {
        guard let first = name.utf8.first, !isDigit(first), !name.hasPrefix("__") else { return false }
        return name.utf8.allSatisfy { isLetter($0) || isDigit($0) || $0 == UInt8(ascii: "_") }
    }

    private static func isLetter(_ c: UInt8) -> Bool {
        (c >= UInt8(ascii: "a") && c <= UInt8(ascii: "z")) || (c >= UInt8(ascii: "A") && c <= UInt8(ascii: "Z"))
    }

    private static func isDigit(_ c: UInt8) -> Bool { c >= UInt8(ascii: "0") && c <= UInt8(ascii: "9") }

    // MARK: - Line state

    private mutating func append(_ text: String) {
        bytes.append(contentsOf: text.utf8)
    }

    private mutating func openLabel() {
        switch state {
        case .afterName: bytes.append(UInt8(ascii: "{"))
        case .inLabels: bytes.append(UInt8(ascii: ","))
        case .noFamily, .betweenSamples:
            preconditionFailure("A label was written with no sample line open; call sample(_:) first.")
        }
        state = .inLabels
    }

    private mutating func closeLabels() {
        switch state {
        case .afterName: bytes.append(UInt8(ascii: " "))
        case .inLabels: append("} ")
        case .noFamily, .betweenSamples:
            preconditionFailure("A value was written with no sample line open; call sample(_:) first.")
        }
    }
}
