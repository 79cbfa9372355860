import Foundation
import Testing
import TraceCore
import TraceCoreTestSupport

private func encodeToObject<T: Encodable>(_ value: T) throws -> [String: Any] {
    let data = try ReportJSON.encode(value, pretty: false)
    return try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
}

private func sampleReport() -> CapabilityReport {
    let reaper = Reaper()
    let report = CapabilityProber(backend: FakeKernel.developmentMachine(), disabled: [.perfEvent], reaper: reaper).probe()
    reaper.drain()
    return report
}

@Suite("Capability report JSON")
struct CapabilityReportJSONTests {
    @Test("Top-level keys are snake_case: probed_at, duration_ms, kernel, mechanisms, features, chains")
    func topLevelKeys() throws {
        let json = try encodeToObject(sampleReport())
        #expect(Set(json.keys) == ["probed_at", "duration_ms", "kernel", "mechanisms", "features", "chains"])
        #expect(json["duration_ms"] is Double || json["duration_ms"] is Int)
    }

    @Test("probed_at is RFC 3339 UTC with milliseconds")
    func probedAtIsRFC3339() throws {
        var report = sampleReport()
        report.probedAt = Date(timeIntervalSince1970: 1_704_164_645.678)
        let json = try encodeToObject(report)
        #expect(json["probed_at"] as? String == "2024-01-02T03:04:05.678Z")
    }

    @Test("Kernel facts use snake_case keys and encode unknown values as null")
    func kernelKeys() throws {
        var report = sampleReport()
        report.kernel.syscallPrefix = nil
        report.kernel.lockdown = nil
        let kernel = try #require(try encodeToObject(report)["kernel"] as? [String: Any])
        #expect(Set(kernel.keys) == ["release", "machine", "btf", "lockdown", "jit", "tracefs", "bpffs",
                                     "syscall_prefix", "event_sources", "kprobe_events", "privileged", "cgroup2"])
        #expect(kernel["syscall_prefix"] is NSNull)
        let cgroup2 = try #require(kernel["cgroup2"] as? [String: Any])
        #expect(Set(cgroup2.keys) == ["path", "layout", "whole_hierarchy", "error"])
        #expect(cgroup2["layout"] as? String == "unified")
        #expect(cgroup2["error"] is NSNull)
        #expect(kernel["lockdown"] is NSNull)
        let tracefs = try #require(kernel["tracefs"] as? [String: Any])
        #expect(Set(tracefs.keys) == ["path", "mounted", "mounted_by_agent", "error"])
        #expect(tracefs["error"] is NSNull)
    }

    @Test("The syscall prefix is a string when known")
    func syscallPrefixString() throws {
        let kernel = try #require(try encodeToObject(sampleReport())["kernel"] as? [String: Any])
        #expect(kernel["syscall_prefix"] as? String == "__x64_")
        #expect(kernel["kprobe_events"] as? Bool == false)
    }

    @Test("Mechanism entries use duration_us, encode stage and errno as null when absent, and omit aliases and disabled when unset")
    func mechanismKeys() throws {
        let json = try encodeToObject(sampleReport())
        let mechanisms = try #require(json["mechanisms"] as? [[String: Any]])
        let byName = Dictionary(uniqueKeysWithValues: mechanisms.map { ($0["name"] as? String ?? "?", $0) })

        let tracepoint = try #require(byName["tracepoint"])
        #expect(Set(tracepoint.keys) == ["name", "status", "stage", "errno", "message", "duration_us"])
        #expect(tracepoint["errno"] is NSNull)
        #expect(tracepoint["status"] as? String == "supported")
        #expect(tracepoint["duration_us"] is Int)

        let kprobe = try #require(byName["kprobe"])
        #expect(kprobe["errno"] as? String == "ENOENT")
        #expect(kprobe["stage"] as? String == "attach")
        #expect(kprobe["status"] as? String == "unsupported")
    }

    @Test("fentry carries aliases [\"kfunc\"], fexit [\"kretfunc\"]")
    func aliasesEncoded() throws {
        let mechanisms = try #require(try encodeToObject(sampleReport())["mechanisms"] as? [[String: Any]])
        let fentry = try #require(mechanisms.first { $0["name"] as? String == "fentry" })
        let fexit = try #require(mechanisms.first { $0["name"] as? String == "fexit" })
        #expect(fentry["aliases"] as? [String] == ["kfunc"])
        #expect(fexit["aliases"] as? [String] == ["kretfunc"])
        #expect(fentry["errno"] as? String == "EPERM")
        #expect(fentry["status"] as? String == "denied")
    }

    @Test("A mechanism disabled by configuration encodes disabled: true with null stage and errno")
    func disabledEncoded() throws {
        let mechanisms = try #require(try encodeToObject(sampleReport())["mechanisms"] as? [[String: Any]])
        let perf = try #require(mechanisms.first { $0["name"] as? String == "perf_event" })
        #expect(perf["disabled"] as? Bool == true)
        #expect(perf["stage"] is NSNull)
        #expect(perf["errno"] is NSNull)
        #expect((perf["message"] as? String)?.contains("disabled by configuration") == true)
    }

    @Test("Chains are keyed by target type; each step has mechanism, requires, via and usable")
    func chainsEncoded() throws {
        let chains = try #require(try encodeToObject(sampleReport())["chains"] as? [String: [[String: Any]]])
        #expect(Set(chains.keys) == ["function", "syscall", "tracepoint", "uprobe", "profile"])
        let first = try #require(chains["syscall"]?.first)
        #expect(Set(first.keys) == ["mechanism", "requires", "via", "usable"])
        #expect(first["mechanism"] as? String == "fentry")
        #expect(first["requires"] as? [String] == ["fentry", "fexit"])
        #expect(first["usable"] as? Bool == false)
    }

    @Test("No camelCase key leaks into the encoding")
    func noCamelCase() throws {
        let text = try #require(String(data: try ReportJSON.encode(sampleReport()), encoding: .utf8))
        for key in ["probedAt", "durationMilliseconds", "durationMicroseconds", "syscallPrefix", "eventSources",
                    "kprobeEvents", "mountedByAgent"] {
            #expect(!text.contains("\"\(key)\""), "found \(key) in the JSON")
        }
    }

    @Test("Keys are sorted and slashes are not escaped")
    func outputFormatting() throws {
        let text = try #require(String(data: try ReportJSON.encode(sampleReport(), pretty: false), encoding: .utf8))
        #expect(text.hasPrefix("{\"chains\":"))
        #expect(text.contains("\"/sys/kernel/tracing\""))
        #expect(!text.contains("\\/"))
    }

    @Test("A capability result decodes back from its own JSON")
    func resultRoundTrip() throws {
        let original = CapabilityResult(.mechanism(.fentry), status: .denied, stage: .load,
                                        errno: .EPERM, message: "denied", durationMicroseconds: 12)
        let decoded = try JSONDecoder().decode(CapabilityResult.self, from: try ReportJSON.encode(original))
        #expect(decoded == original)
    }
}
