import Testing
@testable import TraceCore

extension StacksTests {
    @Suite("Stacks: demangling and frame text")
    struct DemanglerTests {
        @Test("Swift names go through the runtime's swift_demangle, in every prefix it knows")
        func swiftNames() {
            #expect(Demangler.demangle("$sSi") == "Swift.Int")
            #expect(Demangler.demangle("_$sSi") == "Swift.Int")
            #expect(Demangler.demangle("$sSS") == "Swift.String")
        }

        @Test("C++ names go through __cxa_demangle")
        func cxxNames() {
            #expect(Demangler.demangle("_ZN3foo3barEv") == "foo::bar()")
            #expect(Demangler.demangle("_ZN3foo3barEv") == "foo::bar()", "the cached answer is the same")
        }

        @Test("Plain C names, and mangled-looking names no demangler accepts, come back unchanged")
        func unchanged() {
            #expect(Demangler.demangle("getppid") == "getppid")
            #expect(Demangler.demangle("_Z") == "_Z")
            #expect(Demangler.demangle("$sNotReallyAThing!!") == "$sNotReallyAThing!!")
            #expect(Demangler.demangle("") == "")
        }

        @Test("A frame without a symbol reads [unknown] module+0xoffset; with one, the symbol")
        func frameText() {
            #expect(StackFrame(symbol: nil, module: "/usr/bin/foo", offset: 0x1a2b, address: 0x5555_5555_1a2b).text == "[unknown] /usr/bin/foo+0x1a2b")
            #expect(StackFrame(symbol: nil, module: "[vdso]", offset: 0, address: 1).text == "[unknown] [vdso]+0x0")
            #expect(StackFrame(symbol: "foo::bar()", module: "/usr/bin/foo", offset: 3, address: 2).text == "foo::bar()")
        }

        @Test("Table lookups demangle: a Swift symbol stored mangled is shown demangled")
        func tableDemangles() {
            let frames = KernelSymbolizer(kallsymsText: "ffffffff81000000 T $sSi\nffffffff81000100 T _ZN3foo3barEv\n").symbolize([0xffff_ffff_8100_0001, 0xffff_ffff_8100_0101])
            #expect(frames.map(\.symbol) == ["Swift.Int", "foo::bar()"])
        }
    }
}
