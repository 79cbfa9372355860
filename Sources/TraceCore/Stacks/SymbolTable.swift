/// Symbols sorted by address, their names NUL-terminated in one byte blob.
///
/// The storage is a handful of flat arrays (no object or `String` per symbol), so a
/// kernel's couple of hundred thousand symbols fit in a few megabytes.
struct SymbolTable: Sendable {
    /// Start addresses, ascending, at most one symbol per address.
    let addresses: [UInt64]
    /// Sizes (0 when unknown); empty when the source has no sizes (kallsyms).
    let sizes: [UInt32]
    /// Where each name starts in `names`.
    let nameOffsets: [UInt32]
    /// Index into `moduleNames` for each symbol; empty when all symbols share one module.
    let modules: [UInt16]
    let moduleNames: [String]
    let names: [UInt8]

    static let empty = SymbolTable(addresses: [], sizes: [], nameOffsets: [], modules: [], moduleNames: [], names: [])

    var count: Int { addresses.count }

    /// What the arrays hold, for cache accounting (counts, not capacities, so the same
    /// file always weighs the same).
    var estimatedBytes: Int {
        addresses.count * 8 + sizes.count * 4 + nameOffsets.count * 4 + modules.count * 2 + names.count
            + moduleNames.reduce(0) { $0 + $1.utf8.count + 16 }
    }

    /// The symbol with the greatest address ≤ `address`, nil when `address` is before the
    /// first one.
    func index(containing address: UInt64) -> Int? {
        var low = 0
        var high = addresses.count
        addresses.withUnsafeBufferPointer { a in
            while low < high {
                let mid = (low + high) >> 1
                if a[mid] <= address { low = mid + 1 } else { high = mid }
            }
        }
        return low == 0 ? nil : low - 1
    }

    func size(at index: Int) -> UInt64 { sizes.isEmpty ? 0 : UInt64(sizes[index]) }

    func module(at index: Int) -> Int { modules.isEmpty ? 0 : Int(modules[index]) }

    /// The stored (mangled) name.
    func rawName(at index: Int) -> String {
        names.withUnsafeBufferPointer { blob in
            let start = Int(nameOffsets[index])
            var end = start
            while end < blob.count, blob[end] != 0 { end += 1 }
            return String(decoding: UnsafeBufferPointer(rebasing: blob[start..<end]), as: UTF8.self)
        }
    }

    /// The name, demangled when it is a Swift or C++ one.
    func name(at index: Int) -> String {
        let start = Int(nameOffsets[index])
        let mangled = names.withUnsafeBufferPointer { Demangler.looksMangled(UnsafeBufferPointer(rebasing: $0[start...])) }
        let raw = rawName(at: index)
        return mangled ? Demangler.demangle(raw) : raw
    }
}

/// Collects symbols in any order, then sorts them into a `SymbolTable`.
///
/// Where several symbols share an address, the one with the lowest rank is kept (a caller
/// ranks global before weak before local, then fewer leading underscores; ties keep the
/// first appended).
struct SymbolTableBuilder {
    private var addresses: [UInt64] = []
    private var sizes: [UInt32] = []
    private var nameOffsets: [UInt32] = []
    private var modules: [UInt16] = []
    private var ranks: [UInt8] = []
    private var names: [UInt8] = []
    private var moduleNames: [String] = []
    private var moduleIndex: [String: UInt16] = [:]
    private let withSizes: Bool
    private let withModules: Bool

    init(withSizes: Bool, withModules: Bool, expectedCount: Int = 0, expectedNameBytes: Int = 0) {
        self.withSizes = withSizes
        self.withModules = withModules
        addresses.reserveCapacity(expectedCount)
        nameOffsets.reserveCapacity(expectedCount)
        ranks.reserveCapacity(expectedCount)
        if withSizes { sizes.reserveCapacity(expectedCount) }
        if withModules { modules.reserveCapacity(expectedCount) }
        names.reserveCapacity(expectedNameBytes)
    }

    var count: Int { addresses.count }

    /// The index of module `name`, adding it on first use.
    mutating func module(named name: String) -> UInt16 {
        if let index = moduleIndex[name] { return index }
        precondition(moduleNames.count < Int(UInt16.max), "a symbol table holds at most 65535 module names")
        let index = UInt16(moduleNames.count)
        moduleNames.append(name)
        moduleIndex[name] = index
        return index
    }

    /// Appends one symbol; `name` is copied into the blob.
    mutating func append(address: UInt64, size: UInt64 = 0, name: UnsafeRawBufferPointer, module: UInt16 = 0, rank: UInt8 = 0) {
        addresses.append(address)
        nameOffsets.append(UInt32(truncatingIfNeeded: names.count))
        names.append(contentsOf: name)
        names.append(0)
        ranks.append(rank)
        if withSizes { sizes.append(size <= UInt64(UInt32.max) ? UInt32(size) : 0) }
        if withModules { modules.append(module) }
    }

    /// Leading underscores of a name, capped, for ranking.
    static func underscores(_ name: UnsafeRawBufferPointer) -> UInt8 {
        var n: UInt8 = 0
        for byte in name {
            guard byte == UInt8(ascii: "_"), n < 3 else { break }
            n += 1
        }
        return n
    }

    func build() -> SymbolTable {
        precondition(names.count <= Int(UInt32.max), "symbol names exceed the 4 GiB a table can address")
        let n = addresses.count
        var order = [Int32](unsafeUninitializedCapacity: n) { buffer, initialized in
            for i in 0..<n { buffer[i] = Int32(i) }
            initialized = n
        }
        addresses.withUnsafeBufferPointer { a in
            ranks.withUnsafeBufferPointer { r in
                order.sort { x, y in
                    let ax = a[Int(x)], ay = a[Int(y)]
                    if ax != ay { return ax < ay }
                    let rx = r[Int(x)], ry = r[Int(y)]
                    if rx != ry { return rx < ry }
                    return x < y
                }
            }
        }
        var outAddresses: [UInt64] = []
        var outOffsets: [UInt32] = []
        var outSizes: [UInt32] = []
        var outModules: [UInt16] = []
        var outNames: [UInt8] = []
        outNames.reserveCapacity(names.count)
        outAddresses.reserveCapacity(n)
        outOffsets.reserveCapacity(n)
        if withSizes { outSizes.reserveCapacity(n) }
        if withModules { outModules.reserveCapacity(n) }
        for i in order {
            let index = Int(i)
            let address = addresses[index]
            if let last = outAddresses.last, last == address { continue }
            outAddresses.append(address)
            outOffsets.append(UInt32(truncatingIfNeeded: outNames.count))
            var at = Int(nameOffsets[index])
            while names[at] != 0 {
                outNames.append(names[at])
                at += 1
            }
            outNames.append(0)
            if withSizes { outSizes.append(sizes[index]) }
            if withModules { outModules.append(modules[index]) }
        }
        return SymbolTable(addresses: outAddresses, sizes: outSizes, nameOffsets: outOffsets, modules: outModules,
                           moduleNames: moduleNames, names: outNames)
    }
}
