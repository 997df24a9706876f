/// Which evicted page each probation slot holds, and where a page is: the
/// bookkeeping of the probation area (`ProbationArea`), pure logic.
///
/// Slots are handed out in ring order by a clock hand, so the slot under the
/// hand holds the oldest page: taking it for a newcomer expires that page
/// (it left probation untouched; the server has it). A page faulted back
/// while in probation frees its slot early. A slot is claimed when its page
/// is moved out, and filled (findable) only once the page's write-back has
/// landed; until then it is pending and the hand passes it by.
///
/// Keys are `EvictionQueue.pack(slot:page:)` values. The index is an
/// open-addressing table (linear probing, backward-shift deletion) of slot
/// numbers, twice the slots in size, allocated once: no allocation after init.
struct ProbationIndex {
    let capacity: Int
    /// Per slot: its page's key, `Self.free` or `Self.pending`.
    private let owners: UnsafeMutablePointer<UInt64>
    /// Slot numbers, -1 empty; a slot's key is `owners[slot]`.
    private let table: UnsafeMutablePointer<Int32>
    private let mask: Int
    private var hand = 0
    /// Slots holding a findable page.
    private(set) var count = 0
    /// Slots ever claimed (the hand takes them in order): the area's memory in use.
    private(set) var populated = 0

    private static let free = UInt64.max
    private static let pending = UInt64.max - 1

    init(capacity: Int) {
        self.capacity = max(capacity, 0)
        owners = .allocate(capacity: max(self.capacity, 1))
        owners.initialize(repeating: Self.free, count: max(self.capacity, 1))
        var size = 16
        while size < 2 * self.capacity { size *= 2 }
        mask = size - 1
        table = .allocate(capacity: size)
        table.initialize(repeating: -1, count: size)
    }

    func deallocate() {
        owners.deallocate()
        table.deallocate()
    }

    var isEmpty: Bool { count == 0 }

    /// A slot for a page on its way in, and the key of the page it held (it
    /// expired: left probation untouched), if any. Nil when every slot is
    /// pending (more pages in flight than the area has slots).
    mutating func claim() -> (slot: Int32, expired: UInt64?)? {
        guard capacity > 0 else { return nil }
        for _ in 0..<capacity {
            let slot = hand
            hand = hand + 1 == capacity ? 0 : hand + 1
            let owner = owners[slot]
            if owner == Self.pending { continue }
            var expired: UInt64?
            if owner != Self.free {
                removeFromTable(key: owner)
                count -= 1
                expired = owner
            }
            owners[slot] = Self.pending
            populated = max(populated, slot + 1)
            return (Int32(slot), expired)
        }
        return nil
    }

    /// The claimed slot now holds `key`'s page: findable.
    mutating func fill(_ slot: Int32, key: UInt64) {
        precondition(owners[Int(slot)] == Self.pending, "probation slot filled without a claim")
        // A key is in at most one slot (a page leaves probation before it can be evicted again).
        if lookup(key) != nil { _ = remove(key) }
        owners[Int(slot)] = key
        var position = home(key)
        while table[position] >= 0 { position = (position + 1) & mask }
        table[position] = slot
        count += 1
    }

    /// The claim is dropped (the page's write-back failed, or the page is not
    /// where probation could serve it from any more): the slot is free.
    mutating func cancel(_ slot: Int32) {
        precondition(owners[Int(slot)] == Self.pending, "probation claim cancelled twice")
        owners[Int(slot)] = Self.free
    }

    /// The slot holding `key`'s page, if any.
    func lookup(_ key: UInt64) -> Int32? {
        guard count > 0 else { return nil }
        var position = home(key)
        while true {
            let slot = table[position]
            if slot < 0 { return nil }
            if owners[Int(slot)] == key { return slot }
            position = (position + 1) & mask
        }
    }

    /// Takes `key`'s page out (faulted back, or discarded); returns its slot, now free.
    @discardableResult
    mutating func remove(_ key: UInt64) -> Int32? {
        guard let slot = lookup(key) else { return nil }
        removeFromTable(key: key)
        owners[Int(slot)] = Self.free
        count -= 1
        return slot
    }

    /// Takes out every page whose key `matches` (a region closed, a large
    /// range discarded); a pass over the slots. Returns how many.
    @discardableResult
    mutating func removeAll(where matches: (UInt64) -> Bool) -> Int {
        var removed = 0
        for slot in 0..<capacity {
            let owner = owners[slot]
            guard owner != Self.free, owner != Self.pending, matches(owner) else { continue }
            removeFromTable(key: owner)
            owners[slot] = Self.free
            count -= 1
            removed += 1
        }
        return removed
    }

    @inline(__always)
    private func home(_ key: UInt64) -> Int { Int(truncatingIfNeeded: (key &* 0x9E37_79B9_7F4A_7C15) >> 32) & mask }

    /// Deletes `key`'s table entry, shifting later entries of its probe run
    /// back so that lookups never stop early (no tombstones).
    private func removeFromTable(key: UInt64) {
        var hole = home(key)
        while table[hole] >= 0, owners[Int(table[hole])] != key { hole = (hole + 1) & mask }
        precondition(table[hole] >= 0, "probation key not in the table")
        var next = hole
        while true {
            next = (next + 1) & mask
            let slot = table[next]
            if slot < 0 { break }
            let wanted = home(owners[Int(slot)])
            // Leave it if its home lies cyclically in (hole, next]: it is still reachable.
            let reachable = hole <= next ? (wanted > hole && wanted <= next) : (wanted > hole || wanted <= next)
            if reachable { continue }
            table[hole] = slot
            hole = next
        }
        table[hole] = -1
    }
}
