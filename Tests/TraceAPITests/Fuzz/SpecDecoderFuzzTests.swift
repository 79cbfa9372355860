import Foundation
import Testing
import TraceCoreTestSupport
@testable import TraceAPI
@testable import TraceCore

/// Property-based fuzzing of request decoding and validation (`SpecDecoder.decode`, then
/// `ProbeSpec.validate`): thousands of generated and mutated bodies from a seeded RNG,
/// bounded in time. Whatever the bytes, decoding never traps and ends in either a spec or
/// a 400 problem that lists `errors`; a spec that validates obeys the documented rules
/// (checked here independently), and survives an encode/decode round trip.
///
/// A failure prints the seed and the body; `TRACEPLANE_FUZZ_SEED` replays a run.
@Suite struct SpecDecoderFuzzTests {
    static let budget = Duration.seconds(12)
    static let maxCases = 30_000
    /// Run whatever the time: a loaded machine (another build, tests alongside) must not
    /// make the fuzz explore less than this.
    static let minCases = 2_000

    @Test("Generated and mutated bodies: never a trap, always a spec or a 400 problem with errors")
    func decodeAndValidateNeverMisbehave() async throws {
        let seed = ProcessInfo.processInfo.environment["TRACEPLANE_FUZZ_SEED"].flatMap(UInt64.init) ?? 0x7472_6163_6570_6c61
        var rng = SplitMix64(seed: seed)
        var outcomes = [String: Int]()
        let started = ContinuousClock.now
        var cases = 0
        while cases < Self.minCases || (cases < Self.maxCases && ContinuousClock.now - started < Self.budget) {
            let body: [UInt8] = switch rng.next() % 3 {
            case 0: Array(Generator.spec(&rng).utf8)
            case 1: Generator.mutate(Array(Generator.spec(&rng).utf8), &rng)
            default: Generator.mutate(Array(Generator.seeds.randomElement(using: &rng)!.utf8), &rng)
            }
            let outcome = try Self.check(body, context: "seed \(seed), case \(cases)")
            outcomes[outcome, default: 0] += 1
            cases += 1
            // Share the cooperative pool (2 threads on 2 cores) with tests running alongside.
            if cases % 64 == 0 { await Task.yield() }
        }
        print("SpecDecoder fuzz: \(cases) cases in \(ContinuousClock.now - started), seed \(seed): \(outcomes.sorted { $0.key < $1.key })")
        // The generator must reach every outcome, or it explores too little.
        for outcome in ["valid", "invalid", "rejected: bad-request", "rejected: invalid-spec"] {
            #expect(outcomes[outcome, default: 0] >= cases / 100, "\(outcome) reached \(outcomes[outcome, default: 0]) times of \(cases)")
        }
    }

    @Test("The corpus of known-tricky bodies decodes to what the contract says",
          arguments: [
              (#"{"target":{"type":"syscall","name":"read"}}"#, "valid"),
              (#"{"target":{"type":"syscall","name":"read"},"ttl_seconds":1.0}"#, "valid"),
              (#"{"target":{"type":"syscall","name":"read"},"ttl_seconds":1e2}"#, "valid"),
              (#"{"target":{"type":"syscall","name":"read"},"name":null,"labels":null,"filter":null,"mechanisms":null}"#, "valid"),
              (#"{"target":{"type":"syscall","name":"read"},"ttl_seconds":1e400}"#, "rejected: invalid-spec"),
              (#"{"target":{"type":"syscall","name":"read"},"ttl_seconds":-1e400}"#, "rejected: invalid-spec"),
              (#"{"target":{"type":"syscall","name":"read"},"ttl_seconds":1.5}"#, "rejected: invalid-spec"),
              (#"{"target":{"type":"syscall","name":"read"},"filter":{"pid":18446744073709551616}}"#, "rejected: invalid-spec"),
              (#"{"target":{"type":"syscall","name":"read"},"labels":{"a":null}}"#, "rejected: invalid-spec"),
              (#"{"target":{"type":"syscall","name":"read"},"mechanisms":[null]}"#, "rejected: invalid-spec"),
              (#"{"target":{"type":null}}"#, "rejected: invalid-spec"),
              (#"{"target":{"type":"syscall","name":"read"},"ttl_seconds":-1}"#, "invalid"),
              (#"{"target":{"type":"syscall","name":"nope"}}"#, "invalid"),
              (#"{"target":{"type":"tracepoint","name":"a:b:c"}}"#, "invalid"),
              (#"{"target":{"type":"uprobe","path":"/a/../b","symbol":"s"}}"#, "invalid"),
              ("{\"target\":{\"type\":\"syscall\",\"name\":\"read\"}}\u{0}", "rejected: bad-request"),
              (#"{"target":{"type":"syscall","name":"read"}} {}"#, "rejected: bad-request"),
              (#"{"target":{"type":"syscall","name":"read"},}"#, "rejected: bad-request"),
              (#"{"target":{"type":"syscall","name":"read"},"mechanisms":["tp_btf" ,]}"#, "rejected: bad-request"),
              (#"{"target":{"type":"syscall","name":"read"},"labels":{"a":",]"}}"#, "valid"),
              (#"{"target":{"type":"syscall","name":"\ud800"}}"#, "rejected: invalid-spec"),
              ("[" + String(repeating: "[", count: 17) + String(repeating: "]", count: 18), "rejected: bad-request"),
              ("\"\u{FFFF}\"", "rejected: bad-request"),
              ("", "rejected: bad-request"),
          ])
    func corpus(body: String, expected: String) throws {
        #expect(try Self.check(Array(body.utf8), context: body) == expected)
    }

    /// Decodes and validates `body`, checks the properties, and names the outcome.
    static func check(_ body: [UInt8], context: String) throws -> String {
        func shown() -> String { "\(context): \(String(decoding: body.prefix(300), as: UTF8.self).debugDescription)" }
        let spec: ProbeSpec
        do {
            spec = try SpecDecoder.decode(body)
        } catch {
            #expect(error.status == .badRequest, "\(shown())")
            let errors = error.extensions["errors"]
            guard case .array(let items)? = errors, !items.isEmpty else {
                Issue.record("a 400 without errors: \(error) for \(shown())")
                return "rejected without errors"
            }
            for item in items {
                guard case .string? = item["field"], case .string? = item["message"] else {
                    Issue.record("malformed error \(item) for \(shown())")
                    break
                }
            }
            let response = HTTPResponse.problem(error)
            #expect(response.headers["Content-Type"] == "application/problem+json")
            #expect((try? JSONDecoder().decode(Problem.self, from: Data(response.body))) == error, "\(shown())")
            return "rejected: " + error.type.replacingOccurrences(of: Problem.typeBase, with: "")
        }
        #expect(SpecDecoder.scan(body, depthLimit: SpecDecoder.maxDepth) == nil, "\(shown())")

        let errors = spec.validate()
        if !errors.isEmpty {
            // As the probe manager refuses it, and the API answers.
            do {
                _ = try ProbeManager.normalize(spec, host: FakeHost())
                Issue.record("the manager accepted an invalid spec: \(shown())")
            } catch {
                let problem = AgentAPI.problem(error)
                #expect(problem.status == .badRequest)
                guard case .array(let items)? = problem.extensions["errors"] else {
                    Issue.record("invalid spec without errors for \(shown())")
                    return "invalid"
                }
                #expect(items.count == errors.count)
            }
            return "invalid"
        }
        Oracle.expectValid(spec, shown())

        // What the agent stores and shows decodes back to the same spec.
        let encoded = try JSONEncoder().encode(spec)
        var again = try SpecDecoder.decode(Array(encoded))
        var original = spec
        if original.labels?.isEmpty == true { original.labels = nil }
        if again.labels?.isEmpty == true { again.labels = nil }
        #expect(again == original, "round trip changed \(shown())")
        return "valid"
    }
}

/// The documented rules, written independently of `ProbeSpec.validate`.
enum Oracle {
    static func matches(_ text: String, _ pattern: String) -> Bool {
        text.range(of: pattern, options: .regularExpression) != nil
    }

    static func expectValid(_ spec: ProbeSpec, _ shown: @autoclosure () -> String) {
        if let name = spec.name { #expect(matches(name, "^[a-z0-9][a-z0-9_.-]{0,62}$"), "\(shown())") }
        let target = spec.target
        if target.type != .profile { #expect(target.frequencyHz == nil, "\(shown())") }
        switch target.type {
        case .profile:
            #expect((1...1000).contains(target.frequencyHz ?? 99), "\(shown())")
            #expect(target.name == nil && target.path == nil && target.symbol == nil, "\(shown())")
        case .syscall:
            #expect(SyscallTable.number(of: target.name ?? "") != nil, "\(shown())")
            #expect(target.path == nil && target.symbol == nil)
        case .function:
            #expect(matches(target.name ?? "", "^[A-Za-z0-9_]{1,128}$"), "\(shown())")
            #expect(target.path == nil && target.symbol == nil)
        case .tracepoint:
            #expect(matches(target.name ?? "", "^[A-Za-z0-9_]{1,128}:[A-Za-z0-9_]{1,128}$"), "\(shown())")
            #expect(target.path == nil && target.symbol == nil)
        case .uprobe:
            let path = target.path ?? ""
            #expect(path.hasPrefix("/") && !path.utf8.contains(0) && path.utf8.count <= 4096, "\(shown())")
            #expect(!path.split(separator: "/").contains(".."), "\(shown())")
            #expect(matches(target.symbol ?? "", "^[A-Za-z0-9_.@$]{1,128}$"), "\(shown())")
            #expect(target.name == nil)
        }
        if let mechanisms = spec.mechanisms {
            #expect((1...16).contains(mechanisms.count), "\(shown())")
            #expect(!spec.flavours.isEmpty && spec.flavours.allSatisfy { FlavourCatalog.descriptor($0, for: target.type) != nil }, "\(shown())")
        }
        if let pid = spec.filter?.pid { #expect((1...4_194_304).contains(pid), "\(shown())") }
        if let comm = spec.filter?.comm { #expect((1...15).contains(comm.utf8.count) && !comm.utf8.contains(0), "\(shown())") }
        if let ttl = spec.ttlSeconds { #expect((1...31_536_000).contains(ttl), "\(shown())") }
        if let labels = spec.labels {
            #expect(labels.count <= 32, "\(shown())")
            for (key, value) in labels {
                #expect(matches(key, "^[A-Za-z_][A-Za-z0-9_]{0,63}$") && !key.hasPrefix("__"), "\(shown())")
                #expect(value.utf8.count <= 256, "\(shown())")
            }
        }
    }
}

/// Deterministic, seedable (Steele et al., SplitMix64).
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// Bodies: probe specs that are mostly well-formed with random flaws, and byte mutations.
enum Generator {
    static let seeds = [
        #"{"name":"read-latency","target":{"type":"syscall","name":"read"},"mechanisms":["fentry","kprobe","tracepoint"],"filter":{"pid":1234,"comm":"nginx"},"ttl_seconds":600,"labels":{"owner":"ctrl_1"}}"#,
        #"{"target":{"type":"function","name":"vfs_read"},"mechanisms":["kfunc","kretprobe"]}"#,
        #"{"target":{"type":"tracepoint","name":"sched:sched_switch"},"mechanisms":["raw_tp","tp_btf"],"labels":{}}"#,
        #"{"target":{"type":"uprobe","path":"/usr/lib/x86_64-linux-gnu/libc.so.6","symbol":"malloc"},"filter":{"comm":"a"}}"#,
        #"{"name":null,"target":{"type":"syscall","name":"getpid","path":null},"filter":null,"ttl_seconds":null,"labels":null,"mechanisms":null}"#,
    ]

    static let strings = [
        "", "a", "read", "getpid", "openat", "no_such_call", "vfs_read", "sched:sched_switch", "a:b", "a:b:c", ":", "sched:",
        "../", "..", ".", "/", "/usr/lib/x86_64-linux-gnu/libc.so.6", "/a/../b", "/a/..", "relative/path", "malloc", "sym@@GLIBC_2.2.5",
        "\u{0}", "a\u{0}b", "é", "🐝", "\u{FFFD}", "\u{200B}", "\n", "\"", "\\", "kfunc", "kretfunc", "fexit", "raw_tp", "uretprobe",
        "perf_event", "KPROBE", "__reserved", "_", "_1", "1abc", "-", "a-b.c_d", "A", String(repeating: "a", count: 63),
        String(repeating: "a", count: 64), String(repeating: "x", count: 129), String(repeating: "é", count: 8), "syscall", "function",
        "tracepoint", "uprobe", "kernel", "123456789012345", "1234567890123456",
    ]

    static let numbers = [
        "0", "-0", "1", "-1", "2", "1.5", "1.0", "1e2", "1E+2", "1e-2", "1e400", "-1e400", "4194304", "4194305", "31536000", "31536001",
        "9223372036854775807", "9223372036854775808", "-9223372036854775809", "18446744073709551616", "0.0000001", "00", "01", "-", "1.",
        ".5", "NaN", "Infinity", "0x10", "1_000",
    ]

    static let keys = ["name", "target", "mechanisms", "filter", "ttl_seconds", "labels", "type", "path", "symbol", "pid", "comm",
                       "Name", "ttl", "extra", "", "__proto__", "target.name"]

    static func pick<T>(_ values: [T], _ rng: inout SplitMix64) -> T { values[Int(rng.next() % UInt64(values.count))] }
    static func chance(_ percent: UInt64, _ rng: inout SplitMix64) -> Bool { rng.next() % 100 < percent }

    static func quoted(_ s: String) -> String {
        var out = "\""
        for scalar in s.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case _ where scalar.value < 0x20: out += String(format: "\\u%04x", scalar.value)
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }

    /// Any JSON value (sometimes not valid JSON: numbers such as NaN), nested up to `depth`.
    static func value(_ rng: inout SplitMix64, depth: Int) -> String {
        switch rng.next() % (depth > 0 ? 8 : 5) {
        case 0: return "null"
        case 1: return chance(50, &rng) ? "true" : "false"
        case 2: return pick(numbers, &rng)
        case 3, 4: return quoted(pick(strings, &rng))
        case 5: return "[" + (0..<Int(rng.next() % 4)).map { _ in value(&rng, depth: depth - 1) }.joined(separator: ",") + "]"
        default:
            return "{" + (0..<Int(rng.next() % 4)).map { _ in quoted(pick(keys, &rng)) + ":" + value(&rng, depth: depth - 1) }
                .joined(separator: ",") + "}"
        }
    }

    /// A probe spec: each member usually well-formed, sometimes replaced by any value,
    /// sometimes missing; sometimes with unknown members.
    static func spec(_ rng: inout SplitMix64) -> String {
        func maybe(_ key: String, _ good: () -> String) -> String? {
            if chance(30, &rng) { return nil }
            let v = chance(85, &rng) ? good() : value(&rng, depth: Int(rng.next() % 20))
            return quoted(key) + ":" + v
        }
        let type = pick(["syscall", "function", "tracepoint", "uprobe"], &rng)
        var target: [String?] = [quoted("type") + ":" + (chance(95, &rng) ? quoted(type) : value(&rng, depth: 2))]
        switch type {
        case "uprobe":
            target.append(maybe("path") { quoted(chance(70, &rng) ? "/usr/lib/x86_64-linux-gnu/libc.so.6" : pick(strings, &rng)) })
            target.append(maybe("symbol") { quoted(chance(70, &rng) ? "malloc" : pick(strings, &rng)) })
        case "syscall":
            target.append(maybe("name") { quoted(chance(70, &rng) ? pick(["read", "getpid", "openat", "close"], &rng) : pick(strings, &rng)) })
        case "tracepoint":
            target.append(maybe("name") { quoted(chance(70, &rng) ? "sched:sched_switch" : pick(strings, &rng)) })
        default:
            target.append(maybe("name") { quoted(chance(70, &rng) ? "vfs_read" : pick(strings, &rng)) })
        }
        if chance(5, &rng) { target.append(quoted(pick(keys, &rng)) + ":" + value(&rng, depth: 2)) }
        let mechanisms = ["fentry", "kprobe", "tracepoint", "tp_btf", "raw_tracepoint", "uprobe", "kfunc", "raw_tp", "nope"]
        var members: [String?] = [
            maybe("name") { quoted(chance(70, &rng) ? "p\(rng.next() % 1000)" : pick(strings, &rng)) },
            chance(97, &rng) ? quoted("target") + ":{" + target.compactMap { $0 }.joined(separator: ",") + "}" : nil,
            maybe("mechanisms") { "[" + (0..<Int(rng.next() % 4)).map { _ in quoted(pick(mechanisms, &rng)) }.joined(separator: ",") + "]" },
            maybe("filter") {
                "{" + [chance(60, &rng) ? "\"pid\":" + (chance(70, &rng) ? "\(1 + rng.next() % 5000)" : pick(numbers, &rng)) : nil,
                       chance(60, &rng) ? "\"comm\":" + quoted(chance(70, &rng) ? "nginx" : pick(strings, &rng)) : nil]
                    .compactMap { $0 }.joined(separator: ",") + "}"
            },
            maybe("ttl_seconds") { chance(70, &rng) ? "\(1 + rng.next() % 3600)" : pick(numbers, &rng) },
            maybe("labels") {
                "{" + (0..<Int(rng.next() % 4)).map { i in
                    quoted(chance(70, &rng) ? "k\(i)" : pick(strings, &rng)) + ":" + quoted(chance(70, &rng) ? "v" : pick(strings, &rng))
                }.joined(separator: ",") + "}"
            },
        ]
        if chance(8, &rng) { members.append(quoted(pick(keys, &rng)) + ":" + value(&rng, depth: 3)) }
        let whitespace = chance(20, &rng) ? " \n\t" : ""
        return whitespace + "{" + members.compactMap { $0 }.shuffled(using: &rng).joined(separator: "," + whitespace) + "}" + whitespace
    }

    static let specialBytes: [UInt8] = Array("{}[]\":,\\0-+.eE ".utf8) + [0x00, 0x0A, 0x7F, 0x80, 0xC3, 0xE9, 0xFF, 0xEF, 0xBB, 0xBF]
    static let tokens = ["1e400", "null", "\"\\ud800\"", "\"\\u0000\"", "[[[[[[[[[[[[[[[[[[[[", "{\"a\":", "}", "]", ",", "\"..\"",
                         "-9223372036854775809", "\"labels\":{\"x\":1}", "true"]

    /// 1 to 4 byte-level mutations of `bytes`.
    static func mutate(_ input: [UInt8], _ rng: inout SplitMix64) -> [UInt8] {
        var bytes = input
        for _ in 0..<(1 + rng.next() % 4) {
            let at = bytes.isEmpty ? 0 : Int(rng.next() % UInt64(bytes.count))
            switch rng.next() % 7 {
            case 0 where !bytes.isEmpty: bytes[at] = UInt8(truncatingIfNeeded: rng.next())
            case 1: bytes.insert(pick(specialBytes, &rng), at: at)
            case 2 where !bytes.isEmpty: bytes.removeSubrange(at..<min(bytes.count, at + 1 + Int(rng.next() % 8)))
            case 3 where !bytes.isEmpty:
                let piece = Array(bytes[at..<min(bytes.count, at + 1 + Int(rng.next() % 16))])
                bytes.insert(contentsOf: piece, at: at)
            case 4: bytes.insert(contentsOf: Array(pick(tokens, &rng).utf8), at: at)
            case 5: bytes = Array(bytes.prefix(at))
            default:
                // Replace one digit run or string with a tricky one.
                if let quote = bytes[at...].firstIndex(of: UInt8(ascii: "\"")),
                   let end = bytes[(quote + 1)...].firstIndex(of: UInt8(ascii: "\"")) {
                    bytes.replaceSubrange(quote...end, with: Array(quoted(pick(strings, &rng)).utf8))
                }
            }
        }
        return bytes
    }
}
