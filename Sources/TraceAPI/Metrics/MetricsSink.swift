/// What ``MetricsSnapshot`` writes an exposition into: the text format
/// (``ExpositionWriter``) or the protobuf format (``ProtobufExpositionWriter``), through
/// one sequence of calls.
///
/// A family is opened with ``family(_:type:help:)``; each sample of it is ``sample(_:)``,
/// any labels, and one `value` call that ends it. A classic histogram is its `_bucket`
/// samples (with `le`), then `_sum` and `_count`, one label set after another.
/// ``nativeHistogram(_:zeroCount:firstIndex:counts:sum:)`` writes one native histogram
/// (protobuf only: see ``servesNativeHistograms``).
public protocol MetricsSink {
    /// Whether the format carries native histograms (then the snapshot writes its log2
    /// histograms as native ones, in families of their own).
    var servesNativeHistograms: Bool { get }
    mutating func family(_ name: String, type: MetricType, help: String)
    mutating func sample(_ suffix: ExpositionWriter.Suffix)
    mutating func label(_ name: String, _ value: String)
    mutating func labels(_ set: LabelSet)
    mutating func value(_ value: UInt64)
    mutating func value(double value: Double)
    mutating func value(_ value: Int)
    mutating func value(secondsFromNanoseconds nanoseconds: UInt64)
    mutating func value(signedSecondsFromNanoseconds nanoseconds: Int64)
    mutating func value(seconds duration: Duration)
    /// One native histogram of schema 0 in the open histogram family, labelled with `labels`
    /// one set after another: `zeroCount` observations in the zero bucket ([-1, 1]), and
    /// `counts[i]` in bucket `firstIndex + i`, i.e. (2^(firstIndex+i-1), 2^(firstIndex+i)].
    mutating func nativeHistogram(_ labels: [LabelSet], zeroCount: UInt64, firstIndex: Int, counts: [UInt64], sum: Double)
}

extension MetricsSink {
    /// A sample of the family itself (not a histogram's part).
    public mutating func sample() { sample(.none) }
}

extension ExpositionWriter: MetricsSink {
    public var servesNativeHistograms: Bool { false }

    public mutating func nativeHistogram(_ labels: [LabelSet], zeroCount: UInt64, firstIndex: Int, counts: [UInt64], sum: Double) {
        preconditionFailure("The text format has no native histograms; check servesNativeHistograms first.")
    }
}
