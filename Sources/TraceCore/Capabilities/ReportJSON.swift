import Foundation
import Glibc

/// The JSON encoding every TracePlane surface uses: sorted keys, RFC 3339 dates.
public enum ReportJSON {
    public static func encoder(pretty: Bool = true) -> JSONEncoder {
        let encoder = JSONEncoder()
        encoder.outputFormatting = pretty ? [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes] : [.sortedKeys, .withoutEscapingSlashes]
        encoder.dateEncodingStrategy = .custom { date, encoder in
            var c = encoder.singleValueContainer()
            try c.encode(rfc3339(date))
        }
        return encoder
    }

    /// A decoder for what TracePlane writes: RFC 3339 dates with or without fractional seconds.
    public static func decoder() -> JSONDecoder {
        let decoder = JSONDecoder()
        decoder.dateDecodingStrategy = .custom { d in
            let text = try d.singleValueContainer().decode(String.self)
            let formatter = ISO8601DateFormatter()
            formatter.formatOptions = [.withInternetDateTime, .withFractionalSeconds]
            if let date = formatter.date(from: text) { return date }
            formatter.formatOptions = [.withInternetDateTime]
            guard let date = formatter.date(from: text) else {
                throw DecodingError.dataCorrupted(.init(codingPath: d.codingPath, debugDescription: "not an RFC 3339 date: \(text)"))
            }
            return date
        }
        return decoder
    }

    public static func encode<T: Encodable>(_ value: T, pretty: Bool = true) throws -> Data {
        try encoder(pretty: pretty).encode(value)
    }

    /// RFC 3339 with milliseconds (rounded, as ICU does), UTC: `2024-01-02T03:04:05.678Z`.
    ///
    /// Formatted by hand from `gmtime_r`, as is ``rfc3339Seconds(_:)``: Foundation's
    /// date formatting goes through ICU, which builds a formatter or time-zone data per
    /// process and maps megabytes of ICU data into the agent, for a fixed UTC format.
    public static func rfc3339(_ date: Date) -> String {
        let milliseconds = Int64((date.timeIntervalSince1970 * 1000).rounded())
        let seconds = milliseconds.floorDivided(by: 1000)
        return internetDateTime(seconds: seconds, milliseconds: Int32(milliseconds - seconds * 1000))
    }

    /// RFC 3339 in whole seconds (truncated), UTC: `2024-01-02T03:04:05Z`, the same text
    /// as `JSONEncoder.DateEncodingStrategy.iso8601`.
    public static func rfc3339Seconds(_ date: Date) -> String {
        internetDateTime(seconds: Int64(date.timeIntervalSince1970.rounded(.down)), milliseconds: nil)
    }

    /// `2026-12-02T13:20:01Z`, or with `.mmm` before the `Z` (UTC, without ICU).
    static func internetDateTime(seconds: Int64, milliseconds: Int32?) -> String {
        var time = time_t(seconds)
        var parts = tm()
        gmtime_r(&time, &parts)
        func pad(_ value: Int32, _ width: Int) -> String {
            let digits = String(value)
            return String(repeating: "0", count: max(0, width - digits.count)) + digits
        }
        return "\(pad(parts.tm_year + 1900, 4))-\(pad(parts.tm_mon + 1, 2))-\(pad(parts.tm_mday, 2))T"
            + "\(pad(parts.tm_hour, 2)):\(pad(parts.tm_min, 2)):\(pad(parts.tm_sec, 2))"
            + (milliseconds.map { ".\(pad($0, 3))" } ?? "") + "Z"
    }
}

extension Int64 {
    /// Division rounding toward negative infinity.
    fileprivate func floorDivided(by divisor: Int64) -> Int64 {
        let q = self / divisor
        return (self % divisor != 0 && (self < 0) != (divisor < 0)) ? q - 1 : q
    }
}
