import Foundation
import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

/// Budget calibration on the real kernel: each flavour a budget can be calibrated for here
/// gets a cost per recorded call above its cost per call not recorded, both plausible; the
/// flavours this kernel refuses, and profiles, say why; nothing is left behind.
@Suite(.serialized, .kernelExclusive, .enabled(if: RootRequirement.check("BudgetCalibrationKernelTests") || RootRequirement.mustRun,
                                               "needs root and a real kernel"))
struct BudgetCalibrationKernelTests {
    static let backend = LibBPFBackend()
    static let store = CapabilityStore(prober: CapabilityProber(backend: backend))

    init() {
        #expect(RootRequirement.isRoot, "real-kernel tests must run as root (CI runs as root)")
    }

    @Test("Every flavour that attaches here calibrates (full > floor ≥ 0, under 50 µs); refused flavours and profiles say why; no fd or program is left")
    func calibratesEveryFlavour() async throws {
        Reaper.shared.drain()
        let report = await Self.store.get()
        let planner = Planner(backend: Self.backend)
        let calibrator = BudgetCalibrator(planner: planner, report: report)
        let fdsBefore = FDCensus.take()
        let programsBefore = KernelCensus.programIDs()
        let supported = Set(report.mechanisms.filter { $0.status == .supported }.map(\.name))
        var calibrated: [String] = []
        for id in FlavourDescriptor.ID.allCases {
            let descriptor = try #require(FlavourCatalog.all.first { $0.id == id })
            let usable = descriptor.unavailable == nil && descriptor.needs.allSatisfy { supported.contains($0.rawValue) }
            switch calibrator.calibrate(id) {
            case .success(let c):
                print("\(id.rawValue): \(c.full) ns per recorded call, \(c.floor) ns per call not recorded")
                #expect(id != .profile)
                #expect(c.full > 0 && c.full < 50_000, "\(id.rawValue): full \(c.full) ns")
                #expect(c.floor >= 0 && c.floor <= c.full, "\(id.rawValue): floor \(c.floor) ns, full \(c.full) ns")
                calibrated.append(id.rawValue)
            case .failure(let error):
                print("\(id.rawValue): \(error)")
                if id == .profile {
                    #expect(error.description.contains("frequency"))
                } else {
                    #expect(!usable, "\(id.rawValue) attaches here but did not calibrate: \(error)")
                    #expect(error.description.contains("did not attach"), "\(id.rawValue): \(error)")
                }
            }
        }
        // This kernel: the syscall hook (tp_btf, raw_tp), per-syscall tracepoints, the three
        // tracepoint-target flavours and uprobes.
        #expect(calibrated.count >= 7, "calibrated only \(calibrated)")
        Reaper.shared.drain()
        #expect(FDCensus.take() == fdsBefore, "fds left: \(FDCensus.take()) vs \(fdsBefore)")
        let leaked = await KernelCensus.settledPrograms(excluding: programsBefore)
        #expect(leaked.isEmpty, "programs left: \(leaked.map(KernelCensus.programName))")
    }
}
