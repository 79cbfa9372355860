import CKernelOracle
import Foundation
import Testing
import TraceCore
import TraceCoreTestSupport

/// The agent's own BTF reader against libbpf's parser (the oracle), on this kernel's BTF.
@Suite(.enabled(if: RootRequirement.check("VmlinuxBTFKernelTests") || RootRequirement.mustRun, "needs root and a real kernel"))
struct VmlinuxBTFKernelTests {
    @Test("task_struct's group_leader and comm offsets agree with libbpf's; the capability report carries them")
    func taskLayoutMatchesLibbpf() async throws {
        let btf = try #require(VmlinuxBTF.read(), "this kernel has no readable /sys/kernel/btf/vmlinux")
        let layout = try #require(TaskLayout(btf: btf))
        let leader = oracle_task_struct_offset("group_leader"), comm = oracle_task_struct_offset("comm")
        #expect(leader > 0 && comm > 0, "oracle: \(leader) \(comm)")
        #expect(Int(layout.groupLeader) == leader)
        #expect(Int(layout.comm) == comm)
        #expect(btf.offset(of: "no_such_member", in: "task_struct") == nil)
        #expect(LinuxHost().inspect().taskLayout == layout)
    }

    @Test("Function and typedef names agree with libbpf's lookup for the names the planner and self-test use")
    func namesMatchLibbpf() throws {
        let btf = try #require(VmlinuxBTF.read())
        let functions = btf.functions, typedefs = btf.typedefs
        #expect(functions.count > 10_000)
        for name in ["vfs_read", "__x64_sys_getpgid", "__do_sys_getppid", "__x64_sys_getppid", "no_such_function_at_all"] {
            #expect(functions.contains(name) == (oracle_btf_has(name, Int32(ORACLE_BTF_KIND_FUNC)) == 1), "\(name)")
        }
        for name in ["btf_trace_sys_enter", "btf_trace_sched_switch", "btf_trace_no_such_event"] {
            #expect(typedefs.contains(name) == (oracle_btf_has(name, Int32(ORACLE_BTF_KIND_TYPEDEF)) == 1), "\(name)")
        }
    }

    @Test("Prototypes from BTF: vfs_read's parameter names and its 64-bit return, an int return, a void one")
    func prototypes() throws {
        let btf = try #require(VmlinuxBTF.read())
        let read = try #require(btf.parameters(of: "vfs_read"))
        #expect(read.map(\.name) == ["file", "buf", "count", "pos"])
        #expect(read[2].shape == .integer(size: 8, signed: false))  // size_t
        if case .pointer(let toChar, _) = read[1].shape { #expect(toChar) } else { Issue.record("buf: \(read[1].shape)") }
        #expect(btf.returnShape(of: "vfs_read") == .some(.integer(size: 8, signed: true)))     // ssize_t
        #expect(btf.returnShape(of: "security_file_open") == .some(.integer(size: 4, signed: true)))  // int
        #expect(btf.returnShape(of: "fput") == .some(nil))                                     // void
        #expect(btf.returnShape(of: "no_such_function_here") == nil)
        let schema = try #require(TargetSchemaReader().schema(for: ProbeTarget(type: .function, name: "security_file_open")))
        #expect(schema.returns == .integer(size: 4, signed: true))
    }
}
