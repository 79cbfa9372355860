/// Renders a capability report as a readable terminal table.
public enum CapabilityTable {
    public static func render(_ report: CapabilityReport) -> String {
        let k = report.kernel
        var out = "kernel \(k.release) (\(k.machine))  btf: \(k.btf ? "yes" : "no")  jit: \(k.jit ?? "unknown")  lockdown: \(k.lockdown ?? "unknown")  syscall prefix: \(k.syscallPrefix.map { $0.isEmpty ? "(none)" : $0 } ?? "unknown")\n"
        out += "tracefs: \(mount(k.tracefs))  bpffs: \(mount(k.bpffs))\n"
        out += "probed in \(String(format2(report.durationMilliseconds))) ms\n\n"
        out += table(title: "MECHANISM", report.mechanisms)
        out += "\n"
        out += table(title: "FEATURE", report.features)
        return out
    }

    static func mount(_ m: MountFact) -> String {
        if m.mounted { return "\(m.path)\(m.mountedByAgent ? " (mounted by agent)" : "")" }
        return "not mounted: \(m.error ?? "unknown reason")"
    }

    static func format2(_ value: Double) -> String {
        let scaled = (value * 10).rounded() / 10
        return "\(scaled)"
    }

    static func table(title: String, _ rows: [CapabilityResult]) -> String {
        let header = [title, "STATUS", "STAGE", "ERRNO", "REASON"]
        let cells = rows.map { r -> [String] in
            [r.name + (r.aliases.map { " (\($0.joined(separator: ",")))" } ?? ""), r.status.rawValue, r.stage?.rawValue ?? "-",
             r.errno?.name ?? "-", r.message]
        }
        var widths = header.map(\.count)
        for row in cells { for (i, c) in row.enumerated() where i < 4 { widths[i] = max(widths[i], c.count) } }
        func line(_ row: [String]) -> String {
            row.enumerated().map { i, c in i < 4 ? c.padding(toLength: widths[i] + 2, withPad: " ", startingAt: 0) : c }.joined()
        }
        return ([line(header)] + cells.map(line)).joined(separator: "\n") + "\n"
    }
}
