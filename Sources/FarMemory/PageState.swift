/// Per-page state bits. Only the fault-handler thread reads or writes them, so
/// they need no atomics and no lock.
enum PageState {
    /// Mapped in the region (installed by UFFDIO_COPY, not yet moved out).
    static let resident: UInt8 = 1 << 0
    /// Resident and writable: modified since it was installed.
    static let dirty: UInt8 = 1 << 1
    /// The server holds this page's data. Not resident + not backed = zeros.
    static let backed: UInt8 = 1 << 2
    /// Moved to staging; its write-back is in flight. Faults on it wait.
    static let inFlight: UInt8 = 1 << 3
    /// The application discarded the page while its write-back was in flight.
    static let discardedInFlight: UInt8 = 1 << 4
    /// Has an entry in the eviction queue.
    static let queued: UInt8 = 1 << 5
    /// Resident, but UFFDIO_MOVE refuses it (pinned by O_DIRECT, io_uring or an
    /// RDMA registration of the application's, or mprotect/mlock made its area
    /// differ from staging): it stays, outside the budget, and is counted apart.
    static let unevictable: UInt8 = 1 << 6
    /// The kernel refused to move it once (a pin may be short): one more
    /// refusal makes it unevictable.
    static let moveRefused: UInt8 = 1 << 7

    /// Lives on the server only: worth fetching (or prefetching) as it is.
    @inline(__always)
    static func isOnServerOnly(_ state: UInt8) -> Bool {
        state & (resident | inFlight) == 0 && state & backed != 0
    }
}

/// A run of a region's pages at some address. A region starts as one extent;
/// mremap and partial munmap move or cut extents.
struct Extent {
    var start: UInt
    var pageCount: Int
    var firstPage: Int
    var end: UInt { start + UInt(pageCount * 4096) }
}
