import ArgumentParser
import CLibBPF
import Foundation
import Glibc
import TraceCore

/// `traceplane bench-hook`: holds empty BPF programs (`bpf/bench.bpf.c`) attached to the
/// hooks a syscall probe uses, so that `bench/` can measure the floor: what the kernel's
/// dispatch to any BPF program on that hook costs. Hidden: a benchmarking aid, not a
/// feature. Like the agent: one object per `--syscall` on per-syscall tracepoints, one
/// shared pair on raw_syscalls whatever the number of syscalls.
struct BenchHook: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench-hook",
        abstract: "Attach empty BPF programs to syscall hooks and hold them (for bench/).",
        shouldDisplay: false)

    enum Hook: String, ExpressibleByArgument, CaseIterable {
        case tracepoint
        case tpBTF = "tp_btf"
        case rawTracepoint = "raw_tracepoint"
    }

    @Option(help: "tracepoint (syscalls:sys_enter_X/sys_exit_X), tp_btf or raw_tracepoint (raw_syscalls sys_enter/sys_exit).")
    var hook: Hook

    @Option(help: "Syscall to hook (repeatable; raw_syscalls hooks get one shared pair of programs, as the agent's shared hook).")
    var syscall: [String] = ["getppid"]

    @Flag(help: "Also turn kernel BPF run-time stats on while attached, as `serve` does for its lifetime.")
    var bpfStats = false

    @Option(help: "Detach and exit after this many seconds (also on SIGTERM/SIGINT).")
    var seconds: Double = 3600

    func run() async throws {
        guard seconds > 0 else { throw ValidationError("--seconds must be positive") }
        let statsFD = bpfStats ? tp_enable_runtime_stats() : -1
        if bpfStats, statsFD < 0 {
            FileHandle.standardError.write(Data("traceplane bench-hook: cannot enable BPF stats (errno \(-statsFD))\n".utf8))
            throw ExitCode(1)
        }
        defer { if statsFD >= 0 { close(statsFD) } }
        let backend = LibBPFBackend()
        var objects: [any LoadedObject] = []
        var links: [any AttachedLink] = []
        defer {
            for link in links { link.close() }
            for object in objects { object.close() }
        }
        for name in hook == .tracepoint ? syscall : Array(syscall.prefix(1)) {
            let p = BenchBPF.Programs.self
            let steps: [(program: BPFProgramID, loadTimeTarget: String?, point: AttachPoint)]
            switch hook {
            case .tracepoint:
                steps = [(p.benchSysEnter, nil, .tracepoint(category: "syscalls", name: "sys_enter_\(name)")),
                         (p.benchSysExit, nil, .tracepoint(category: "syscalls", name: "sys_exit_\(name)"))]
            case .tpBTF:
                steps = [(p.benchBtfSysEnter, "sys_enter", .loadTimeTarget), (p.benchBtfSysExit, "sys_exit", .loadTimeTarget)]
            case .rawTracepoint:
                steps = [(p.benchRawSysEnter, nil, .rawTracepoint(name: "sys_enter")),
                         (p.benchRawSysExit, nil, .rawTracepoint(name: "sys_exit"))]
            }
            do {
                let object = try backend.load(LoadSpec(object: BenchBPF.object, programs: steps.map { .init($0.program, loadTimeTarget: $0.loadTimeTarget) }))
                objects.append(object)
                for step in steps { links.append(try object.attach(program: step.program, to: step.point)) }
            } catch {
                FileHandle.standardError.write(Data("traceplane bench-hook: \(hook.rawValue) on \(name): \(error)\n".utf8))
                throw ExitCode(1)
            }
        }
        // The harness waits for this line before it starts timing.
        FileHandle.standardOutput.write(Data("attached \(links.count) programs via \(hook.rawValue)\n".utf8))
        let deadline = Task {
            try? await Task.sleep(for: .milliseconds(Int(seconds * 1000)))
            kill(getpid(), SIGTERM)
        }
        _ = await SignalWaiter.wait(for: [SIGTERM, SIGINT])
        deadline.cancel()
    }
}
