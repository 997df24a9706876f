import CFarMemSys

/// A log-linear histogram of nanosecond latencies (16 sub-buckets per power of
/// two, so a percentile is within 6.25% of the true value). Recording is one
/// relaxed atomic add into preallocated memory: no allocation, no lock.
public final class LatencyHistogram: @unchecked Sendable {
    static let subBits = 4
    static let subCount = 1 << subBits
    static let bucketCount = 64 * subCount
    private let counts: UnsafeMutablePointer<UInt64>

    public init() {
        counts = .allocate(capacity: LatencyHistogram.bucketCount)
        counts.initialize(repeating: 0, count: LatencyHistogram.bucketCount)
    }

    deinit { counts.deallocate() }

    @inline(__always)
    static func bucket(of value: UInt64) -> Int {
        let v = max(value, 1)
        let magnitude = 63 - v.leadingZeroBitCount
        if magnitude < subBits { return Int(v) }
        let sub = Int((v >> UInt64(magnitude - subBits)) & UInt64(subCount - 1))
        return (magnitude - subBits + 1) * subCount + sub
    }

    /// The smallest value that falls in `bucket` (what percentiles report).
    static func lowerBound(of bucket: Int) -> UInt64 {
        if bucket < subCount { return UInt64(bucket) }
        let magnitude = bucket / subCount + subBits - 1
        let sub = UInt64(bucket % subCount)
        return (1 << UInt64(magnitude)) | (sub << UInt64(magnitude - subBits))
    }

    @inline(__always)
    public func record(nanoseconds: UInt64) {
        fm_atomic_add_u64(counts + LatencyHistogram.bucket(of: nanoseconds), 1)
    }

    public var count: UInt64 {
        (0..<LatencyHistogram.bucketCount).reduce(0) { $0 + fm_atomic_load_u64(counts + $1) }
    }

    /// The value at `percentile` (0...100), in nanoseconds; 0 when empty.
    public func value(atPercentile percentile: Double) -> UInt64 {
        let snapshot = (0..<LatencyHistogram.bucketCount).map { fm_atomic_load_u64(counts + $0) }
        let total = snapshot.reduce(0, +)
        guard total > 0 else { return 0 }
        let rank = max(1, UInt64((percentile / 100 * Double(total)).rounded(.up)))
        var seen: UInt64 = 0
        for (bucket, n) in snapshot.enumerated() {
            seen += n
            if seen >= rank { return LatencyHistogram.lowerBound(of: bucket) }
        }
        return LatencyHistogram.lowerBound(of: LatencyHistogram.bucketCount - 1)
    }

    public func reset() { counts.update(repeating: 0, count: LatencyHistogram.bucketCount) }

    /// For a Prometheus histogram: how many values were at most each of
    /// `bounds` (ascending, nanoseconds), the total count, and the sum. A value
    /// counts as at most a bound when its bucket lies wholly below it, and the
    /// sum adds each bucket's lower bound: both within the buckets' 6.25%.
    func cumulative(atMost bounds: [UInt64]) -> (counts: [UInt64], total: UInt64, sumNanoseconds: UInt64) {
        var counts = [UInt64](repeating: 0, count: bounds.count)
        var total: UInt64 = 0, sum: UInt64 = 0
        for bucket in 0..<LatencyHistogram.bucketCount {
            let n = fm_atomic_load_u64(self.counts + bucket)
            guard n > 0 else { continue }
            total += n
            sum &+= n &* LatencyHistogram.lowerBound(of: bucket)
            let upper = bucket + 1 < LatencyHistogram.bucketCount ? LatencyHistogram.lowerBound(of: bucket + 1) - 1 : UInt64.max
            for (i, bound) in bounds.enumerated() where upper <= bound { counts[i] += n }
        }
        return (counts, total, sum)
    }
}
