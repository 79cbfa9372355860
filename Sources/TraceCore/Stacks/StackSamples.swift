/// A stack-keyed aggregate as flame graph samples (DESIGN.md: `comm;user frames;kernel
/// frames count`): per key, its other parts first (the process name as it is, other parts
/// as `name=value`), then the user stack and the kernel stack, each outermost frame first;
/// the count is the key's calls (samples, for a profile).
public enum StackSamples {
    public static func samples(_ aggregate: KeyedAggregate) -> [FlameGraph.Sample] {
        aggregate.entries.compactMap { entry in
            guard entry.calls > 0 else { return nil }
            var head: [String] = []
            var user: [String] = []
            var kernel: [String] = []
            for (name, part) in zip(aggregate.by, entry.key) {
                switch part {
                case .stack(let ref, let frames):
                    let root = ref.lossFrame.map { [$0] } ?? frames.reversed()
                    if ref.space == .user { user += root } else { kernel += root }
                case .string(let text) where name == "comm" || name == "thread":
                    head.append(text.isEmpty ? "[\(name) unknown]" : text)
                default:
                    head.append("\(name)=\(part.text)")
                }
            }
            return FlameGraph.Sample(frames: head + user + kernel, count: entry.calls)
        }
    }
}
