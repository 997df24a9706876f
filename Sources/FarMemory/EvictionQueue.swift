/// FIFO of resident pages in the order they were installed: the eviction
/// victims, oldest first. A ring of packed (region slot, page) entries in
/// preallocated memory; a page is in it at most once (PageState.isQueued), so a
/// capacity of the shard's pages of all live regions always suffices.
struct EvictionQueue {
    private var storage: UnsafeMutablePointer<UInt64>
    private(set) var capacity: Int
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 16)
        storage = .allocate(capacity: self.capacity)
    }

    func deallocate() { storage.deallocate() }

    /// 32 bits of region slot, 32 of page number (regions up to 16 TiB).
    @inline(__always) static func pack(slot: Int, page: Int) -> UInt64 { UInt64(UInt32(truncatingIfNeeded: slot)) << 32 | UInt64(page) }
    @inline(__always) static func unpack(_ entry: UInt64) -> (slot: Int, page: Int) {
        (Int(entry >> 32), Int(entry & 0xFFFF_FFFF))
    }

    @inline(__always)
    mutating func push(_ entry: UInt64) {
        precondition(count < capacity, "eviction queue overflow")
        storage[(head + count) % capacity] = entry
        count += 1
    }

    @inline(__always)
    mutating func pop() -> UInt64? {
        guard count > 0 else { return nil }
        let entry = storage[head]
        head = (head + 1) % capacity
        count -= 1
        return entry
    }

    /// Rebuilds with a new capacity, keeping only entries `keep` accepts
    /// (region added: grow; region closed: drop its entries).
    mutating func rebuild(capacity newCapacity: Int, keep: (UInt64) -> Bool) {
        let fresh = UnsafeMutablePointer<UInt64>.allocate(capacity: max(newCapacity, 16))
        var kept = 0
        for i in 0..<count {
            let entry = storage[(head + i) % capacity]
            if keep(entry) { fresh[kept] = entry; kept += 1 }
        }
        storage.deallocate()
        storage = fresh
        capacity = max(newCapacity, 16)
        head = 0
        count = kept
    }
}
