import ArgumentParser
import Foundation
import Glibc
import TraceCore

struct Cleanup: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Remove every probe and shared hook pinned by `serve --pin-dir` (they detach once unpinned).",
        discussion: "Refused while an agent uses the directory (it holds the directory's lock): its pinned probes would be detached under it.")

    @Option(help: "The pin directory (on bpffs) that `serve --pin-dir` used.")
    var pinDir: String = "/sys/fs/bpf/traceplane"

    @Option(help: "The state directory of that agent: its pin manifests (<state-dir>/pins) are removed too.")
    var stateDir: String?

    func run() throws {
        var root = pinDir
        while root.count > 1 && root.hasSuffix("/") { root.removeLast() }
        var removed = 0
        if access(root, F_OK) != 0 {
            print("nothing pinned: \(root) does not exist")
        } else {
            do { try PinStore.checkFileSystem(root, mountMissing: false) } catch {
                throw StartupError("refusing to clean up: \(error)")
            }
            // An agent running on it holds its lock: its probes would be detached under it.
            let lock: Int32
            do { lock = try PinStore.lock(root) } catch {
                throw StartupError("refusing to clean up: \(error); stop that agent first (its DELETEs unpin too)")
            }
            defer { close(lock) }
            let entries = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? []).sorted()
            for entry in entries {
                let gone = PinStore.removeTree("\(root)/\(entry)")
                let what = entry.hasPrefix("_hub-") ? "shared hook \(entry.dropFirst(5))" : "probe \(PinName.unescaped(entry))"
                print("removed \(what): \(gone.count) pinned entries")
                removed += 1
            }
            _ = rmdir(root)
            if entries.isEmpty { print("nothing pinned in \(root)") }
            let left = ((try? FileManager.default.contentsOfDirectory(atPath: root)) ?? [])
            if !left.isEmpty { throw StartupError("could not remove everything under \(root): \(left.joined(separator: ", ")) left") }
        }
        if let stateDir {
            let manifests = "\(stateDir)/pins"
            for file in ((try? FileManager.default.contentsOfDirectory(atPath: manifests)) ?? []).sorted() where file.hasSuffix(".json") {
                if unlink("\(manifests)/\(file)") == 0 { print("removed manifest \(manifests)/\(file)") }
            }
        }
        if removed > 0 { print("removed \(removed) pinned \(removed == 1 ? "object" : "objects") from \(root)") }
    }
}
