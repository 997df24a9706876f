import FarMemSystem

/// Where evicted pages wait for their write-back. The fault handler moves a
/// victim here with UFFDIO_MOVE, which takes the page out of the region
/// atomically: a write either landed before the move (and is in the staged
/// copy) or faults after it, so no write can slip between "is it dirty?" and
/// "drop it". UFFDIO_MOVE requires the destination to be registered on the
/// same userfaultfd, so the staging mapping is registered too; its own
/// MADV_DONTNEED events are recognised by address and ignored.
final class StagingArea: @unchecked Sendable {
    let base: UInt
    let slotCount: Int
    /// Free slots in FIFO order; only the fault handler takes and gives.
    /// Taking in order and getting them back in batch order keeps each batch's
    /// slots contiguous, so the evictor empties a batch with one madvise
    /// (one REMOVE event, one short mmap_changing window) instead of many.
    private let freeRing: UnsafeMutablePointer<Int32>
    private var freeHead = 0
    private(set) var freeCount: Int

    init(slots: Int, uffd: Userfaultfd) throws(Errno) {
        slotCount = slots
        let length = slots * MemoryMapping.pageSize
        base = try MemoryMapping.pagerArea(length: length)
        do {
            try uffd.register(base, length: length, mode: .missing)
        } catch {
            MemoryMapping.unmap(base, length: length)
            throw error
        }
        freeRing = .allocate(capacity: slots)
        for i in 0..<slots { freeRing[i] = Int32(i) }
        freeCount = slots
    }

    deinit { freeRing.deallocate() }

    var length: Int { slotCount * MemoryMapping.pageSize }
    var end: UInt { base + UInt(length) }

    @inline(__always) func contains(_ address: UInt) -> Bool { address >= base && address < end }
    @inline(__always) func address(of slot: Int32) -> UInt { base + UInt(slot) * 4096 }

    func take() -> Int32? {
        guard freeCount > 0 else { return nil }
        let slot = freeRing[freeHead]
        freeHead = (freeHead + 1) % slotCount
        freeCount -= 1
        return slot
    }

    func give(_ slot: Int32) {
        precondition(freeCount < slotCount, "staging slot returned twice")
        freeRing[(freeHead + freeCount) % slotCount] = slot
        freeCount += 1
    }

    /// Undoes an mlock or mlockall of the application's that covered staging:
    /// a locked slot cannot be emptied (MADV_DONTNEED: EINVAL), and UFFDIO_MOVE
    /// refuses to move an unlocked page into a locked area (EINVAL). Staging is
    /// FarMem's own memory, never the application's data, so unlocking it
    /// takes nothing from the program. Sends no userfaultfd event.
    func unlock() {
        try? MemoryMapping.unlock(base, length: length)
    }

    func unmap(uffd: Userfaultfd) {
        try? uffd.unregister(base, length: length)
        MemoryMapping.unmap(base, length: length)
    }
}

/// One eviction round's pages, handed from the fault handler to the evictor
/// and back. Reused, so eviction allocates nothing in steady state.
final class EvictionBatch: @unchecked Sendable {
    struct Entry {
        var regionSlot: Int
        var region: StoreRegion
        var page: Int
        var stagingSlot: Int32
        var dirty: Bool
        /// Set by the evictor: the write-back could not be done; the staged
        /// copy is the only one and the handler moves it back.
        var failed = false
        /// With `failed`: no server holds the page's extent any more, so the
        /// page can only stay local (unevictable, and no outage is declared).
        var lost = false
        /// The page store held the page when it was moved out (a clean page's
        /// data is then there; otherwise it is zeros). For `PageVerifier`.
        var backed = false
        /// With page verification on: the staged page's hash, taken by the evictor.
        var hash: UInt64 = 0
        /// A memfd page: where to read it (its second mapping; it stays in the
        /// page cache, write-protected, and has no staging slot). 0 otherwise.
        var source: UInt = 0
        /// A hugetlb page: the file it is read from instead (pread at page * 4096),
        /// never its mapping: should the application remove the huge page
        /// meanwhile, touching the mapping would take one from the pool (or
        /// SIGBUS when it is empty), where pread reads zeros. -1 otherwise.
        var sourceFile: Int32 = -1
        /// An anonymous page kept for a second chance: the probation slot the
        /// evictor copies it into (claimed by the handler). -1 otherwise.
        var probationSlot: Int32 = -1

        init(regionSlot: Int, region: StoreRegion, page: Int, stagingSlot: Int32, dirty: Bool, backed: Bool, source: UInt = 0,
             sourceFile: Int32 = -1, probationSlot: Int32 = -1) {
            self.probationSlot = probationSlot
            self.regionSlot = regionSlot
            self.region = region
            self.page = page
            self.stagingSlot = stagingSlot
            self.dirty = dirty
            self.backed = backed
            self.source = source
            self.sourceFile = sourceFile
        }

        /// Where the evictor reads the page's bytes.
        func bytes(in staging: StagingArea) -> UnsafeRawPointer {
            UnsafeRawPointer(bitPattern: source != 0 ? source : staging.address(of: stagingSlot))!
        }
    }
    var entries: [Entry] = []
    init(capacity: Int) { entries.reserveCapacity(capacity) }
}
