import Glibc
import Synchronization

/// Turns Swift and C++ mangled symbol names into readable ones.
///
/// Swift names (`$s`, `_$s`, `$S`, `_T0`) go through the Swift runtime's `swift_demangle`,
/// C++ names (`_Z`) through `__cxa_demangle` (this process's, else libstdc++'s). Results
/// are cached (a bounded number of entries); a name neither can read comes back unchanged.
public enum Demangler {
    /// The readable form of `name`, or `name` itself when it is not a mangled name either
    /// demangler understands.
    public static func demangle(_ name: String) -> String {
        // A longer name is no real symbol; the demanglers recurse on what they read.
        guard name.utf8.count <= maxInputBytes else { return name }
        var contiguous = name
        guard let kind = contiguous.withUTF8({ scheme(of: UnsafeRawBufferPointer($0)) }) else { return name }
        if let cached = cache.withLock({ $0.entries[name] }) { return cached }
        var readable = (kind == .swift ? swift(name) : cxx(name)) ?? name
        if readable.utf8.count > maxOutputBytes { readable = String(readable.utf8.prefix(maxOutputBytes)) ?? name }
        let bytes = name.utf8.count + readable.utf8.count
        cache.withLock { cache in
            if cache.entries.count >= cacheLimit || cache.bytes + bytes > cacheBytes {
                cache.entries.removeAll(keepingCapacity: true)
                cache.bytes = 0
            }
            cache.entries[name] = readable
            cache.bytes += bytes
        }
        return readable
    }

    /// Whether the NUL- or end-terminated bytes start like a mangled name.
    static func looksMangled(_ bytes: UnsafeBufferPointer<UInt8>) -> Bool {
        scheme(of: UnsafeRawBufferPointer(bytes)) != nil
    }

    /// How many results the cache keeps, and in how many bytes, before it starts over.
    static let cacheLimit = 1 << 16
    static let cacheBytes = 16 << 20
    /// Names longer than this are not demangled; readable forms are cut at `maxOutputBytes`.
    static let maxInputBytes = 1024
    static let maxOutputBytes = 4096

    enum Scheme { case swift, cxx }

    private static func scheme(of bytes: UnsafeRawBufferPointer) -> Scheme? {
        func at(_ i: Int) -> UInt8 { i < bytes.count ? bytes[i] : 0 }
        let (b0, b1, b2) = (at(0), at(1), at(2))
        let dollar = UInt8(ascii: "$"), underscore = UInt8(ascii: "_")
        if b0 == dollar, b1 == UInt8(ascii: "s") || b1 == UInt8(ascii: "S") { return .swift }
        if b0 == underscore, b1 == dollar, b2 == UInt8(ascii: "s") || b2 == UInt8(ascii: "S") { return .swift }
        if b0 == underscore, b1 == UInt8(ascii: "T"), b2 == UInt8(ascii: "0") { return .swift }
        if b0 == underscore, b1 == UInt8(ascii: "Z") { return .cxx }
        return nil
    }

    private static let cache = Mutex<(entries: [String: String], bytes: Int)>(([:], 0))

    private typealias SwiftDemangle = @convention(c) (
        UnsafePointer<CChar>?, Int, UnsafeMutablePointer<CChar>?, UnsafeMutablePointer<Int>?, UInt32
    ) -> UnsafeMutablePointer<CChar>?
    private typealias CxaDemangle = @convention(c) (
        UnsafePointer<CChar>?, UnsafeMutablePointer<CChar>?, UnsafeMutablePointer<Int>?, UnsafeMutablePointer<Int32>?
    ) -> UnsafeMutablePointer<CChar>?

    /// The functions are looked up once; glibc's RTLD_DEFAULT is the null handle.
    private static let swiftDemangle: SwiftDemangle? = dlsym(nil, "swift_demangle").map { unsafeBitCast($0, to: SwiftDemangle.self) }

    private static let cxaDemangle: CxaDemangle? = {
        if let symbol = dlsym(nil, "__cxa_demangle") { return unsafeBitCast(symbol, to: CxaDemangle.self) }
        guard let handle = dlopen("libstdc++.so.6", RTLD_NOW | RTLD_LOCAL),
              let symbol = dlsym(handle, "__cxa_demangle") else { return nil }
        return unsafeBitCast(symbol, to: CxaDemangle.self)
    }()

    private static func swift(_ name: String) -> String? {
        guard let swiftDemangle else { return nil }
        return name.withCString { mangled in
            guard let out = swiftDemangle(mangled, strlen(mangled), nil, nil, 0) else { return nil }
            defer { free(out) }
            let text = String(cString: out)
            return text.isEmpty ? nil : text
        }
    }

    private static func cxx(_ name: String) -> String? {
        guard let cxaDemangle else { return nil }
        return name.withCString { mangled in
            var status: Int32 = -1
            guard let out = cxaDemangle(mangled, nil, nil, &status) else { return nil }
            defer { free(out) }
            return status == 0 ? String(cString: out) : nil
        }
    }
}
