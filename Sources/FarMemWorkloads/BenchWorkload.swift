import CFarMemSys
import FarMemory

/// The paging benchmark's workloads, each over `pages` pages at some base
/// address: whatever memory backs it (local, a plain userfaultfd region, kernel
/// swap, FarMem) runs the very same code. Access sequences are drawn before
/// the clock starts; each access's first touch of its page is timed.
public struct BenchWorkload: Sendable {
    public enum Kind: String, CaseIterable, Sendable, Codable {
        case sequential, strided, random, zipfian, rwmix, sort, introsort, hashtable

        /// The in-place sorts: `sort` (heapsort) and `introsort` (like std::sort).
        public var isSort: Bool { self == .sort || self == .introsort }
    }

    public let kind: Kind
    public let pages: Int
    public let zipfSkew: Double
    public let seed: UInt64

    public init(kind: Kind, pages: Int, zipfSkew: Double = 0.99, seed: UInt64 = 42) {
        self.kind = kind
        self.pages = pages
        self.zipfSkew = zipfSkew
        self.seed = seed
    }

    public struct Result: Sendable, Codable {
        public var seconds: Double
        public var pagesAccessed: Int
        public var latencyP50: UInt64
        public var latencyP90: UInt64
        public var latencyP99: UInt64
        public var latencyP999: UInt64
        public var verified: Bool
        public var timedOut: Bool
        /// Kernel swap's worker: major faults during the run (getrusage).
        public var majorFaults: UInt64?

        /// A run that produced nothing (it failed before it finished).
        public static let none = Result(seconds: 0, pagesAccessed: 0, latencyP50: 0, latencyP90: 0, latencyP99: 0,
                                        latencyP999: 0, verified: false, timedOut: false)
    }

    private var pattern: PagePattern { PagePattern(seed: seed) }

    /// Untimed: gives every page its content (the pattern, random keys to
    /// sort, or a filled hash table).
    public func prepare(_ base: UnsafeMutableRawPointer) {
        if kind == .hashtable {
            prepareHashtable(base)
        } else if kind.isSort {
            var state = seed
            let words = base.assumingMemoryBound(to: UInt64.self)
            for i in 0..<pages * 512 { words[i] = splitmix(&state) }
        } else {
            for page in 0..<pages { _ = pattern.write(page: page, at: base + page * 4096) }
        }
    }

    /// The page sequence of one run (not for sort).
    public func accessSequence() -> [Int] {
        var state = seed ^ 0x5EED
        switch kind {
        case .sequential:
            return Array(0..<pages)
        case .strided:
            let stride = 8
            return (0..<stride).flatMap { offset in Swift.stride(from: offset, to: pages, by: stride) }
        case .random, .rwmix:
            return (0..<pages).map { _ in Int(splitmix(&state) % UInt64(pages)) }
        case .zipfian:
            // Ranks drawn from Zipf(skew) by inverse CDF, mapped to pages by a
            // fixed shuffle so the hot pages are scattered over the region.
            var cdf = [Double](repeating: 0, count: pages)
            var sum = 0.0
            for rank in 0..<pages {
                sum += 1 / pow(Double(rank + 1), zipfSkew)
                cdf[rank] = sum
            }
            var permutation = Array(0..<pages)
            for i in stride(from: pages - 1, to: 0, by: -1) {
                permutation.swapAt(i, Int(splitmix(&state) % UInt64(i + 1)))
            }
            return (0..<pages * 2).map { _ in
                let u = Double(splitmix(&state) >> 11) / Double(1 << 53) * sum
                var lo = 0, hi = pages - 1
                while lo < hi {
                    let mid = (lo + hi) / 2
                    if cdf[mid] < u { lo = mid + 1 } else { hi = mid }
                }
                return permutation[lo]
            }
        case .sort, .introsort:
            return []
        case .hashtable:
            return hashtableSequence()
        }
    }

    /// The timed part. Stops at `deadlineSeconds` (reported as timed out).
    public func run(_ base: UnsafeMutableRawPointer, sequence: [Int], deadlineSeconds: Double) -> Result {
        if kind == .sort { return runSort(base, deadlineSeconds: deadlineSeconds) }
        if kind == .introsort { return runIntrosort(base, deadlineSeconds: deadlineSeconds) }
        if kind == .hashtable { return runHashtable(base, sequence: sequence, deadlineSeconds: deadlineSeconds) }
        let histogram = LatencyHistogram()
        var ok = true
        var checksum: UInt64 = 0
        var state = seed
        let start = fm_now_ns()
        let deadline = start + UInt64(deadlineSeconds * 1e9)
        var done = 0
        let scan = kind == .sequential || kind == .strided
        for page in sequence {
            let words = (base + page * 4096).assumingMemoryBound(to: UInt64.self)
            let t0 = fm_now_ns()
            let first = words[0]
            histogram.record(nanoseconds: fm_now_ns() &- t0)
            if first != pattern.word(page: page, index: 0) { ok = false }
            if scan {
                for i in 1..<512 { checksum &+= words[i] }   // a scan reads the whole page
            } else if kind == .rwmix, splitmix(&state) % 10 < 3 {
                words[7] = pattern.word(page: page, index: 7)   // a write: same value, but the page is now dirty
            } else {
                checksum &+= words[Int(state & 511)]
            }
            done += 1
            if done & 1023 == 0, fm_now_ns() > deadline { break }
        }
        fm_sink(checksum)
        return Result(since: start, accesses: done, histogram, verified: ok && done == sequence.count, timedOut: done < sequence.count)
    }

    /// In-place heapsort of the region as UInt64 keys (no second buffer, unlike
    /// glibc's qsort), then a check that the keys are in order.
    private func runSort(_ base: UnsafeMutableRawPointer, deadlineSeconds: Double) -> Result {
        let a = base.assumingMemoryBound(to: UInt64.self)
        let n = pages * 512
        let start = fm_now_ns()
        let deadline = start + UInt64(deadlineSeconds * 1e9)
        var timedOut = false
        func siftDown(_ root: Int, _ end: Int) {
            var parent = root
            while true {
                var child = 2 * parent + 1
                if child >= end { return }
                if child + 1 < end && a[child] < a[child + 1] { child += 1 }
                if a[parent] >= a[child] { return }
                let t = a[parent]; a[parent] = a[child]; a[child] = t
                parent = child
            }
        }
        var i = n / 2 - 1
        while i >= 0 {
            siftDown(i, n)
            if i & 4095 == 0, fm_now_ns() > deadline { timedOut = true; break }
            i -= 1
        }
        var end = n - 1
        while !timedOut && end > 0 {
            let t = a[0]; a[0] = a[end]; a[end] = t
            siftDown(0, end)
            if end & 4095 == 0, fm_now_ns() > deadline { timedOut = true }
            end -= 1
        }
        let seconds = Double(fm_now_ns() - start) / 1e9
        var sorted = !timedOut
        if sorted { for j in 1..<n where a[j - 1] > a[j] { sorted = false; break } }
        return Result(seconds: seconds, pagesAccessed: pages, latencyP50: 0, latencyP90: 0, latencyP99: 0, latencyP999: 0,
                      verified: sorted, timedOut: timedOut)
    }
}

extension BenchWorkload.Result {
    /// A timed run that began at `start` (fm_now_ns) and just ended.
    init(since start: UInt64, accesses: Int, _ histogram: LatencyHistogram, verified: Bool, timedOut: Bool) {
        self.init(seconds: Double(fm_now_ns() - start) / 1e9, pagesAccessed: accesses,
                  latencyP50: histogram.value(atPercentile: 50), latencyP90: histogram.value(atPercentile: 90),
                  latencyP99: histogram.value(atPercentile: 99), latencyP999: histogram.value(atPercentile: 99.9),
                  verified: verified, timedOut: timedOut)
    }
}

extension BenchWorkload {
    /// In-place introsort of the region as UInt64 keys, the way std::sort
    /// does it: median-of-three Hoare partitions that scan from both ends
    /// toward the middle (two streams in one thread), heapsort below a depth
    /// of 2 log2 n, insertion sort for ranges of 16 or fewer; then a check
    /// that the keys are in order.
    fileprivate func runIntrosort(_ base: UnsafeMutableRawPointer, deadlineSeconds: Double) -> Result {
        let a = UnsafeMutableBufferPointer(start: base.assumingMemoryBound(to: UInt64.self), count: pages * 512)
        let n = a.count
        let start = fm_now_ns()
        let deadline = start + UInt64(deadlineSeconds * 1e9)
        var timedOut = false

        func insertionSort(_ lo: Int, _ hi: Int) {
            guard hi > lo else { return }
            for i in lo + 1...hi {
                let v = a[i]
                var j = i - 1
                while j >= lo && a[j] > v { a[j + 1] = a[j]; j -= 1 }
                a[j + 1] = v
            }
        }
        func heapSort(_ lo: Int, _ hi: Int) {
            let count = hi - lo + 1
            func siftDown(_ root: Int, _ end: Int) {
                var parent = root
                while true {
                    var child = 2 * parent + 1
                    if child >= end { return }
                    if child + 1 < end && a[lo + child] < a[lo + child + 1] { child += 1 }
                    if a[lo + parent] >= a[lo + child] { return }
                    a.swapAt(lo + parent, lo + child)
                    parent = child
                }
            }
            var i = count / 2 - 1
            while i >= 0 { siftDown(i, count); i -= 1 }
            var end = count - 1
            while end > 0 { a.swapAt(lo, lo + end); siftDown(0, end); end -= 1 }
        }
        func introsort(_ low: Int, _ high: Int, _ depthLimit: Int) {
            var lo = low, hi = high, depth = depthLimit
            while hi - lo > 16 {
                if timedOut { return }
                if fm_now_ns() > deadline { timedOut = true; return }
                if depth == 0 { heapSort(lo, hi); return }
                depth -= 1
                let mid = lo + (hi - lo) / 2
                if a[mid] < a[lo] { a.swapAt(mid, lo) }
                if a[hi] < a[lo] { a.swapAt(hi, lo) }
                if a[hi] < a[mid] { a.swapAt(hi, mid) }
                let pivot = a[mid]
                var i = lo - 1, j = hi + 1
                while true {
                    repeat { i += 1 } while a[i] < pivot
                    repeat { j -= 1 } while a[j] > pivot
                    if i >= j { break }
                    a.swapAt(i, j)
                }
                // The smaller side recursively, the larger in this loop: stack depth stays log n.
                if j - lo < hi - j { introsort(lo, j, depth); lo = j + 1 } else { introsort(j + 1, hi, depth); hi = j }
            }
            if !timedOut { insertionSort(lo, hi) }
        }
        introsort(0, n - 1, 2 * (Int.bitWidth - n.leadingZeroBitCount))
        let seconds = Double(fm_now_ns() - start) / 1e9
        var sorted = !timedOut
        if sorted { for j in 1..<n where a[j - 1] > a[j] { sorted = false; break } }
        return Result(seconds: seconds, pagesAccessed: pages, latencyP50: 0, latencyP90: 0, latencyP99: 0, latencyP999: 0,
                      verified: sorted, timedOut: timedOut)
    }
}

@inline(__always)
func splitmix(_ state: inout UInt64) -> UInt64 {
    state &+= 0x9E37_79B9_7F4A_7C15
    var z = state
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

#if canImport(Glibc)
import Glibc
#endif
