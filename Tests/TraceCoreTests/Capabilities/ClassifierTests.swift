import Glibc
import Testing
import TraceCore
import TraceCoreTestSupport

private let ENOTSUPP: Int32 = 524

private func load(_ errno: Int32, detail: String = "") -> KernelError {
    KernelError(stage: .load, code: errno, operation: "load cap_x", detail: detail)
}

private func attach(_ errno: Int32, detail: String = "") -> KernelError {
    KernelError(stage: .attach, code: errno, operation: "attach cap_x", detail: detail)
}

@Suite("Classifier: load failures")
struct ClassifierLoadTests {
    @Test("EPERM at load of fentry/fexit on a privileged agent is function tracing denied by the kernel",
          arguments: [Mechanism.fentry, .fexit])
    func fentryEPERMIsDeniedFunctionTracing(mechanism: Mechanism) {
        let verdict = Classifier.classify(mechanism, load(EPERM), facts: .developmentMachine())
        #expect(verdict.status == .denied)
        #expect(verdict.message.contains("function tracing denied by the kernel"))
    }

    @Test("EACCES at load is treated like EPERM")
    func eaccesIsDeniedLikeEPERM() {
        let verdict = Classifier.classify(.fentry, load(EACCES), facts: .canned())
        #expect(verdict.status == .denied)
        #expect(verdict.message.contains("function tracing denied by the kernel"))
    }

    @Test("EPERM at load on an unprivileged agent is denied for lack of privileges, whatever the mechanism",
          arguments: [Mechanism.fentry, .kprobe, .tracepoint, .tpBTF])
    func unprivilegedEPERMMentionsPrivileges(mechanism: Mechanism) {
        let verdict = Classifier.classify(mechanism, load(EPERM), facts: .canned(privileged: false))
        #expect(verdict.status == .denied)
        #expect(verdict.message.contains("lacks privileges"))
        #expect(verdict.message.contains("CAP_BPF"))
        #expect(!verdict.message.contains("function tracing denied"))
    }

    @Test("EPERM at load under lockdown=confidentiality names the lockdown")
    func confidentialityLockdownIsNamed() {
        let verdict = Classifier.classify(.fentry, load(EPERM), facts: .canned(lockdown: "confidentiality"))
        #expect(verdict.status == .denied)
        #expect(verdict.message.contains("lockdown (confidentiality)"))
    }

    @Test("EPERM at load under lockdown=integrity is not blamed on lockdown")
    func integrityLockdownIsNotBlamed() {
        let verdict = Classifier.classify(.fentry, load(EPERM), facts: .canned(lockdown: "integrity"))
        #expect(verdict.status == .denied)
        #expect(!verdict.message.contains("lockdown"))
    }

    @Test("EPERM at load of a non-function mechanism on a privileged agent blames an LSM or sysctl")
    func privilegedEPERMForOtherTypesBlamesPolicy() {
        let verdict = Classifier.classify(.tracepoint, load(EPERM), facts: .canned())
        #expect(verdict.status == .denied)
        #expect(verdict.message.contains("although the agent is privileged"))
    }

    @Test("ESRCH or ENOENT at load of fentry/fexit means the function is not in BTF",
          arguments: [Mechanism.fentry, .fexit], [ESRCH, ENOENT])
    func missingBTFFunctionIsUnsupported(mechanism: Mechanism, errno: Int32) {
        let verdict = Classifier.classify(mechanism, load(errno), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("not in the kernel's BTF"))
        #expect(verdict.message.contains("fentry/fexit cannot bind"))
    }

    @Test("ESRCH at load of tp_btf means there is no btf_trace_ type for the tracepoint")
    func missingBTFTracepointIsUnsupported() {
        let verdict = Classifier.classify(.tpBTF, load(ESRCH), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("btf_trace_"))
    }

    @Test("ENOENT at load of another mechanism is unsupported: the kernel lacks something")
    func enoentForOtherMechanismsIsUnsupported() {
        let verdict = Classifier.classify(.rawTracepoint, load(ENOENT), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("lacks something"))
    }

    @Test("EINVAL, E2BIG, EOPNOTSUPP and ENOTSUPP at load mean the program type is not supported",
          arguments: [EINVAL, E2BIG, EOPNOTSUPP, ENOTSUPP])
    func rejectedProgramIsUnsupported(errno: Int32) {
        let verdict = Classifier.classify(.kprobeMulti, load(errno), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("not supported"))
    }

    @Test("Unexpected errnos at load are errors", arguments: [EBADF, EBUSY, EFAULT])
    func unexpectedLoadErrnoIsError(errno: Int32) {
        let verdict = Classifier.classify(.tracepoint, load(errno), facts: .canned())
        #expect(verdict.status == .error)
        #expect(verdict.message.contains("unexpectedly"))
    }

    @Test("The verifier's detail is appended in parentheses")
    func detailIsAppended() {
        let verdict = Classifier.classify(.fentry, load(ESRCH, detail: "verifier: no such func"), facts: .canned())
        #expect(verdict.message.hasSuffix("(verifier: no such func)"))
    }
}

@Suite("Classifier: attach failures")
struct ClassifierAttachTests {
    @Test("ENOENT at attach of kprobe/kretprobe without kprobe PMU or kprobe_events names CONFIG_KPROBES",
          arguments: [Mechanism.kprobe, .kretprobe])
    func kprobesCompiledOutIsUnsupported(mechanism: Mechanism) {
        let verdict = Classifier.classify(mechanism, attach(ENOENT), facts: .developmentMachine())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("CONFIG_KPROBES"))
        #expect(verdict.message.contains("no kprobe PMU"))
    }

    @Test("Without kprobe PMU or kprobe_events any attach errno of a kprobe blames CONFIG_KPROBES",
          arguments: [EINVAL, EOPNOTSUPP, ENODEV])
    func kprobesCompiledOutWinsOverErrno(errno: Int32) {
        let verdict = Classifier.classify(.kprobe, attach(errno), facts: .developmentMachine())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("CONFIG_KPROBES"))
    }

    @Test("ENOENT or EINVAL at attach of a kprobe with the kprobe PMU present means the function cannot be kprobed",
          arguments: [ENOENT, EINVAL])
    func unkprobeableFunctionIsUnsupported(errno: Int32) {
        let verdict = Classifier.classify(.kprobe, attach(errno), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("cannot be kprobed"))
        #expect(!verdict.message.contains("CONFIG_KPROBES"))
    }

    @Test("Legacy kprobe_events alone counts as kprobe support")
    func kprobeEventsAloneIsEnough() {
        let facts = KernelFacts.canned(eventSources: ["software", "tracepoint"], kprobeEvents: true)
        let verdict = Classifier.classify(.kprobe, attach(ENOENT), facts: facts)
        #expect(!verdict.message.contains("CONFIG_KPROBES"))
    }

    @Test("EBUSY at attach is an error: another tracer holds the target",
          arguments: [Mechanism.kprobe, .fentry, .tracepoint, .uprobe])
    func ebusyIsError(mechanism: Mechanism) {
        let verdict = Classifier.classify(mechanism, attach(EBUSY), facts: .developmentMachine())
        #expect(verdict.status == .error)
        #expect(verdict.message.contains("busy"))
    }

    @Test("EPERM at attach is denied; unprivileged agents are told about privileges")
    func attachEPERMIsDenied() {
        let privileged = Classifier.classify(.tracepoint, attach(EPERM), facts: .canned())
        #expect(privileged.status == .denied)
        #expect(privileged.message.contains("denied attaching"))
        #expect(!privileged.message.contains("privileges"))

        let unprivileged = Classifier.classify(.tracepoint, attach(EACCES), facts: .canned(privileged: false))
        #expect(unprivileged.status == .denied)
        #expect(unprivileged.message.contains("lacks privileges"))
    }

    @Test("kprobe_multi attach failures that mean 'no fprobe' name CONFIG_FPROBE",
          arguments: [EOPNOTSUPP, ENOTSUPP, EINVAL, ENOENT, ESRCH])
    func kprobeMultiWithoutFprobeIsUnsupported(errno: Int32) {
        let verdict = Classifier.classify(.kprobeMulti, attach(errno), facts: .developmentMachine())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("CONFIG_FPROBE"))
    }

    @Test("ENOENT at attach of a perf tracepoint with tracefs mounted: the tracepoint does not exist")
    func missingTracepointIsUnsupported() {
        let verdict = Classifier.classify(.tracepoint, attach(ENOENT), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("does not exist in tracefs"))
    }

    @Test("ENOENT at attach of a perf tracepoint without tracefs repeats why tracefs is not mounted")
    func unmountedTracefsIsExplained() {
        let tracefs = MountFact(path: "/sys/kernel/tracing", mounted: false, mountedByAgent: false,
                                error: "mounting tracefs was refused (EPERM)")
        let verdict = Classifier.classify(.tracepoint, attach(ENOENT), facts: .canned(tracefs: tracefs))
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("tracefs is not mounted"))
        #expect(verdict.message.contains("mounting tracefs was refused (EPERM)"))
    }

    @Test("ENOENT at attach of a raw tracepoint: it does not exist")
    func missingRawTracepointIsUnsupported() {
        let verdict = Classifier.classify(.rawTracepoint, attach(ENOENT), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("raw tracepoint does not exist"))
    }

    @Test("uprobe attach failures without the uprobe PMU name CONFIG_UPROBE_EVENTS",
          arguments: [Mechanism.uprobe, .uretprobe])
    func uprobesCompiledOutIsUnsupported(mechanism: Mechanism) {
        let facts = KernelFacts.canned(eventSources: ["software", "tracepoint"])
        let verdict = Classifier.classify(mechanism, attach(ENOENT), facts: facts)
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("CONFIG_UPROBE_EVENTS"))
    }

    @Test("ENOENT at attach of a uprobe with the PMU present: binary or symbol not found")
    func missingUprobeSymbolIsUnsupported() {
        let verdict = Classifier.classify(.uprobe, attach(ENOENT), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("binary or symbol was not found"))
    }

    @Test("EOPNOTSUPP, ENOTSUPP or EINVAL at attach of a trampoline: it cannot be attached",
          arguments: [Mechanism.fentry, .fexit, .tpBTF], [EOPNOTSUPP, ENOTSUPP, EINVAL])
    func trampolineAttachIsUnsupported(mechanism: Mechanism, errno: Int32) {
        let verdict = Classifier.classify(mechanism, attach(errno), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("trampoline"))
    }

    @Test("ENOENT, ENODEV or EOPNOTSUPP at attach of a perf event: software perf events are unavailable",
          arguments: [ENOENT, ENODEV, EOPNOTSUPP])
    func perfEventUnavailableIsUnsupported(errno: Int32) {
        let verdict = Classifier.classify(.perfEvent, attach(errno), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("software perf events"))
    }

    @Test("EOPNOTSUPP at attach of any other mechanism is unsupported")
    func genericNotSupportedAttachIsUnsupported() {
        let verdict = Classifier.classify(.rawTracepoint, attach(EOPNOTSUPP), facts: .canned())
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("does not support this attachment"))
    }

    @Test("Unexpected errnos at attach are errors", arguments: [EBADF, EFAULT])
    func unexpectedAttachErrnoIsError(errno: Int32) {
        let verdict = Classifier.classify(.tracepoint, attach(errno), facts: .canned())
        #expect(verdict.status == .error)
        #expect(verdict.message.contains("attaching failed unexpectedly"))
    }
}

@Suite("Classifier: other stages")
struct ClassifierOtherStageTests {
    @Test("A failure to open the embedded object is an error")
    func openFailureIsError() {
        let error = KernelError(stage: .open, errno: .EINVAL, operation: "open BPF object capability", detail: "bad ELF")
        let verdict = Classifier.classify(.tracepoint, error, facts: .canned())
        #expect(verdict.status == .error)
        #expect(verdict.message == "could not open the embedded BPF object (bad ELF)")
    }

    @Test("A failure to read the counter map is an error")
    func readFailureIsError() {
        let error = KernelError(stage: .read, errno: .EFAULT, operation: "read map hits")
        let verdict = Classifier.classify(.uprobe, error, facts: .canned())
        #expect(verdict.status == .error)
        #expect(verdict.message.contains("counter map"))
    }

    @Test("A program that never ran is unsupported", arguments: Mechanism.allCases)
    func neverFiredIsUnsupported(mechanism: Mechanism) {
        let verdict = Classifier.neverFired(mechanism)
        #expect(verdict.status == .unsupported)
        #expect(verdict.message.contains("never ran"))
    }
}

@Suite("Classifier: the agent's own exhaustion")
struct ClassifierExhaustionTests {
    @Test("EMFILE, ENFILE and ENOMEM are errors that blame the agent's resources, not the kernel, at either stage",
          arguments: [EMFILE, ENFILE, ENOMEM])
    func exhaustionIsTheAgents(code: Int32) {
        for error in [load(code), attach(code)] {
            let verdict = Classifier.classify(.tpBTF, error, facts: .developmentMachine())
            #expect(verdict.status == .error)
            #expect(verdict.message.contains("the agent ran out of"))
            #expect(verdict.message.contains("says nothing about the kernel"))
        }
    }
}
