import Foundation
import Glibc
import Testing
@testable import TraceCore

extension StacksTests {
    /// A pid the kernel gives to a new process must not be named with the old one's files:
    /// a fake /proc whose maps and stat for one pid change under the symbolizer.
    @Suite("Stacks: a reused pid gets a new snapshot") struct PidReuseTests {
        static func mapsLine(_ path: String) throws -> String {
            var info = stat()
            try #require(stat(path, &info) == 0)
            let dev = UInt64(info.st_dev)
            return String(format: "55550000000-55550100000 r-xp 00000000 %02x:%02x %llu %@\n",
                          ELFImage.major(dev), ELFImage.minor(dev), UInt64(info.st_ino), path)
        }

        static func statLine(start: UInt64) -> String {
            "4242 (some (odd) name) S 1 4242 4242 0 -1 4194560 100 0 0 0 0 0 0 0 20 0 1 0 \(start) 1000 10 18446744073709551615\n"
        }

        @Test("Same start time: the snapshot stays (an exited or unchanged process); another start time: maps are read again")
        func reusedPid() throws {
            let root = NSTemporaryDirectory() + "tp-fakeproc-\(getpid())"
            try FileManager.default.createDirectory(atPath: root + "/4242", withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(atPath: root) }
            func write(_ name: String, _ text: String) throws { try text.write(toFile: "\(root)/4242/\(name)", atomically: true, encoding: .utf8) }
            try write("maps", Self.mapsLine("/bin/ls"))
            try write("stat", Self.statLine(start: 100))
            let clock = SymbolizerClock()
            let symbolizer = UserSymbolizer(procRoot: root, maxCacheBytes: 64 << 20, maxProcesses: 16, retention: 600, clock: { clock.now })
            #expect(symbolizer.startTime(4242) == 100, "the comm's spaces and parentheses do not shift the fields")
            let ip: UInt64 = 0x5555_0000_000 + 0x100
            #expect(symbolizer.symbolize(tgid: 4242, ips: [ip]).first?.module == "/bin/ls")

            // The same process (same start time) maps something else at that address: the
            // address is still inside a known mapping, so the snapshot stands.
            try write("maps", Self.mapsLine("/bin/cat"))
            clock.advance(2)
            #expect(symbolizer.symbolize(tgid: 4242, ips: [ip]).first?.module == "/bin/ls")

            // Another process with the pid: a new snapshot.
            try write("stat", Self.statLine(start: 200))
            clock.advance(2)
            #expect(symbolizer.symbolize(tgid: 4242, ips: [ip]).first?.module == "/bin/cat")

            // Gone (no stat, no maps): the last snapshot is kept.
            try FileManager.default.removeItem(atPath: "\(root)/4242/stat")
            try FileManager.default.removeItem(atPath: "\(root)/4242/maps")
            clock.advance(2)
            #expect(symbolizer.symbolize(tgid: 4242, ips: [ip]).first?.module == "/bin/cat")
        }
    }
}
