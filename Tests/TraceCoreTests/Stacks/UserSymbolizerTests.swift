import Foundation
import Glibc
import Synchronization
import Testing
@testable import TraceCore
import TraceCoreTestSupport

extension StacksTests {
    @Suite("Stacks: user-space symbolization from /proc/PID/maps and ELF files")
    struct UserSymbolizerTests {
        @Test("libc's getppid (found by dlsym) names getppid in libc, at the address nm -D lists; +4 bytes is getppid+4")
        func libcFunction() throws {
            let address = try #require(StackTestSupport.address(of: "getppid"))
            let frames = UserSymbolizer().symbolize(tgid: UInt32(getpid()), ips: [address, address + 4])
            #expect(frames.map(\.symbol) == ["getppid", "getppid"])
            #expect(frames.map(\.offset) == [0, 4])
            let module = try #require(frames.first?.module)
            #expect(module.hasSuffix("/libc.so.6"))
            let listed = try #require(StackTestSupport.nmValue(of: "getppid", in: module, dynamic: true), "nm -D (binutils) lists getppid")
            #expect(StackTestSupport.vaddr(of: address) == listed)
        }

        @Test("A function of the test binary itself names that function")
        func testBinaryFunction() throws {
            let address = StackTestSupport.probeFunctionAddress
            #expect(traceplaneStacksProbeFunction(1) == 38)
            let frame = try #require(UserSymbolizer().symbolize(tgid: UInt32(getpid()), ips: [address + 1]).first)
            #expect(frame.symbol == "traceplane_stacks_probe_function")
            #expect(frame.offset == 1)
            let executable = try FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")
            #expect(frame.module == executable)
            let listed = try #require(StackTestSupport.nmValue(of: "traceplane_stacks_probe_function", in: executable, dynamic: false))
            #expect(StackTestSupport.vaddr(of: address) == listed, "nm puts the function where we took its address")
        }

        @Test("An exited process still symbolizes from its observed mappings: getppid inside /bin/sleep's libc")
        func exitedProcess() throws {
            let ownAddress = try #require(StackTestSupport.address(of: "getppid"))
            let ownLibc = try #require(StackTestSupport.ownMapping(of: ownAddress))
            let fileOffset = ownAddress - ownLibc.start + ownLibc.offset

            let child = Process()
            child.executableURL = URL(fileURLWithPath: "/bin/sleep")
            child.arguments = ["0.2"]
            try child.run()
            let pid = child.processIdentifier
            let deadline = Date().addingTimeInterval(2)
            var childLibc: Mapping?
            while childLibc == nil, Date() < deadline {
                childLibc = StackTestSupport.mappings(pid).first {
                    $0.device == ownLibc.device && $0.inode == ownLibc.inode && fileOffset >= $0.offset && fileOffset - $0.offset < $0.end - $0.start
                }
                if childLibc == nil { Thread.sleep(forTimeInterval: 0.005) }
            }
            let mapping = try #require(childLibc, "sleep's libc text mapping never appeared")
            let ip = mapping.start + fileOffset - mapping.offset

            let symbolizer = UserSymbolizer()
            symbolizer.observe(tgid: UInt32(pid))
            #expect(symbolizer.cacheBytes > 0)
            child.waitUntilExit()
            #expect(kill(pid, 0) == -1 && errno == ESRCH, "the child is gone")

            let frames = symbolizer.symbolize(tgid: UInt32(pid), ips: [ip, ip + 2])
            #expect(frames.map(\.symbol) == ["getppid", "getppid"])
            #expect(frames.first?.module == mapping.module)
        }

        @Test("Snapshots of exited processes go after the retention time; a bounded count keeps the most recently seen")
        func retention() throws {
            let address = try #require(StackTestSupport.address(of: "getppid"))
            let clock = SymbolizerClock()
            let symbolizer = UserSymbolizer(procRoot: "/proc", maxCacheBytes: 64 << 20, maxProcesses: 2, retention: 600, clock: { clock.now })
            let me = UInt32(getpid())
            #expect(symbolizer.symbolize(tgid: me, ips: [address]).first?.symbol == "getppid")
            #expect(symbolizer.processCount == 1)
            clock.advance(601)
            _ = symbolizer.symbolize(tgid: 0x7fff_fff0, ips: [address])
            #expect(symbolizer.processCount == 1, "this process was not seen for 601 s; the nonexistent one is remembered as having no mappings")
            #expect(symbolizer.symbolize(tgid: 0x7fff_fff0, ips: [address]).first?.module == "[unknown]")

            let parent = UInt32(getppid())
            _ = symbolizer.symbolize(tgid: me, ips: [address])
            clock.advance(1)
            _ = symbolizer.symbolize(tgid: parent, ips: [address])
            clock.advance(1)
            _ = symbolizer.symbolize(tgid: 1, ips: [address])
            #expect(symbolizer.processCount == 2)
        }

        @Test("An ip outside every mapping is [unknown] with the ip as offset; a new mapping is found by reading maps again")
        func unmappedAndNewMapping() throws {
            let clock = SymbolizerClock()
            let symbolizer = UserSymbolizer(procRoot: "/proc", maxCacheBytes: 64 << 20, maxProcesses: 16, retention: 600, clock: { clock.now })
            let me = UInt32(getpid())
            let unknown = try #require(symbolizer.symbolize(tgid: me, ips: [0x10]).first)
            #expect(unknown.module == "[unknown]")
            #expect(unknown.text == "[unknown] [unknown]+0x10")

            let size = 4096
            let region = try #require(mmap(nil, size, PROT_READ | PROT_EXEC, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
            #expect(region != UnsafeMutableRawPointer(bitPattern: -1))
            defer { munmap(region, size) }
            let ip = UInt64(UInt(bitPattern: region)) + 0x20
            #expect(symbolizer.symbolize(tgid: me, ips: [ip]).first?.module == "[unknown]", "maps were read less than a second ago")
            clock.advance(1)
            let frame = try #require(symbolizer.symbolize(tgid: me, ips: [ip]).first)
            #expect(frame.module == "[anon]")
            #expect(frame.symbol == nil)
            #expect(frame.offset == 0x20)
        }

        @Test("A vDSO address is [vdso] and names the vDSO's own symbols")
        func vdso() throws {
            let maps = StackTestSupport.mappings(getpid())
            let mapping = try #require(maps.first { $0.kind == .vdso })
            let image = try #require(ELFImage.parse(UnsafeRawBufferPointer(start: UnsafeRawPointer(bitPattern: UInt(mapping.start)),
                                                                         count: Int(mapping.end - mapping.start))))
            #expect(image.symbols.count > 0)
            let index = image.symbols.count - 1
            let ip = try #require(StackTestSupport.address(ofVaddr: image.symbols.addresses[index], image: image, mapping: mapping))
            let frame = try #require(UserSymbolizer().symbolize(tgid: UInt32(getpid()), ips: [ip]).first)
            #expect(frame.module == "[vdso]")
            #expect(frame.symbol == image.symbols.rawName(at: index))
        }

        @Test("The ELF cache stays under its byte bound, least recently used out first; an evicted file of a live process loads again")
        func lruBound() throws {
            let me = UInt32(getpid())
            let libc = try #require(StackTestSupport.address(of: "getppid"))
            let own = StackTestSupport.probeFunctionAddress

            let measureLibc = UserSymbolizer()
            _ = measureLibc.symbolize(tgid: me, ips: [libc])
            let libcBytes = measureLibc.cacheBytes
            let measureOwn = UserSymbolizer()
            _ = measureOwn.symbolize(tgid: me, ips: [own])
            let ownBytes = measureOwn.cacheBytes
            #expect(libcBytes > 0 && ownBytes > 0)

            let bounded = UserSymbolizer(procRoot: "/proc", maxCacheBytes: max(libcBytes, ownBytes))
            _ = bounded.symbolize(tgid: me, ips: [libc])
            #expect(bounded.cacheBytes == libcBytes)
            #expect(bounded.symbolize(tgid: me, ips: [own]).first?.symbol == "traceplane_stacks_probe_function")
            #expect(bounded.cacheBytes == ownBytes, "libc was evicted to make room")
            #expect(bounded.symbolize(tgid: me, ips: [libc]).first?.symbol == "getppid")
            #expect(bounded.cacheBytes == libcBytes)

            let tiny = UserSymbolizer(procRoot: "/proc", maxCacheBytes: 1)
            #expect(tiny.symbolize(tgid: me, ips: [libc]).first?.symbol == "getppid", "an image over the bound still serves its lookup")
            #expect(tiny.cacheBytes == libcBytes, "and stays, alone (parsing it again for every stack would cost more)")
            _ = tiny.symbolize(tgid: me, ips: [own])
            #expect(tiny.cacheBytes == ownBytes, "the next one takes its place")
        }

        @Test("Threads symbolizing at once (kernel and user, one shared cache) all get the names")
        func concurrentUse() throws {
            let libc = try #require(StackTestSupport.address(of: "getppid"))
            let own = StackTestSupport.probeFunctionAddress
            let user = UserSymbolizer()
            let kernel = KernelSymbolizer(kallsymsText: KernelSymbolizerTests.synthetic)
            let wrong = Mutex(0)
            DispatchQueue.concurrentPerform(iterations: 8) { _ in
                for _ in 0..<200 {
                    let names = user.symbolize(tgid: UInt32(getpid()), ips: [libc, own]).map(\.symbol)
                    let kernelNames = kernel.symbolize([0xffff_ffff_8100_0001]).map(\.symbol)
                    if names != ["getppid", "traceplane_stacks_probe_function"] || kernelNames != ["first"] { wrong.withLock { $0 += 1 } }
                }
            }
            #expect(wrong.withLock { $0 } == 0)
        }

        @Test("The GNU build id of /bin/ls matches readelf -n")
        func buildID() throws {
            let readelf = try #require(StackTestSupport.run("/usr/bin/readelf", ["-n", "/bin/ls"]), "readelf (binutils) is needed")
            let line = try #require(readelf.split(separator: "\n").first { $0.contains("Build ID:") })
            let expected = String(line.split(separator: ":").last ?? "").trimmingCharacters(in: .whitespaces)
            let (image, _) = try #require(ELFImage.load(path: "/bin/ls"))
            #expect(image.buildIDHex == expected)
            #expect(image.symbols.count > 0, "/bin/ls has dynamic function symbols")
            #expect(!image.segments.isEmpty)
        }

        @Test("Files that are not ELF64 little-endian do not parse")
        func notELF() {
            #expect(ELFImage.load(path: "/etc/hostname") == nil)
            #expect(ELFImage.load(path: "/nonexistent") == nil)
            let truncated = [UInt8]([0x7F, 0x45, 0x4C, 0x46, 2, 1] + [UInt8](repeating: 0xFF, count: 58))
            truncated.withUnsafeBytes { bytes in
                let image = ELFImage.parse(bytes)
                #expect(image?.symbols.count ?? 0 == 0, "wild offsets are ignored, not followed")
            }
        }

        @Test("maps lines: only executable ones are kept; deleted files, spaces in paths, [vdso], anonymous and named areas")
        func mapsParsing() {
            let text = """
                00400000-00452000 r-xp 00000000 08:02 173521      /usr/bin/dbus-daemon
                00651000-00652000 r--p 00051000 08:02 173521      /usr/bin/dbus-daemon
                7f0000000000-7f0000001000 r-xp 00001000 fe:01 42     /tmp/my lib.so (deleted)
                7f0000002000-7f0000003000 rwxp 00000000 00:00 0
                7f0000004000-7f0000005000 r-xp 00000000 00:00 0      [anon:jit]
                7ffd00000000-7ffd00002000 r-xp 00000000 00:00 0      [vdso]
                ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
                """
            let maps = ProcessMaps.parse(Array(text.utf8))
            #expect(maps.map(\.module) == ["/usr/bin/dbus-daemon", "/tmp/my lib.so (deleted)", "[anon]", "[anon]", "[vdso]", "[vsyscall]"])
            #expect(maps[1].offset == 0x1000 && maps[1].inode == 42 && maps[1].mapFilesName == "7f0000000000-7f0000001000")
            #expect(ProcessMaps.index(of: 0x7f00_0000_0fff, in: maps) == 1)
            #expect(ProcessMaps.index(of: 0x7f00_0000_1000, in: maps) == nil)
            let frame = UserSymbolizer.frame(0x7f00_0000_0010, mapping: maps[1], image: nil)
            #expect(frame.text == "[unknown] /tmp/my lib.so (deleted)+0x1010", "without symbols the offset is the file offset")
        }
    }
}
