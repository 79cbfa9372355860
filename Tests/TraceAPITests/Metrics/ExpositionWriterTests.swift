import Testing

@testable import TraceAPI

@Suite("Exposition writer (text format 0.0.4)")
struct ExpositionWriterTests {
    private func text(_ writer: ExpositionWriter) -> String { String(decoding: writer.bytes, as: UTF8.self) }

    @Test("A family is HELP, TYPE, then its samples; labels are braced and comma-separated")
    func golden() {
        var w = ExpositionWriter()
        w.family("demo_requests_total", type: .counter, help: "Requests.")
        w.sample()
        w.value(0)
        w.sample()
        w.label("method", "GET")
        w.label("code", "200")
        w.value(UInt64(42))
        w.family("demo_latency_seconds", type: .histogram, help: "Latency.")
        w.sample(.bucket)
        w.labels(LabelSet(["probe": "p", "le": "+Inf"]))
        w.value(3)
        w.sample(.sum)
        w.labels(LabelSet(["probe": "p"]))
        w.value(secondsFromNanoseconds: 1_500_000_000)
        w.sample(.count)
        w.labels(LabelSet(["probe": "p"]))
        w.value(3)
        #expect(text(w) == """
            # HELP demo_requests_total Requests.
            # TYPE demo_requests_total counter
            demo_requests_total 0
            demo_requests_total{method="GET",code="200"} 42
            # HELP demo_latency_seconds Latency.
            # TYPE demo_latency_seconds histogram
            demo_latency_seconds_bucket{probe="p",le="+Inf"} 3
            demo_latency_seconds_sum{probe="p"} 1.5
            demo_latency_seconds_count{probe="p"} 3

            """)
    }

    @Test("Label values escape backslash, double quote and newline, and pass everything else through")
    func labelEscaping() {
        var w = ExpositionWriter()
        w.family("demo", type: .gauge, help: "h")
        w.sample()
        w.label("v", "a\\b\"c\nd\te\rf ü 🐝")
        w.value(1)
        #expect(text(w).hasSuffix(#"demo{v="a\\b\"c\nd"# + "\te\rf ü 🐝" + "\"} 1\n"))
    }

    static let hostile: [String] = [
        #"\"#, #"\\"#, #"\n"#, "\"", "\"\"", "\n", "\n\n", "a\\", "\\n",
        #"x"} 1"# + "\nevil_metric 1", "} 1\n# TYPE evil counter", #"le="+Inf""#, "",
        "\u{0}", "tab\there", "crlf\r\n", "{", ",", "=", "ünïcødé ✓ 🐝", String(repeating: "\\\"\n", count: 80),
    ]

    @Test("Hostile label values survive a strict parser unchanged, on one line each", arguments: hostile)
    func hostileValuesRoundTrip(value: String) throws {
        var w = ExpositionWriter()
        w.family("demo_info", type: .gauge, help: "h")
        w.sample()
        w.labels(LabelSet(["probe": value, "target": "syscall:read"]))
        w.label("label_owner", value)
        w.value(1)
        let body = text(w)
        #expect(body.unicodeScalars.filter { $0 == "\n" }.count == 3, "a raw newline leaked into a sample line")
        let parsed = try ParsedExposition(body)
        #expect(parsed.samples == [.init(name: "demo_info", labels: ["probe": value, "target": "syscall:read", "label_owner": value], value: "1")])
    }

    @Test("HELP text escapes backslash and newline")
    func helpEscaping() throws {
        var w = ExpositionWriter()
        w.family("demo", type: .gauge, help: "a\\b\nc \"quoted\"")
        #expect(text(w).hasPrefix(#"# HELP demo a\\b\nc "quoted""# + "\n"))
        #expect(try ParsedExposition(text(w)).family("demo")?.help == "a\\b\nc \"quoted\"")
    }

    @Test("Nanoseconds become exact decimal seconds, with no trailing zeros",
          arguments: [
            (0, "0"), (1, "0.000000001"), (3, "0.000000003"), (1_023, "0.000001023"), (1_000, "0.000001"),
            (1_500_000_000, "1.5"), (2_000_000_000, "2"), (68_719_476_735, "68.719476735"),
            (UInt64.max, "18446744073.709551615"),
          ] as [(UInt64, String)])
    func seconds(nanoseconds: UInt64, expected: String) {
        var bytes: [UInt8] = []
        ExpositionWriter.appendSeconds(nanoseconds: nanoseconds, to: &bytes)
        #expect(String(decoding: bytes, as: UTF8.self) == expected)
    }

    @Test("Signed nanoseconds become exact seconds with a minus sign when negative",
          arguments: [(0, "0"), (1_023, "0.000001023"), (-1, "-0.000000001"), (-1_500_000_000, "-1.5"),
                      (.min, "-9223372036.854775808"), (.max, "9223372036.854775807")] as [(Int64, String)])
    func signedSeconds(nanoseconds: Int64, expected: String) {
        var w = ExpositionWriter()
        w.family("demo", type: .gauge, help: "h")
        w.sample()
        w.value(signedSecondsFromNanoseconds: nanoseconds)
        #expect(text(w).hasSuffix("\ndemo \(expected)\n"))
    }

    @Test("Integers are written in decimal, from 0 to UInt64.max and negative Ints")
    func integers() {
        var w = ExpositionWriter()
        w.family("demo", type: .gauge, help: "h")
        for v: UInt64 in [0, 7, 10, 42, 1_000_000, .max] {
            w.sample()
            w.value(v)
        }
        w.sample()
        w.value(-7)
        w.sample()
        w.value(seconds: .milliseconds(1_250))
        #expect(text(w).split(separator: "\n").dropFirst(2).map { $0.split(separator: " ").last.map(String.init) } ==
                ["0", "7", "10", "42", "1000000", "18446744073709551615", "-7", "1.25"])
    }

    @Test("Writing a sample before any family is a programming error")
    func sampleWithoutFamilyTraps() async {
        await #expect(processExitsWith: .failure) {
            var w = ExpositionWriter()
            w.sample()
        }
    }

    @Test("Writing a family twice is a programming error")
    func duplicateFamilyTraps() async {
        await #expect(processExitsWith: .failure) {
            var w = ExpositionWriter()
            w.family("demo", type: .gauge, help: "h")
            w.family("demo", type: .gauge, help: "h")
        }
    }

    @Test("A counter not ending in _total, or a _bucket sample on a gauge, is a programming error")
    func typeMisuseTraps() async {
        await #expect(processExitsWith: .failure) {
            var w = ExpositionWriter()
            w.family("demo_requests", type: .counter, help: "h")
        }
        await #expect(processExitsWith: .failure) {
            var w = ExpositionWriter()
            w.family("demo", type: .gauge, help: "h")
            w.sample(.bucket)
        }
    }

    @Test("Invalid metric and label names are rejected", arguments: ["", "1abc", "a-b", "a b", "é"])
    func names(name: String) {
        #expect(!ExpositionWriter.isMetricName(name))
        #expect(!ExpositionWriter.isLabelName(name))
        #expect(ExpositionWriter.isMetricName("traceplane:probe_calls_total"))
        #expect(!ExpositionWriter.isLabelName("__name__"))
        #expect(ExpositionWriter.isLabelName("label_owner"))
    }
}
