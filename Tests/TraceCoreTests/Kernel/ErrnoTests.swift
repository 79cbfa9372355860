import Foundation
import Glibc
import Testing
import TraceCore

@Suite("Errno and KernelError")
struct ErrnoTests {
    @Test("Names cover the values kernels return while probing, ENOTSUPP (524) included; others read E<n>")
    func names() {
        #expect(Errno.EPERM.name == "EPERM")
        #expect(Errno(rawValue: ESRCH).name == "ESRCH")
        #expect(Errno(rawValue: EOPNOTSUPP).name == "EOPNOTSUPP")
        #expect(Errno(rawValue: 524) == .ENOTSUPP)
        #expect(Errno.ENOTSUPP.name == "ENOTSUPP")
        #expect(Errno(rawValue: 4095).name == "E4095")
        #expect(KernelError(stage: .load, code: 0, operation: "x").errno == nil)
    }

    @Test("Names parse back, the E<n> form included; anything else does not")
    func parsing() {
        for (value, _) in Errno.named { #expect(Errno(name: value.name) == value) }
        #expect(Errno(name: "E4095") == Errno(rawValue: 4095))
        #expect(Errno(name: "EWHATEVER") == nil)
        #expect(Errno(name: "E-1") == nil)
        #expect(Errno(name: "") == nil)
    }

    @Test("JSON carries the name, and decoding refuses a string that is no errno")
    func json() throws {
        let data = try JSONEncoder().encode([Errno.ENOSPC, .ENOTSUPP])
        #expect(String(decoding: data, as: UTF8.self) == #"["ENOSPC","ENOTSUPP"]"#)
        #expect(try JSONDecoder().decode([Errno].self, from: data) == [.ENOSPC, .ENOTSUPP])
        #expect(throws: DecodingError.self) { _ = try JSONDecoder().decode([Errno].self, from: Data(#"["nope"]"#.utf8)) }
    }

    @Test("Only fds and memory count as the agent's own exhaustion")
    func exhaustion() {
        #expect(Errno.EMFILE.isResourceExhaustion && Errno.ENFILE.isResourceExhaustion && Errno.ENOMEM.isResourceExhaustion)
        #expect(!Errno.EPERM.isResourceExhaustion && !Errno.ENOSPC.isResourceExhaustion && !Errno.E2BIG.isResourceExhaustion)
    }

    @Test("The description names the operation, the errno and the detail")
    func descriptionIsReadable() {
        let error = KernelError(stage: .load, errno: .EPERM, operation: "load cap_fentry", detail: "verifier: denied")
        #expect(error.description.hasPrefix("load cap_fentry failed: EPERM (Operation not permitted)"))
        #expect(error.description.hasSuffix("— verifier: denied"))
        #expect(KernelError(stage: .attach, errno: .ENOTSUPP, operation: "x").description == "x failed: ENOTSUPP (Operation not supported)")
    }
}
