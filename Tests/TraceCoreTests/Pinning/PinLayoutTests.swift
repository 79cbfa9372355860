import Foundation
import Testing
@testable import TraceCore

/// The layout version pinned probes carry, and the manifest's matching rules.
struct PinLayoutTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent()
        .deletingLastPathComponent().deletingLastPathComponent()

    @Test("The map layout headers are the ones PinLayout.version was set for: a layout change must bump the version (or decide it is compatible) and record the new digest")
    func headerDigestIsRecorded() throws {
        let directory = Self.root.appendingPathComponent("bpf/include/traceplane")
        let names = try FileManager.default.contentsOfDirectory(atPath: directory.path).filter { $0.hasSuffix(".h") }.sorted()
        #expect(!names.isEmpty, "no headers in \(directory.path)")
        let files = try names.map { [UInt8](try Data(contentsOf: directory.appendingPathComponent($0))) }
        let digest = PinLayout.digest(files)
        #expect(digest == PinLayout.headerDigest, """
            bpf/include/traceplane/*.h changed (digest 0x\(String(digest, radix: 16)), recorded 0x\(String(PinLayout.headerDigest, radix: 16))): \
            pinned maps of the old layout must not be adopted by programs of the new one. Bump PinLayout.version \
            unless the change leaves every map's keys and values as they were, then record the new digest.
            """)
    }

    @Test("FNV-1a 64 of known bytes")
    func digestKnownValues() {
        #expect(PinLayout.digest([]) == 0xcbf2_9ce4_8422_2325)
        #expect(PinLayout.digest([Array("a".utf8)]) == 0xaf63_dc4c_8601_ec8c)
        #expect(PinLayout.digest([Array("foo".utf8)]) == PinLayout.digest([Array("f".utf8), Array("oo".utf8)]))
    }

    // Manifests hold normalized specs (labels always present).
    static let spec = ProbeSpec(name: "p", target: ProbeTarget(type: .syscall, name: "read"), labels: [:])

    static func manifest(budgeted: Bool = false) -> PinManifest {
        PinManifest(manifestVersion: PinManifest.currentVersion, layoutVersion: PinLayout.version, name: "p", generation: 3,
                    flavour: FlavourDescriptor.ID.allCases[0].rawValue, object: .own, bpfObject: "latency", directory: "g3",
                    programs: ["enter", "exit"], links: 2, taskStorage: true, budgeted: budgeted, boundTo: nil, hub: nil,
                    attempts: [], spec: spec, pinnedAt: Date(timeIntervalSince1970: 1_800_000_000))
    }

    @Test("A manifest is adopted only for the same probe, generation, spec, layout and budget control; each mismatch says what differs")
    func mismatchRules() {
        let m = Self.manifest()
        #expect(m.mismatch(saved: 3, spec: Self.spec, budgeted: false) == nil)
        #expect(m.mismatch(saved: 4, spec: Self.spec, budgeted: false) == "generation 3 pinned, 4 saved")
        var other = Self.spec
        other.labels = ["team": "a"]
        #expect(m.mismatch(saved: 3, spec: other, budgeted: false) == "the saved spec differs from the pinned one")
        other = Self.spec
        other.name = "q"
        #expect(m.mismatch(saved: 3, spec: other, budgeted: false) == "the manifest names probe 'p'")
        #expect(m.mismatch(saved: 3, spec: Self.spec, budgeted: false, layoutVersion: PinLayout.version + 1)
                == "layout version \(PinLayout.version) pinned, this build uses \(PinLayout.version + 1)")
        #expect(m.mismatch(saved: 3, spec: Self.spec, budgeted: true)?.contains("pinned without budget control") == true)
        #expect(Self.manifest(budgeted: true).mismatch(saved: 3, spec: Self.spec, budgeted: false)?.contains("pinned with budget control") == true)
        var old = m
        old.manifestVersion = 0
        #expect(old.mismatch(saved: 3, spec: Self.spec, budgeted: false) == "manifest version 0, this build reads \(PinManifest.currentVersion)")
        var unknown = m
        unknown.flavour = "warp"
        #expect(unknown.mismatch(saved: 3, spec: Self.spec, budgeted: false) == "flavour warp is unknown to this build")
        var noDirectory = m
        noDirectory.directory = nil
        #expect(noDirectory.mismatch(saved: 3, spec: Self.spec, budgeted: false) == "the manifest names no pin directory")
        var hub = m
        hub.object = .hub
        #expect(hub.mismatch(saved: 3, spec: Self.spec, budgeted: false) == "the manifest names no hub slot")
    }

    @Test("A manifest survives its JSON round trip; its keys are snake_case")
    func manifestJSON() throws {
        let m = Self.manifest(budgeted: true)
        let data = try m.encoded()
        let text = String(decoding: data, as: UTF8.self)
        for key in ["manifest_version", "layout_version", "bpf_object", "task_storage", "pinned_at", "budgeted"] {
            #expect(text.contains("\"\(key)\""), "\(key) missing from \(text)")
        }
        let decoded = try PinManifest.decode(data)
        #expect(decoded == m, "decoded \(decoded)\nfrom \(text)")
        #expect(throws: (any Error).self) { try PinManifest.decode(Data("{ not json".utf8)) }
    }
}
