/// One symbolized frame of a kernel or user stack.
public struct StackFrame: Sendable, Hashable {
    /// The demangled function name; nil when unknown.
    public var symbol: String?
    /// Where the address lies: `[kernel]`, a kernel module as `[ext4]`, the path of an ELF
    /// file as the process mapped it, `[vdso]`, `[anon]` for anonymous memory, another
    /// bracketed special mapping (`[heap]`, `[stack]`), or `[unknown]` outside every mapping.
    public var module: String
    /// The distance of `address` from the symbol's start; without a symbol, from the
    /// module's start (the file offset for an ELF file, the address itself for an address
    /// outside every known module).
    public var offset: UInt64
    /// The instruction pointer as the stack recorded it.
    public var address: UInt64

    public init(symbol: String?, module: String, offset: UInt64, address: UInt64) {
        self.symbol = symbol
        self.module = module
        self.offset = offset
        self.address = address
    }

    /// What a flame graph shows: the symbol, or `[unknown] <module>+0x<offset>` (for
    /// example `[unknown] /usr/bin/foo+0x1a2b`).
    public var text: String {
        symbol ?? "[unknown] \(module)+0x\(String(offset, radix: 16))"
    }
}
