import Foundation

extension FlavourDescriptor {
    /// Profile targets sample the CPUs: one cpu-clock perf event per online CPU, each with
    /// the same perf_event program (`cnt_perf_event`), keyed by default by process name,
    /// user stack and kernel stack. Each perf event is opened by the attach of its link and
    /// owned by that link from then on (closed when the link is, or at once when the attach
    /// fails); an attach that fails on one CPU rolls back the CPUs before it.
    static let profile = FlavourDescriptor(
        id: .profile, flavour: .perfEvent, places: [.profile: .init(position: 0, via: "cpu-clock perf events on every online CPU")],
        needs: [.perfEvent], measures: .events,
        keySupport: { plan in AggregatePlan.fieldsNeedRecord(plan, "a perf_event sampler") },
        recipe: { input in
            let p = LatencyBPF.Programs.self
            let hz = UInt64(input.spec.target.frequency)
            return Recipe(load: LatencyObject.load([.init(p.cntPerfEvent)], input),
                          attachments: OnlineCPUs.read().map { cpu in
                              .init(program: p.cntPerfEvent, point: .cpuSampler(cpu: Int32(cpu), frequencyHz: hz), mechanism: .perfEvent)
                          })
        })
}

/// The CPUs online now (`/sys/devices/system/cpu/online`, e.g. `0-3,6`). A CPU that comes
/// online later is not sampled by profiles made before it.
public enum OnlineCPUs {
    public static func read(path: String = "/sys/devices/system/cpu/online") -> [Int] {
        // Unreadable or unparsable: the CPUs the process sees (a profile on no CPU would
        // attach nothing and sample nothing).
        guard let text = try? String(contentsOfFile: path, encoding: .utf8), case let cpus = parse(text), !cpus.isEmpty else {
            return Array(0..<max(1, ProcessInfo.processInfo.activeProcessorCount))
        }
        return cpus
    }

    /// Parses a kernel CPU list (`0-3,6,8-9`); malformed parts are skipped.
    static func parse(_ text: String) -> [Int] {
        var cpus: [Int] = []
        for part in text.trimmingCharacters(in: .whitespacesAndNewlines).split(separator: ",") {
            let bounds = part.split(separator: "-", maxSplits: 1).compactMap { Int($0) }
            if bounds.count == 2, bounds[0] <= bounds[1], bounds[1] - bounds[0] < 65_536 {
                cpus += Array(bounds[0]...bounds[1])
            } else if bounds.count == 1, !part.contains("-") {
                cpus.append(bounds[0])
            }
        }
        return cpus
    }
}
