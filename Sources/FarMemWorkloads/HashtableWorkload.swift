import CFarMemSys
import FarMemory
#if canImport(Glibc)
import Glibc
#endif

/// The `hashtable` workload: an open-addressing hash table of 64-byte entries
/// filling the region (three quarters full, linear probing), then zipfian
/// keys, 90% gets and 10% puts, as a key-value cache serves them. Each entry
/// checks itself (a word that must match its key and value), so a get or a
/// put that finds stale or foreign data fails the run.
///
/// Entry: word 0 the key (0: empty), word 1 the value, word 2 the check,
/// words 3-7 a payload fixed at preparation.
struct HashtableLayout {
    static let entryWords = 8
    static let entriesPerPage = 4096 / (entryWords * 8)

    let capacity: Int
    let keys: Int
    let salt: UInt64

    init(pages: Int, seed: UInt64) {
        capacity = pages * Self.entriesPerPage
        keys = capacity * 3 / 4
        salt = seed &* 0x9E37_79B9_7F4A_7C15
    }

    /// The i-th key: distinct for distinct i (a bijective mix), never 0.
    @inline(__always) func key(_ index: Int) -> UInt64 { max(mix64(UInt64(index) ^ salt), 1) }

    /// Where a key's probe starts: its index (the mix undone) spread evenly
    /// over the table, jittered by up to 3 slots so that neighbours collide
    /// and probe. Keys in index order then fill the table in address order:
    /// preparing it is one pass over the region, where a random insert per
    /// key took minutes of faults under a small budget. Gets and puts stay
    /// random: zipfian ranks are scattered over the keys (`index(ofRank:)`).
    @inline(__always) func home(_ key: UInt64) -> Int {
        let index = Int(truncatingIfNeeded: unmix64(key) ^ salt) % keys
        return (index * capacity / keys + Int(mix64(key) & 3)) % capacity
    }
    @inline(__always) static func check(_ key: UInt64, _ value: UInt64) -> UInt64 { mix64(key &* 31 &+ value) }

    /// The key-rank to key-index map: a fixed scatter, so hot keys are spread over the table.
    @inline(__always) func index(ofRank rank: Int) -> Int {
        Int((UInt64(rank) &* 2_654_435_761) % UInt64(keys))
    }
}

/// The inverse of `mix64` (each xor-shift and multiply undone in turn).
@inline(__always)
func unmix64(_ x: UInt64) -> UInt64 {
    var z = x ^ (x >> 31) ^ (x >> 62)
    z = z &* 0x3196_42B2_D24D_8EC3
    z = z ^ (z >> 27) ^ (z >> 54)
    z = z &* 0x96DE_1B17_3F11_9089
    return z ^ (z >> 30) ^ (z >> 60)
}

/// splitmix64's finalizer: a bijection on 64-bit words.
@inline(__always)
func mix64(_ x: UInt64) -> UInt64 {
    var z = x
    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
    z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
    return z ^ (z >> 31)
}

extension BenchWorkload {
    var hashtable: HashtableLayout { HashtableLayout(pages: pages, seed: seed) }

    /// Untimed: every key inserted with value 0 (the region starts as zeros),
    /// in index order, which is the table's address order (see `home`).
    func prepareHashtable(_ base: UnsafeMutableRawPointer) {
        let table = hashtable
        let words = base.assumingMemoryBound(to: UInt64.self)
        for i in 0..<table.keys {
            let key = table.key(i)
            var slot = table.home(key)
            while words[slot * HashtableLayout.entryWords] != 0 { slot = slot + 1 == table.capacity ? 0 : slot + 1 }
            let entry = words + slot * HashtableLayout.entryWords
            entry[0] = key
            entry[1] = 0
            entry[2] = HashtableLayout.check(key, 0)
            for w in 3..<HashtableLayout.entryWords { entry[w] = key &+ UInt64(w) }
        }
    }

    /// Operations drawn before the clock: key index << 1, low bit set for a put.
    /// Ranks follow a continuous Zipf(skew) by inverse transform, O(1) memory
    /// (a table of every key's probability would be the worker's own
    /// megabytes, charged to kernel swap's cgroup).
    func hashtableSequence() -> [Int] {
        let table = hashtable
        var state = seed ^ 0x4A5B
        let n = Double(table.keys)
        let s = zipfSkew
        let exponent = 1 - s
        // H(x) = (x^(1-s) - 1) / (1-s), the integral of x^-s from 1; ranks 1...n.
        func h(_ x: Double) -> Double { abs(exponent) < 1e-9 ? log(x) : (pow(x, exponent) - 1) / exponent }
        func hInverse(_ y: Double) -> Double { abs(exponent) < 1e-9 ? exp(y) : pow(y * exponent + 1, 1 / exponent) }
        let top = h(n + 1)
        return (0..<pages * 2).map { _ in
            let u = Double(splitmix(&state) >> 11) / Double(1 << 53) * top
            let rank = min(Int(hInverse(u)) - 1, table.keys - 1)
            let put = splitmix(&state) % 10 == 0
            return table.index(ofRank: max(rank, 0)) << 1 | (put ? 1 : 0)
        }
    }

    func runHashtable(_ base: UnsafeMutableRawPointer, sequence: [Int], deadlineSeconds: Double) -> Result {
        let table = hashtable
        let words = base.assumingMemoryBound(to: UInt64.self)
        let histogram = LatencyHistogram()
        var ok = true
        var checksum: UInt64 = 0
        let start = fm_now_ns()
        let deadline = start + UInt64(deadlineSeconds * 1e9)
        var done = 0
        for operation in sequence {
            let key = table.key(operation >> 1)
            let t0 = fm_now_ns()
            var slot = table.home(key)
            var probes = 0
            while words[slot * HashtableLayout.entryWords] != key, probes < table.capacity {
                if words[slot * HashtableLayout.entryWords] == 0 { probes = table.capacity; break }   // absent: cannot be
                slot = slot + 1 == table.capacity ? 0 : slot + 1
                probes += 1
            }
            guard probes < table.capacity else { ok = false; break }
            let entry = words + slot * HashtableLayout.entryWords
            let value = entry[1]
            if entry[2] != HashtableLayout.check(key, value) { ok = false }
            if operation & 1 == 1 {
                entry[1] = value &+ 1
                entry[2] = HashtableLayout.check(key, value &+ 1)
            } else {
                checksum &+= value &+ entry[3]
            }
            histogram.record(nanoseconds: fm_now_ns() &- t0)
            done += 1
            if done & 1023 == 0, fm_now_ns() > deadline { break }
        }
        fm_sink(checksum)
        return Result(since: start, accesses: done, histogram, verified: ok && done == sequence.count, timedOut: ok && done < sequence.count)
    }
}
