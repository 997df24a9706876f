import CFarMemSys

/// A verifiable fill: every 8-byte word of page p holds a value derived from
/// (seed, p, word). A page served stale, misplaced, zeroed or torn fails
/// verification, and the failing word says which.
public struct PagePattern: Sendable {
    public let seed: UInt64
    public init(seed: UInt64) { self.seed = seed }

    @inline(__always)
    public func word(page: Int, index: Int) -> UInt64 {
        var x = seed &+ UInt64(page) &* 0x9E37_79B9_7F4A_7C15 &+ UInt64(index) &* 0xBF58_476D_1CE4_E5B9
        x = (x ^ (x >> 31)) &* 0x94D0_49BB_1331_11EB
        return x ^ (x >> 29) | 1   // never zero, so a zero page never verifies
    }

    /// Writes page `page` at `address`; returns the latency of the first store
    /// (the one that faults when the page is not resident).
    @inline(__always)
    public func write(page: Int, at address: UnsafeMutableRawPointer) -> UInt64 {
        let words = address.assumingMemoryBound(to: UInt64.self)
        let t0 = fm_now_ns()
        words[0] = word(page: page, index: 0)
        let latency = fm_now_ns() &- t0
        for i in 1..<512 { words[i] = word(page: page, index: i) }
        return latency
    }

    /// Checks page `page`; returns the first-load latency, or nil on a mismatch.
    @inline(__always)
    public func verify(page: Int, at address: UnsafeRawPointer) -> (latency: UInt64, ok: Bool) {
        let words = address.assumingMemoryBound(to: UInt64.self)
        let t0 = fm_now_ns()
        let first = words[0]
        let latency = fm_now_ns() &- t0
        var ok = first == word(page: page, index: 0)
        for i in 1..<512 where words[i] != word(page: page, index: i) { ok = false }
        return (latency, ok)
    }
}

/// A latency sample set with exact percentiles (the demo's and tests' own
/// measurements; the library's histogram is separate).
public struct LatencySamples: Sendable {
    public private(set) var values: [UInt64] = []
    public init() {}
    public mutating func add(_ ns: UInt64) { values.append(ns) }
    public mutating func add(contentsOf other: LatencySamples) { values.append(contentsOf: other.values) }
    public func percentile(_ p: Double) -> UInt64 {
        guard !values.isEmpty else { return 0 }
        let sorted = values.sorted()
        let rank = min(sorted.count - 1, max(0, Int((p / 100 * Double(sorted.count)).rounded(.up)) - 1))
        return sorted[rank]
    }
    public var count: Int { values.count }
}

/// Renders nanoseconds as microseconds with one decimal.
public func microseconds(_ ns: UInt64) -> String {
    let tenths = (ns + 50) / 100
    return "\(tenths / 10).\(tenths % 10) us"
}
