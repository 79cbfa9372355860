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
    /// The last label sets encoded, by their place in a sample (see ``labels(_:)``).
    private var cache: [(rendered: [UInt8], encoded: [UInt8])] = [([], []), ([], [])]
    /// Reused for histogram messages.
    private var scratch: [UInt8] = []

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
        // A probe's identity starts every one of its samples: its encoding is kept (slot
        // 0); the set after it (a key's labels) gets slot 1, and `le` is never kept.
        let slot = labelFields.isEmpty ? 0 : 1
        if cache[slot].rendered == set.rendered {
            labelFields += cache[slot].encoded
            return
        }
        let start = labelFields.count
        var le: Double?
        Self.appendLabelPairs(rendered: set.rendered, takingLE: suffix == .bucket, le: &le, to: &labelFields)
        if let le {
            self.le = le
        } else {
            cache[slot] = (set.rendered, Array(labelFields[start...]))
        }
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
        labelFields.removeAll(keepingCapacity: true)
        for (i, set) in labels.enumerated() {
            let slot = min(i, 1)
            if cache[slot].rendered == set.rendered {
                labelFields += cache[slot].encoded
            } else {
                let start = labelFields.count
                var le: Double?
                Self.appendLabelPairs(rendered: set.rendered, takingLE: false, le: &le, to: &labelFields)
                cache[slot] = (set.rendered, Array(labelFields[start...]))
            }
        }
        var histogram = scratch
        histogram.removeAll(keepingCapacity: true)
        defer { scratch = histogram }
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
            var size = 0
            for delta in deltas { size += Self.varintSize(Self.zigzag(delta)) }
            histogram.append(13 << 3 | 2)
            Self.appendVarint(UInt64(size), to: &histogram)
            for delta in deltas { Self.appendVarint(Self.zigzag(delta), to: &histogram) }
        }
        // Metric { labels, histogram (7) }.
        metrics.append(4 << 3 | 2)
        Self.appendVarint(UInt64(labelFields.count + 1 + Self.varintSize(UInt64(histogram.count)) + histogram.count), to: &metrics)
        metrics += labelFields
        metrics.append(7 << 3 | 2)
        Self.appendVarint(UInt64(histogram.count), to: &metrics)
        metrics += histogram
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
            let field: UInt8 = switch familyType {
            case .counter: 3
            case .gauge: 2
            case .untyped: 5
            case .histogram: preconditionFailure("A histogram's samples are _bucket, _sum or _count.")
            }
            // Metric { labels, <field> { value: double } }: the value message is 9 bytes.
            metrics.append(4 << 3 | 2)
            Self.appendVarint(UInt64(labelFields.count + 11), to: &metrics)
            metrics += labelFields
            metrics.append(field << 3 | 2)
            metrics.append(9)
            Self.appendDoubleField(1, value, to: &metrics)
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
        var header: [UInt8] = []
        Self.appendBytesField(1, Array(familyName.utf8), to: &header)
        Self.appendBytesField(2, Array(familyHelp.utf8), to: &header)
        let type: UInt64 = switch familyType {
        case .counter: 0
        case .gauge: 1
        case .untyped: 3
        case .histogram: 4
        }
        // Written even when 0 (COUNTER), so that every family states its type.
        Self.appendVarint(UInt64(3 << 3), to: &header)
        Self.appendVarint(type, to: &header)
        Self.appendVarint(UInt64(header.count + metrics.count), to: &output)
        output += header
        output += metrics
        metrics.removeAll(keepingCapacity: true)
    }

    // MARK: - Labels rendered for the text format, read back

    static let leName = Array("le".utf8)

    /// Appends the LabelPair fields (Metric field 1) of a rendered label set
    /// (`a="x",b="y\"z"`: ``LabelSet/rendered``), unescaping values on the way; with
    /// `takingLE`, an `le` pair is not written but parsed into `le`.
    static func appendLabelPairs(rendered: [UInt8], takingLE: Bool, le: inout Double?, to out: inout [UInt8]) {
        rendered.withUnsafeBufferPointer { p in
            let n = p.count
            var i = 0
            while i < n {
                let nameStart = i
                while i < n, p[i] != UInt8(ascii: "=") { i += 1 }
                let nameEnd = i
                i += 2 // ="
                let valueStart = i
                var escapes = 0
                while i < n, p[i] != UInt8(ascii: "\"") {
                    if p[i] == UInt8(ascii: "\\") {
                        escapes += 1
                        i += 2
                    } else {
                        i += 1
                    }
                }
                let valueEnd = min(i, n)
                i += 2 // ",
                let nameLength = nameEnd - nameStart
                if takingLE, nameLength == 2, p[nameStart] == UInt8(ascii: "l"), p[nameStart + 1] == UInt8(ascii: "e") {
                    le = parseBound(Array(p[valueStart..<valueEnd]))
                    continue
                }
                let valueLength = valueEnd - valueStart - escapes
                let pairLength = 2 + varintSize(UInt64(nameLength)) + nameLength + varintSize(UInt64(valueLength)) + valueLength
                out.append(1 << 3 | 2)
                appendVarint(UInt64(pairLength), to: &out)
                out.append(1 << 3 | 2)
                appendVarint(UInt64(nameLength), to: &out)
                out.append(contentsOf: UnsafeBufferPointer(rebasing: p[nameStart..<nameEnd]))
                out.append(2 << 3 | 2)
                appendVarint(UInt64(valueLength), to: &out)
                if escapes == 0 {
                    out.append(contentsOf: UnsafeBufferPointer(rebasing: p[valueStart..<valueEnd]))
                } else {
                    var j = valueStart
                    while j < valueEnd {
                        if p[j] == UInt8(ascii: "\\"), j + 1 < valueEnd {
                            out.append(p[j + 1] == UInt8(ascii: "n") ? UInt8(ascii: "\n") : p[j + 1])
                            j += 2
                        } else {
                            out.append(p[j])
                            j += 1
                        }
                    }
                }
            }
        }
    }

    static func varintSize(_ value: UInt64) -> Int {
        value < 0x80 ? 1 : (64 - value.leadingZeroBitCount + 6) / 7
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
