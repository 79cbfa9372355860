import Foundation
import Glibc
import Testing
@testable import TraceCore
import TraceCoreTestSupport

extension StacksTests {
    @Suite("Stacks: timing of a benchmark-sized load (printed, never asserted)")
    struct SymbolizerTimingTests {
        @Test("10,000 distinct stacks of 20 frames (10 kernel, 10 user) from fresh symbolizers, kallsyms load included",
              .enabled(if: RootRequirement.check("SymbolizerTimingTests") || RootRequirement.mustRun, "needs root to read kallsyms addresses"))
        func tenThousandStacks() throws {
            let kernelTable = KernelSymbolizer().table
            try #require(kernelTable.count > 0)

            let me = getpid()
            let libcAddress = try #require(StackTestSupport.address(of: "getppid"))
            let libcMapping = try #require(StackTestSupport.ownMapping(of: libcAddress))
            let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            var userTargets: [UInt64] = []
            for path in [libcMapping.module, executable] {
                let (image, _) = try #require(ELFImage.load(path: path))
                let maps = StackTestSupport.mappings(me).filter { $0.module == path }
                for i in 0..<image.symbols.count {
                    for mapping in maps {
                        if let ip = StackTestSupport.address(ofVaddr: image.symbols.addresses[i], image: image, mapping: mapping) {
                            userTargets.append(ip)
                            break
                        }
                    }
                }
            }
            try #require(userTargets.count > 100)

            var random = SystemRandomNumberGenerator()
            var stacks: [(kernel: [UInt64], user: [UInt64])] = []
            stacks.reserveCapacity(10_000)
            for _ in 0..<10_000 {
                let kernel = (0..<10).map { _ in kernelTable.addresses[Int.random(in: 0..<kernelTable.count, using: &random)] + UInt64.random(in: 0..<16, using: &random) }
                let user = (0..<10).map { _ in userTargets[Int.random(in: 0..<userTargets.count, using: &random)] + UInt64.random(in: 0..<4, using: &random) }
                stacks.append((kernel, user))
            }

            let rssBefore = StackTestSupport.residentBytes()
            let started = ContinuousClock.now
            let kernelSymbolizer = KernelSymbolizer()
            let userSymbolizer = UserSymbolizer()
            var named = 0
            for stack in stacks {
                named += kernelSymbolizer.symbolize(stack.kernel).count { $0.symbol != nil }
                named += userSymbolizer.symbolize(tgid: UInt32(me), ips: stack.user).count { $0.symbol != nil }
            }
            let elapsed = ContinuousClock.now - started
            let rssAfter = StackTestSupport.residentBytes()
            print("symbolized 10000 stacks × 20 frames in \(elapsed) (\(named) of 200000 frames named), RSS +\((rssAfter - rssBefore) >> 20) MB, ELF cache \(userSymbolizer.cacheBytes >> 10) KiB")
            #expect(named > 150_000)
        }
    }
}
