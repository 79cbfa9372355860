import Foundation
import Testing
@testable import TraceCore
import TraceCoreTestSupport

extension StacksTests {
    @Suite("Stacks: kernel symbolization from kallsyms")
    struct KernelSymbolizerTests {
        static let synthetic = """
            ffffffff81000100 T second
            ffffffff81000000 t _first_alias
            ffffffff81000000 T first
            ffffffff81000200 d data_symbol
            ffffffff81000300 W weak_one
            ffffffff81000000 A absolute_symbol
            ffffffffc0002000 t other_module_function\t[xfs]
            ffffffffc0001100 T module_other\t[ext4]
            ffffffffc0001000 t module_function\t[ext4]

            garbage line
            """

        @Test("Unsorted kallsyms text sorts into one table; only text symbols count, and a global name wins a shared address")
        func parsesUnsortedText() {
            let symbolizer = KernelSymbolizer(kallsymsText: Self.synthetic)
            #expect(!symbolizer.restricted)
            let table = symbolizer.table
            #expect(table.count == 6)
            #expect(table.addresses == table.addresses.sorted())
            #expect(table.rawName(at: 0) == "first")
        }

        @Test("An ip gets the greatest symbol at or below it: exact starts, last byte before the next, data symbols skipped")
        func boundaries() {
            let frames = KernelSymbolizer(kallsymsText: Self.synthetic).symbolize([
                0xffff_ffff_8100_0000, 0xffff_ffff_8100_00ff, 0xffff_ffff_8100_0100, 0xffff_ffff_8100_0250, 0xffff_ffff_8100_0300,
            ])
            #expect(frames.map(\.text) == ["first", "first", "second", "second", "weak_one"])
            #expect(frames.map(\.offset) == [0, 0xff, 0, 0x150, 0])
            #expect(frames.allSatisfy { $0.module == "[kernel]" })
        }

        @Test("Module symbols carry [module]; after the last symbol of a module the nearest one still answers")
        func modules() {
            let frames = KernelSymbolizer(kallsymsText: Self.synthetic).symbolize([0xffff_ffff_c000_1050, 0xffff_ffff_c000_1100, 0xffff_ffff_c000_2010])
            #expect(frames.map(\.symbol) == ["module_function", "module_other", "other_module_function"])
            #expect(frames.map(\.module) == ["[ext4]", "[ext4]", "[xfs]"])
            #expect(frames[2].offset == 0x10)
        }

        @Test("An ip before the first symbol is unknown in [kernel] with the ip as offset; zero ips are skipped")
        func beforeFirstAndZero() {
            let frames = KernelSymbolizer(kallsymsText: Self.synthetic).symbolize([0, 0xffff_ffff_80ff_ffff, 0])
            #expect(frames.count == 1)
            #expect(frames[0].symbol == nil)
            #expect(frames[0].module == "[kernel]")
            #expect(frames[0].text == "[unknown] [kernel]+0xffffffff80ffffff")
        }

        @Test("All-zero addresses (kptr_restrict) mark the symbolizer restricted and leave every frame unknown")
        func restricted() {
            let symbolizer = KernelSymbolizer(kallsymsText: "0000000000000000 T _text\n0000000000000000 t helper\t[ext4]\n")
            #expect(symbolizer.restricted)
            let frames = symbolizer.symbolize([0xffff_ffff_8100_0000])
            #expect(frames.count == 1 && frames[0].symbol == nil)
        }

        @Test("Files that cannot be read give an empty, unrestricted table")
        func unreadable() {
            let symbolizer = KernelSymbolizer(kallsymsPath: "/nonexistent/kallsyms", modulesPath: "/nonexistent/modules")
            #expect(!symbolizer.restricted)
            #expect(symbolizer.symbolize([0xffff_ffff_8100_0000]).first?.symbol == nil)
        }

        @Test("A changed modules file reloads kallsyms (checked at most once a second)")
        func reloadsOnModuleChange() throws {
            let directory = URL(fileURLWithPath: NSTemporaryDirectory()).appendingPathComponent("kallsyms-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
            try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: directory) }
            let kallsyms = directory.appendingPathComponent("kallsyms"), modules = directory.appendingPathComponent("modules")
            try "ffffffff81000000 T first\n".write(to: kallsyms, atomically: true, encoding: .utf8)
            try "".write(to: modules, atomically: true, encoding: .utf8)
            let symbolizer = KernelSymbolizer(kallsymsPath: kallsyms.path, modulesPath: modules.path)
            #expect(symbolizer.symbolize([0xffff_ffff_c000_0010]).first?.symbol == "first")
            try "ffffffff81000000 T first\nffffffffc0000000 t loaded\t[newmod]\n".write(to: kallsyms, atomically: true, encoding: .utf8)
            try "newmod 16384 0 - Live 0xffffffffc0000000\n".write(to: modules, atomically: true, encoding: .utf8)
            #expect(symbolizer.symbolize([0xffff_ffff_c000_0010]).first?.symbol == "first", "modules are checked at most once a second")
            Thread.sleep(forTimeInterval: 1.1)
            let frame = symbolizer.symbolize([0xffff_ffff_c000_0010]).first
            #expect(frame?.symbol == "loaded")
            #expect(frame?.module == "[newmod]")
        }

        @Test("The real /proc/kallsyms: __schedule's address (read independently with grep) names __schedule; the table is compact",
              .enabled(if: RootRequirement.check("KernelSymbolizerTests.realKallsyms") || RootRequirement.mustRun, "needs root to read kallsyms addresses"))
        func realKallsyms() throws {
            #expect(RootRequirement.isRoot, "reading kallsyms addresses needs root (CI runs as root)")
            let grep = try #require(StackTestSupport.run("/bin/grep", ["-E", " [tT] __schedule$", "/proc/kallsyms"]), "grep found no __schedule")
            let address = try #require(UInt64(grep.split(separator: " ").first ?? "", radix: 16))
            let symbolizer = KernelSymbolizer()
            #expect(!symbolizer.restricted)
            let frames = symbolizer.symbolize([address, address + 1])
            #expect(frames.map(\.symbol) == ["__schedule", "__schedule"])
            #expect(frames.map(\.offset) == [0, 1])
            #expect(frames.allSatisfy { $0.module == "[kernel]" })

            let table = symbolizer.table
            let index = try #require(table.index(containing: address))
            #expect(table.addresses[index] == address)
            #expect(table.count > 10_000)
            #expect(table.estimatedBytes < 10 << 20, "\(table.count) symbols take \(table.estimatedBytes) bytes")
            print("kallsyms: \(table.count) distinct text symbol addresses in \(table.estimatedBytes) bytes, \(table.moduleNames.count) modules")
        }
    }
}
