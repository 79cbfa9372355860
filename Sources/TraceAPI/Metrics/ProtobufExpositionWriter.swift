/// Writes the Prometheus protobuf exposition: length-delimited `io.prometheus.client.MetricFamily`
/// messages, encoded by hand from the published field numbers (prometheus/client_model
/// `metrics.proto`; `tests/prometheus/metrics.proto` restates the ones used here for the
/// tests' independent decoders):
///
/// - MetricFamily: name 1, help 2, type 3 (COUNTER 0, GAUGE 1, UNTYPED 3, HISTOGRAM 4), metric 4.
/// - Metric: label 1 (LabelPair: name 1, value 2), gauge 2, counter 3, untyped 5, histogram 7;
///   Gauge, Counter and Untyped: value 1 (double).
/// - Histogram: sample_count 1, sample_sum 2, bucket 3 (Bucket: cumulative_count 1,
///   upper_bound 2), schema 5 (sint32), zero_threshold 6, zero_count 7, positive_span 12
///   (BucketSpan: offset 1 sint32, length 2 uint32), positive_delta 13 (packed sint64).
///
/// It takes the same calls as the text writer (``MetricsSink``) and groups them: a classic
/// histogram's `_bucket`, `_sum` and `_count` samples of one label set become one Metric
/// (its `+Inf` bucket is left out: the format makes it from `sample_count`). A family that
/// ends with no metric is not written (the text format writes its HELP and TYPE anyway).
public struct ProtobufExpositionWriter: MetricsSink {
    /// The media type Prometheus asks for with native histograms on.
    public static let contentType = "application/vnd.google.protobuf; proto=io.prometheus.client.MetricFamily; encoding=delimited"

    public var servesNativeHistograms: Bool { true }

    /// The finished families.
    private var output: [UInt8]
    private var families: Set<String> = []
    private var familyName = ""
    private var familyHelp = ""
    private var familyType: MetricType = .untyped
    private var open = false
    /// The open family's metrics, each already framed as field 4.
    private var metrics: [UInt8] = []

    /// The sample being written: its part and labels (LabelPair fields of a Metric).
    private var suffix: ExpositionWriter.Suffix?
    private var labelFields: [UInt8] = []
    private var le: Double?

    /// A classic histogram collected from its samples, written when its labels change.
    private struct Classic {
        var labels: [UInt8]
        var buckets: [UInt8] = []
        var sum: Double = 0
        var count: UInt64 = 0
    }
    private var classic: Classic?

    public init(capacity: Int = 4_096) {
        output = []
        output.reserveCapacity(capacity)
    }

    /// The exposition: every family written, the open one included.
    public mutating func finish() -> [UInt8] {
        closeFamily()
        return output
    }

    // MARK: - MetricsSink

    public mutating func family(_ name: String, type: MetricType, help: String) {
        precondition(suffix == nil, "A family was opened while the sample before it was unfinished; end each sample with a value.")
        precondition(ExpositionWriter.isMetricName(name), "'\(name)' is not a valid Prometheus metric name.")
        precondition(families.insert(name).inserted, "The family '\(name)' was written twice.")
        closeFamily()
        familyName = name
        familyHelp = help
        familyType = type
        open = true
    }

    public mutating func sample(_ suffix: ExpositionWriter.Suffix) {
        precondition(open, "A sample was written before any family.")
        precondition(self.suffix == nil, "A sample was started while the one before it was unfinished.")
        precondition(suffix == .none || familyType == .histogram, "Only histograms have _bucket, _sum and _count samples.")
        self.suffix = suffix
        labelFields.removeAll(keepingCapacity: true)
        le = nil
    }

    public mutating func label(_ name: String, _ value: String) {
        precondition(suffix != nil, "A label outside a sample.")
        precondition(ExpositionWriter.isLabelName(name), "'\(name)' is not a valid Prometheus label name.")
        addLabel(Array(name.utf8), Array(value.utf8))
    }

    public mutating func labels(_ set: LabelSet) {
        precondition(suffix != nil, "Labels outside a sample.")
        Self.forEachPair(set.rendered) { name, value in addLabel(name, value) }
    }

    public mutating func value(_ value: UInt64) { end(Double(value), count: value) }
    public mutating func value(double value: Double) { end(value, count: nil) }
    public mutating func value(_ value: Int) { end(Double(value), count: value >= 0 ? UInt64(value) : nil) }
    public mutating func value(secondsFromNanoseconds nanoseconds: UInt64) { end(Double(nanoseconds) / 1e9, count: nil) }
    public mutating func value(signedSecondsFromNanoseconds nanoseconds: Int64) { end(Double(nanoseconds) / 1e9, count: nil) }
    public mutating func value(seconds duration: Duration) {
        let (seconds, attoseconds) = duration.components
        end(Double(seconds) + Double(attoseconds) / 1e18, count: nil)
    }

    public mutating func nativeHistogram(_ labels: [LabelSet], zeroCount: UInt64, firstIndex: Int, counts: [UInt64], sum: Double) {
        precondition(open && familyType == .histogram && suffix == nil, "A native histogram belongs in a histogram family, between samples.")
        flushClassic()
        var fields: [UInt8] = []
        for set in labels {
            Self.forEachPair(set.rendered) { name, value in Self.appendLabelPair(name, value, to: &fields) }
        }
        var histogram: [UInt8] = []
        let total = counts.reduce(zeroCount, &+)
        Self.appendVarintField(1, total, to: &histogram)
        Self.appendDoubleField(2, sum, to: &histogram)
        // schema 0 is proto3's default, left out; zero_threshold 1: the zero bucket is
        // [-1, 1], the kernel's slot 0 (0 and 1). A zero threshold also marks the
        // histogram as native for a parser, even when it is empty.
        Self.appendDoubleField(6, 1, to: &histogram)
        if zeroCount > 0 { Self.appendVarintField(7, zeroCount, to: &histogram) }
        // Spans over the non-empty buckets; a gap of up to two empty buckets stays in the
        // span (as zero deltas cost less than a new span), a longer one starts another.
        var spans: [(offset: Int, length: Int)] = []
        var deltas: [Int64] = []
        var previousCount: Int64 = 0
        var lastIndex: Int?
        for (i, count) in counts.enumerated() where count > 0 {
            let index = firstIndex + i
            if let last = lastIndex, index - last - 1 <= 2 {
                for _ in 0..<(index - last - 1) {
                    deltas.append(-previousCount)
                    previousCount = 0
                }
                spans[spans.count - 1].length += index - last
            } else {
                spans.append((offset: lastIndex.map { index - $0 - 1 } ?? index, length: 1))
            }
            deltas.append(Int64(count) - previousCount)
            previousCount = Int64(count)
            lastIndex = index
        }
        for span in spans {
            var message: [UInt8] = []
            if span.offset != 0 { Self.appendVarintField(1, Self.zigzag(Int64(span.offset)), to: &message) }
            Self.appendVarintField(2, UInt64(span.length), to: &message)
            Self.appendMessageField(12, message, to: &histogram)
        }
        if !deltas.isEmpty {
            var packed: [UInt8] = []
            for delta in deltas { Self.appendVarint(Self.zigzag(delta), to: &packed) }
            Self.appendMessageField(13, packed, to: &histogram)
        }
        Self.appendMessageField(7, histogram, to: &fields)
        Self.appendMessageField(4, fields, to: &metrics)
    }

    // MARK: - Samples

    private mutating func addLabel(_ name: [UInt8], _ value: [UInt8]) {
        if suffix == .bucket, name == Self.leName {
            le = Self.parseBound(value)
            return
        }
        Self.appendLabelPair(name, value, to: &labelFields)
    }

    private mutating func end(_ value: Double, count: UInt64?) {
        guard let suffix else { preconditionFailure("A value with no sample.") }
        self.suffix = nil
        switch suffix {
        case .none:
            flushClassic()
            var fields = labelFields
            var message: [UInt8] = []
            Self.appendDoubleField(1, value, to: &message)
            let field: Int = switch familyType {
            case .counter: 3
            case .gauge: 2
            case .untyped: 5
            case .histogram: preconditionFailure("A histogram's samples are _bucket, _sum or _count.")
            }
            Self.appendMessageField(field, message, to: &fields)
            Self.appendMessageField(4, fields, to: &metrics)
        case .bucket, .sum, .count:
            if classic?.labels != labelFields {
                flushClassic()
                classic = Classic(labels: labelFields)
            }
            switch suffix {
            case .bucket:
                guard let le else { preconditionFailure("A _bucket sample without le.") }
                // +Inf is the format's own bucket: sample_count.
                guard le.isFinite else { return }
                var bucket: [UInt8] = []
                Self.appendVarintField(1, count ?? UInt64(max(0, value)), to: &bucket)
                Self.appendDoubleField(2, le, to: &bucket)
                Self.appendMessageField(3, bucket, to: &classic!.buckets)
            case .sum: classic!.sum = value
            case .count: classic!.count = count ?? UInt64(max(0, value))
            case .none: break
            }
        }
    }

    private mutating func flushClassic() {
        guard let histogram = classic else { return }
        classic = nil
        var message: [UInt8] = []
        Self.appendVarintField(1, histogram.count, to: &message)
        Self.appendDoubleField(2, histogram.sum, to: &message)
        message += histogram.buckets
        var fields = histogram.labels
        Self.appendMessageField(7, message, to: &fields)
        Self.appendMessageField(4, fields, to: &metrics)
    }

    private mutating func closeFamily() {
        guard open else { return }
        precondition(suffix == nil, "The exposition ended inside a sample.")
        flushClassic()
        open = false
        guard !metrics.isEmpty else { return }
        var family: [UInt8] = []
        Self.appendBytesField(1, Array(familyName.utf8), to: &family)
        Self.appendBytesField(2, Array(familyHelp.utf8), to: &family)
        let type: UInt64 = switch familyType {
        case .counter: 0
        case .gauge: 1
        case .untyped: 3
        case .histogram: 4
        }
        // Written even when 0 (COUNTER), so that every family states its type.
        Self.appendVarint(UInt64(3 << 3), to: &family)
        Self.appendVarint(type, to: &family)
        family += metrics
        metrics.removeAll(keepingCapacity: true)
        Self.appendVarint(UInt64(family.count), to: &output)
        output += family
    }

    // MARK: - Labels rendered for the text format, read back

    static let leName = Array("le".utf8)

    /// Calls `body` with each name and unescaped value of a rendered label set
    /// (`a="x",b="y\"z"`: ``LabelSet/rendered``).
    static func forEachPair(_ rendered: [UInt8], _ body: (_ name: [UInt8], _ value: [UInt8]) -> Void) {
        var i = 0
        let n = rendered.count
        var name: [UInt8] = []
        var value: [UInt8] = []
        while i < n {
            name.removeAll(keepingCapacity: true)
            value.removeAll(keepingCapacity: true)
            while i < n, rendered[i] != UInt8(ascii: "=") {
                name.append(rendered[i])
                i += 1
            }
            i += 2 // ="
            while i < n, rendered[i] != UInt8(ascii: "\"") {
                if rendered[i] == UInt8(ascii: "\\"), i + 1 < n {
                    i += 1
                    value.append(rendered[i] == UInt8(ascii: "n") ? UInt8(ascii: "\n") : rendered[i])
                } else {
                    value.append(rendered[i])
                }
                i += 1
            }
            i += 2 // ",
            body(name, value)
        }
    }

    /// An `le` value as the text format writes it (a decimal or `+Inf`).
    static func parseBound(_ text: [UInt8]) -> Double? {
        let string = String(decoding: text, as: UTF8.self)
        if string == "+Inf" { return .infinity }
        return Double(string)
    }

    // MARK: - Wire format

    static func appendVarint(_ value: UInt64, to bytes: inout [UInt8]) {
        var v = value
        while v >= 0x80 {
            bytes.append(UInt8(truncatingIfNeeded: v) | 0x80)
            v >>= 7
        }
        bytes.append(UInt8(v))
    }

    static func zigzag(_ value: Int64) -> UInt64 {
        UInt64(bitPattern: (value << 1) ^ (value >> 63))
    }

    static func appendVarintField(_ field: Int, _ value: UInt64, to bytes: inout [UInt8]) {
        appendVarint(UInt64(field << 3), to: &bytes)
        appendVarint(value, to: &bytes)
    }

    static func appendDoubleField(_ field: Int, _ value: Double, to bytes: inout [UInt8]) {
        appendVarint(UInt64(field << 3 | 1), to: &bytes)
        withUnsafeBytes(of: value.bitPattern.littleEndian) { bytes.append(contentsOf: $0) }
    }

    static func appendBytesField(_ field: Int, _ value: [UInt8], to bytes: inout [UInt8]) {
        appendVarint(UInt64(field << 3 | 2), to: &bytes)
        appendVarint(UInt64(value.count), to: &bytes)
        bytes += value
    }

    static func appendMessageField(_ field: Int, _ message: [UInt8], to bytes: inout [UInt8]) {
        appendBytesField(field, message, to: &bytes)
    }

    static func appendLabelPair(_ name: [UInt8], _ value: [UInt8], to bytes: inout [UInt8]) {
        var pair: [UInt8] = []
        appendBytesField(1, name, to: &pair)
        appendBytesField(2, value, to: &pair)
        appendMessageField(1, pair, to: &bytes)
    }
}
