extension FlavourDescriptor {
    /// uprobe + uretprobe on a function of an ELF file; with `filter.pid`, of that process only.
    static let uprobe = FlavourDescriptor(
        id: .uprobe, flavour: .uprobe, places: [.uprobe: .init(position: 0, via: "uprobe/uretprobe on the symbol")],
        needs: [.uprobe, .uretprobe], measures: .calls,
        recipe: { input in
            let p = LatencyBPF.Programs.self
            let target = input.spec.target
            let pid = input.spec.filter?.pid.map(Int32.init)
            let path = target.path ?? "", symbol = target.symbol ?? ""
            return Recipe(
                load: LatencyObject.load([.init(p.latUprobe), .init(p.latUretprobe)], input),
                attachments: [.init(program: p.latUprobe, point: .uprobe(binary: path, symbol: symbol, pid: pid, retprobe: false), mechanism: .uprobe),
                              .init(program: p.latUretprobe, point: .uprobe(binary: path, symbol: symbol, pid: pid, retprobe: true), mechanism: .uretprobe)])
        })
}
