import Testing

/// Runs a whole suite (or test) while no other `.kernelExclusive` suite runs in this process.
///
/// Swift Testing runs suites in parallel, and `.serialized` only orders the tests inside one
/// suite. Kernel suites that count this process's BPF and perf fds before and after some
/// work, or look for our programs in the kernel, would see each other's resources; this
/// trait makes them take turns.
struct KernelExclusive: SuiteTrait, TestTrait, TestScoping {
    var isRecursive: Bool { false }

    func scopeProvider(for test: Test, testCase: Test.Case?) -> Self? {
        // Once around a suite, or once around all cases of a test function.
        testCase == nil ? self : nil
    }

    func provideScope(for test: Test, testCase: Test.Case?, performing function: @Sendable () async throws -> Void) async throws {
        await KernelTurn.shared.acquire()
        do {
            try await function()
        } catch {
            await KernelTurn.shared.release()
            throw error
        }
        await KernelTurn.shared.release()
    }
}

extension Trait where Self == KernelExclusive {
    /// Runs while no other kernel-exclusive suite runs (see ``KernelExclusive``).
    static var kernelExclusive: Self { KernelExclusive() }
}

/// A first-come, first-served async lock.
actor KernelTurn {
    static let shared = KernelTurn()

    private var held = false
    private var waiters: [CheckedContinuation<Void, Never>] = []

    func acquire() async {
        if !held {
            held = true
            return
        }
        await withCheckedContinuation { waiters.append($0) }
    }

    func release() {
        if waiters.isEmpty {
            held = false
        } else {
            // Hand the turn straight to the next waiter: `held` stays true.
            waiters.removeFirst().resume()
        }
    }
}
