import Glibc
import Testing
import TraceCore

@Suite("KernelError")
struct KernelErrorTests {
    @Test("errno names cover the values kernels return while probing, including ENOTSUPP (524)")
    func errnoNames() {
        #expect(errnoName(EPERM) == "EPERM")
        #expect(errnoName(ESRCH) == "ESRCH")
        #expect(errnoName(EOPNOTSUPP) == "EOPNOTSUPP")
        #expect(errnoName(524) == "ENOTSUPP")
        #expect(errnoName(4095) == "E4095")
        #expect(KernelError(stage: .load, errno: 0, operation: "x").errnoName == nil)
    }

    @Test("The description names the operation, the errno and the detail")
    func descriptionIsReadable() {
        let error = KernelError(stage: .load, errno: EPERM, operation: "load cap_fentry", detail: "verifier: denied")
        #expect(error.description.hasPrefix("load cap_fentry failed: EPERM ("))
        #expect(error.description.hasSuffix("— verifier: denied"))
    }
}
