import Foundation

/// The BPF objects compiled from `bpf/*.bpf.c` at build time, by name (the file stem).
public enum BPFObjects {
    /// The ELF bytes of the object compiled from `bpf/<name>.bpf.c`.
    ///
    /// A missing name is a programming error: the set of objects is fixed at build time.
    public static func bytes(_ name: String) -> [UInt8] {
        guard let encoded = embeddedBPFObjects[name], let data = Data(base64Encoded: encoded) else {
            preconditionFailure("No BPF object named \(name) was built from bpf/\(name).bpf.c.")
        }
        return [UInt8](data)
    }

    /// Names of every embedded object.
    public static var names: [String] { embeddedBPFObjects.keys.sorted() }
}
