import CLibBPF

/// Syscall names and numbers of this architecture (from the uapi headers at build time).
public enum SyscallTable {
    public static func number(of name: String) -> Int? {
        let nr = tp_syscall_number(name)
        return nr < 0 ? nil : nr
    }
}
