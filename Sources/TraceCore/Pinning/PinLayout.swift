/// The version of the map layouts that pinned probes carry across agent restarts.
///
/// An agent adopts pinned maps only when their manifest names this version: its programs
/// and readers then agree with the pinned programs on every map's keys and values. Bump
/// ``version`` whenever a map layout in `bpf/include/traceplane/*.h` changes, and set
/// ``headerDigest`` to the digest the unit test `PinLayoutTests` prints: the test fails
/// while the digest of the headers differs from the one recorded here, so a layout change
/// cannot land without a decision about this constant.
public enum PinLayout {
    #if TRACEPLANE_LAYOUT_BUMP_TEST
    /// A build for the upgrade test (`-Xswiftc -DTRACEPLANE_LAYOUT_BUMP_TEST`): another layout.
    public static let version = 1_001
    #else
    public static let version = 1
    #endif

    /// FNV-1a (64 bits) over the bytes of `bpf/include/traceplane/*.h`, in file name order,
    /// when ``version`` was last set.
    public static let headerDigest: UInt64 = 0x6887_0a8a_1954_3a61

    /// FNV-1a (64 bits) of `files`' bytes, one after another.
    public static func digest(_ files: [[UInt8]]) -> UInt64 {
        var hash: UInt64 = 0xcbf2_9ce4_8422_2325
        for bytes in files {
            for byte in bytes {
                hash ^= UInt64(byte)
                hash = hash &* 0x0000_0100_0000_01b3
            }
        }
        return hash
    }
}
