import FarMemSystem

/// Where evicted pages of anonymous regions get a second chance at local
/// cost (segmented FIFO, the refault as the access bit). A victim is moved
/// out as before (UFFDIO_MOVE into staging: atomic, no write slips past);
/// the evictor then copies it here while it writes it back. Until its slot is
/// taken for a newer victim, a fault on it is served from here (UFFDIO_COPY,
/// write-protected when clean: atomic too) with no network round trip, and
/// the page is marked hot. Pages that leave untouched cost nothing more: the
/// server has them.
///
/// Why a copy and not the staging slot itself: a page moved back with
/// UFFDIO_MOVE gets a fresh writable PTE, so it could not be put back
/// write-protected without a window in which a write goes untracked; and
/// staging slots are emptied with MADV_DONTNEED, a REMOVE event each, which
/// scattered hits would multiply. This area is plain memory, never registered
/// with userfaultfd: it needs no emptying, and a pager thread may read it.
///
/// Its slots count in the budget once used (`Budget.probation`): the area
/// grows only as eviction fills it, so a working set that fits the budget
/// loses nothing to it.
/// The handler owns the index; the evictor only writes slots the handler
/// claimed for the batch it was given.
final class ProbationArea: @unchecked Sendable {
    let base: UInt
    let slotCount: Int
    var index: ProbationIndex

    init(slots: Int) throws(Errno) {
        slotCount = slots
        let length = slots * MemoryMapping.pageSize
        base = try MemoryMapping.pagerArea(length: length)
        index = ProbationIndex(capacity: slots)
    }

    deinit {
        index.deallocate()
        MemoryMapping.unmap(base, length: slotCount * MemoryMapping.pageSize)
    }

    @inline(__always) func address(of slot: Int32) -> UInt { base + UInt(slot) * 4096 }

    /// How many pages a budget of `budgetPages` sets aside for probation:
    /// `share` of it, none when that would be under 32 pages (too few to tell
    /// a hot page from a cold one).
    static func pages(budgetPages: Int, share: Double) -> Int {
        let pages = Int(Double(budgetPages) * min(max(share, 0), 0.5))
        return pages >= 32 ? pages : 0
    }
}
