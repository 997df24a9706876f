import Synchronization

/// The pager's view of one far region. Created by the application thread,
/// then owned by the fault handler: `states` and `extents` change only there.
final class RegionRecord: @unchecked Sendable {
    /// The region as the page store knows it (its id names it in logs too).
    let store: StoreRegion
    let pageCount: Int
    /// Index in the handler's region table (and in eviction-queue entries).
    let slot: Int
    let states: UnsafeMutablePointer<PageState>
    /// When each page was last evicted, and whether it came back soon (`Recency`).
    let recency: UnsafeMutablePointer<UInt8>
    /// With page verification on: each backed page's hash as written back
    /// (`PageVerifier`); nil otherwise.
    let hashes: UnsafeMutablePointer<UInt64>?
    var extents: [Extent]
    /// The pages this shard handles; no other page of the region is ever
    /// resident or queued here (mremap moves them, never renumbers them).
    let chunk: Range<Int>
    /// Address of page 0 now (it follows mremap); 0 once page 0 is unmapped.
    let currentBase: Atomic<UInt>
    /// A memfd region's file and second mapping; nil for an anonymous one.
    let shared: SharedBacking?
    /// memfd regions: when each remove-pending page's REMOVE came (CLOCK_MONOTONIC
    /// ns; see `PageState.isRemovePending`). Rare, so a dictionary.
    var removesSeenAt: [Int: UInt64] = [:]

    /// The shard's view of a region: all its page numbers, but only the pages
    /// in `chunk` are mapped through this shard's userfaultfd.
    init(store: StoreRegion, pageCount: Int, slot: Int, base: UInt, chunk: Range<Int>, verifiesPages: Bool = false,
         shared: SharedBacking? = nil) {
        self.store = store
        self.shared = shared
        self.pageCount = pageCount
        self.slot = slot
        states = .allocate(capacity: pageCount)
        states.initialize(repeating: .zeros, count: pageCount)
        recency = .allocate(capacity: pageCount)
        recency.initialize(repeating: 0, count: pageCount)
        if verifiesPages {
            hashes = .allocate(capacity: pageCount)
            hashes!.initialize(repeating: 0, count: pageCount)
        } else {
            hashes = nil
        }
        self.chunk = chunk
        extents = [Extent(start: base + UInt(chunk.lowerBound * 4096), pageCount: chunk.count, firstPage: chunk.lowerBound)]
        currentBase = Atomic(chunk.lowerBound == 0 ? base : 0)
    }

    deinit {
        states.deallocate()
        recency.deallocate()
        hashes?.deallocate()
    }

    /// Gives `count` pages from `first` one state (a hugetlb unit's pages move together).
    @inline(__always)
    func setStates(_ state: PageState, from first: Int, count: Int) {
        for page in first..<first + count { states[page] = state }
    }

    /// The page at `address`, if one of this region's extents covers it.
    @inline(__always) func page(at address: UInt) -> Int? { extents.page(at: address) }

    /// Where `page` is mapped now, if it is mapped.
    @inline(__always) func address(of page: Int) -> UInt? { extents.address(of: page) }

    /// Pages of this region inside [start, end), as runs of page numbers.
    func pageRuns(in start: UInt, _ end: UInt) -> [Range<Int>] { extents.pageRuns(in: start, end) }

    /// Removes [start, end) from the extents (munmap).
    func cut(_ start: UInt, _ end: UInt) {
        extents.cut(start, end)
        publishBase()
    }

    /// Moves the part of the extents in [from, from+length) to start at `to` (mremap).
    func move(from: UInt, to: UInt, length: UInt) {
        extents.move(from: from, to: to, length: length)
        publishBase()
    }

    private func publishBase() {
        currentBase.store(address(of: 0) ?? 0, ordering: .releasing)
    }
}
