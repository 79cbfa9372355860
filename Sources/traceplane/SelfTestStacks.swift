import CLibBPF
import Foundation
import Glibc
import TraceCore

// MARK: - Stack keys and profiles

/// What every counted call's stack must show: `chain`, outermost first, as an ordered
/// subsequence of its frames (other frames may come between: BPF programs and trampolines,
/// a syscall table's dispatcher). A name ending in `*` matches by prefix.
struct StackExpectation: Sendable, CustomStringConvertible {
    var key: String
    var chain: [String]

    var description: String {
        "every \(key) recorded (stack_full == 0) and running through " + chain.joined(separator: " → ")
    }

    /// Whether `frames` (innermost first, as a key holds them) run through the chain.
    func matches(_ frames: [String]) -> Bool {
        var wanted = chain[...]
        for frame in frames.reversed() {
            guard let next = wanted.first else { break }
            if next.hasSuffix("*") ? frame.hasPrefix(next.dropLast()) : frame == next { wanted = wanted.dropFirst() }
        }
        return wanted.isEmpty
    }

    /// What is wrong with `aggregate`, whose probe counted `calls`: stacks lost, keys that are
    /// not one stack, calls under stacks without the chain.
    func failures(_ aggregate: KeyedAggregate, calls: UInt64) -> [String] {
        var out: [String] = []
        if aggregate.stackFull != 0 { out.append("\(aggregate.stackFull) stacks lost: the stack map was full") }
        if aggregate.droppedKeys != 0 { out.append("\(aggregate.droppedKeys) calls found no room in the key table") }
        var through: UInt64 = 0
        var others: [(String, UInt64)] = []
        for entry in aggregate.entries {
            guard entry.key.count == 1, case .stack(let ref, let frames) = entry.key[0] else {
                out.append("not a single stack key: \(entry.texts)")
                continue
            }
            if ref.lossFrame == nil, matches(frames) {
                through += entry.calls
            } else {
                others.append((entry.texts[0].isEmpty ? "(no frames)" : entry.texts[0], entry.calls))
            }
        }
        if through != calls {
            out.append("\(through) of \(calls) calls under stacks through \(chain.joined(separator: " → "))"
                       + (others.isEmpty ? "" : "; the others: " + others.prefix(3).map { "\($0.1) × \($0.0)" }.joined(separator: " | ")))
        }
        return out
    }
}

extension SelfTestRunner {
    func stackChecks() async -> [CheckResult] {
        var results: [CheckResult] = []
        // A function with BTF and arguments (see runAll), entered from the syscall entry.
        let function = "\(prefix)sys_getpgid"
        #if arch(x86_64)
        let kernelChain = ["entry_SYSCALL_64*", "do_syscall_64", function]
        #else
        let kernelChain = [function]
        #endif
        for flavour in FlavourCatalog.chain(for: .function).map(\.flavour) {
            results.append(await run(CheckPlan(
                name: "stacks: function \(function) by kstack, mechanisms [\(flavour.rawValue)]",
                target: ProbeTarget(type: .function, name: function), flavours: [flavour], events: calls,
                expectation: .exact(calls), trigger: { _ = getpgid(0) }, aggregate: AggregateSpec(by: ["kstack"]),
                stacks: StackExpectation(key: "kstack", chain: kernelChain))))
        }
        // This process's own user stack, through a C chain with frame pointers
        // (selftest_chains.c); a per-syscall tracepoint runs the probe's own programs.
        let calls = calls
        results.append(await run(CheckPlan(
            name: "stacks: syscall getppid by ustack, mechanisms [tracepoint]",
            target: ProbeTarget(type: .syscall, name: "getppid"), flavours: [.tracepoint], events: 1,
            expectation: .exact(calls), trigger: { tp_selftest_getppid_chain(calls) },
            aggregate: AggregateSpec(by: ["ustack"], value: "none"),
            stacks: StackExpectation(key: "ustack", chain: ["tp_selftest_getppid_chain", "tp_selftest_chain_a", "tp_selftest_chain_b",
                                                            "tp_selftest_chain_c", "tp_selftest_direct_getppid"]))))
        results.append(await profileCheck())
        return results
    }

    static let profileSeconds = 1
    static let profileHz = 99

    /// A 99 Hz profile for a second, keyed by CPU, while a thread keeps each online CPU
    /// busy: every online CPU has samples, one perf event fd per CPU while it is attached
    /// and none left once it is deleted.
    func profileCheck() async -> CheckResult {
        let target = ProbeTarget(type: .profile, frequencyHz: Self.profileHz)
        let name = "profile: \(Self.profileHz) Hz for \(Self.profileSeconds) s by cpu, mechanisms [perf_event]"
        let (predicted, reasons, capabilityRuledOut) = predict([.perfEvent], target: target)
        let cpus = OnlineCPUs.read()
        var result = CheckResult(
            name: name, target: target.label, requestedMechanisms: [Flavour.perfEvent.rawValue], expectedMechanism: predicted?.rawValue,
            mechanism: nil,
            expected: "each online CPU kept busy for \(Self.profileSeconds) s: samples > 0 on each (\(cpus.map(String.init).joined(separator: ",")) here) and on no other; "
                + "perf event fds: +\(cpus.count) while attached, all closed after the delete",
            actual: nil, status: "fail", pass: false, attempts: [], attachMilliseconds: 0, notes: reasons)

        // Earlier checks' perf events (tracepoint and kprobe links) may still be closing.
        await BlockingWork.attach.run { [reaper] in reaper.drain() }
        let before = Self.perfEventFDs()
        let probeName = "selftest-prof-\(UInt32.random(in: 0...UInt32.max))"
        guard let probe = await create(ProbeSpec(name: probeName, target: target, mechanisms: [Flavour.perfEvent.rawValue],
                                                 aggregate: AggregateSpec(by: ["cpu"])),
                                       check: name, predicted: predicted, capabilityRuledOut: capabilityRuledOut, into: &result) else {
            return result
        }
        result.mechanism = probe.mechanism?.rawValue
        result.attempts = probe.attempts
        let attached = Self.perfEventFDs()
        var ok = true
        // A busy thread pinned to each CPU for the profile's second: an idle CPU may give
        // a frequency-mode sampler no sample at all.
        let spun = FailureBox()
        await withTaskGroup(of: Void.self) { group in
            for cpu in cpus {
                group.addTask {
                    await withCheckedContinuation { (continuation: CheckedContinuation<Void, Never>) in
                        Thread {
                            let rc = tp_selftest_spin_on_cpu(Int32(cpu), Self.profileSeconds * 1000)
                            if rc != 0 { spun.add("cannot keep CPU \(cpu) busy: \(String(cString: strerror(-rc)))") }
                            continuation.resume()
                        }.start()
                    }
                }
            }
        }
        if !spun.items.isEmpty {
            ok = false
            result.notes += spun.items
        }
        var samples: [String: UInt64] = [:]
        do {
            let metrics = try await manager.metrics(probeName)
            for entry in metrics.aggregate?.entries ?? [] {
                samples[entry.texts.joined(separator: ", "), default: 0] += entry.calls
            }
            result.actual = .init(calls: metrics.calls, latencyCount: nil, histogramCount: nil, samplesByCPU: samples)
        } catch {
            ok = false
            result.notes.append("reading the profile failed: \(error.detail)")
        }
        try? await manager.delete(probeName)
        await BlockingWork.attach.run { [reaper] in reaper.drain() }
        let after = Self.perfEventFDs()
        result.actual?.perfFDs = .init(before: before, attached: attached, after: after)

        let wanted = Set(cpus.map(String.init))
        let sampled = Set(samples.filter { $0.value > 0 }.keys)
        if result.actual != nil, sampled != wanted {
            ok = false
            result.notes.append("CPUs with samples: \(sampled.sorted()), online: \(wanted.sorted())")
        }
        if attached != before + cpus.count || after != before {
            ok = false
            result.notes.append("perf event fds: \(before) before, \(attached) attached (expected \(before + cpus.count)), \(after) after the delete (expected \(before))")
        }
        if let problem = Self.mechanismProblem(predicted: predicted, chosen: result.mechanism) {
            ok = false
            result.notes.append(problem)
        }
        result.status = ok ? "pass" : "fail"
        result.pass = ok
        Self.log("[\(result.status)] \(name): \(result.mechanism ?? "none"), samples by cpu \(samples.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(separator: ", ")), "
                 + "perf fds \(before)/\(attached)/\(after)")
        return result
    }

    /// The perf event fds this process holds (`anon_inode:[perf_event]`).
    static func perfEventFDs() -> Int {
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/self/fd")) ?? []
        return fds.filter { fd in
            var buffer = [UInt8](repeating: 0, count: 256)
            let n = buffer.withUnsafeMutableBytes { readlink("/proc/self/fd/\(fd)", $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
            return n > 0 && String(decoding: buffer.prefix(n), as: UTF8.self).contains("[perf_event]")
        }.count
    }
}
