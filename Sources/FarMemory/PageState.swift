/// One page's state as the fault handler keeps it: one byte a page, read
/// and written only on the handler thread (no atomics, no lock). Facts are
/// the properties; every change is a named transition, after what happened.
struct PageState: Equatable, CustomStringConvertible {
    private var bits: UInt8

    private static let resident: UInt8 = 1 << 0
    private static let dirty: UInt8 = 1 << 1
    private static let backed: UInt8 = 1 << 2
    private static let inFlight: UInt8 = 1 << 3
    private static let discardedInFlight: UInt8 = 1 << 4
    private static let queued: UInt8 = 1 << 5
    private static let unevictable: UInt8 = 1 << 6
    private static let refusedOnce: UInt8 = 1 << 7

    private init(bits: UInt8) { self.bits = bits }

    /// For `PageTrace` only: the state as one byte, and back.
    var rawBits: UInt8 { bits }
    init(rawBits: UInt8) { bits = rawBits }

    /// Never written, or discarded: reads as zeros, nothing to fetch.
    static let zeros = PageState(bits: 0)

    // MARK: Facts

    /// Mapped in the region: installed by this handler, not yet moved out.
    var isResident: Bool { bits & Self.resident != 0 }
    /// Resident and writable: modified since it was installed.
    var isDirty: Bool { bits & Self.dirty != 0 }
    /// The page store holds this page's data. Not resident and not backed: zeros.
    var isBacked: Bool { bits & Self.backed != 0 }
    /// Moved to staging and its write-back is in flight: faults on it wait.
    var isInFlight: Bool { bits & Self.inFlight != 0 }
    /// Discarded by the application while its write-back was in flight.
    var wasDiscardedInFlight: Bool { bits & Self.discardedInFlight != 0 }
    /// Has an entry in the eviction queue.
    var isQueued: Bool { bits & Self.queued != 0 }
    /// Resident, but the kernel refused to move it twice (pinned by O_DIRECT,
    /// io_uring or an RDMA registration of the application's; or mlock or
    /// mprotect made its area differ): outside the budget, set aside.
    var isUnevictable: Bool { bits & Self.unevictable != 0 }
    /// The kernel refused to move it once (a pin may be short).
    var wasRefusedOnce: Bool { bits & Self.refusedOnce != 0 }
    /// memfd regions: the application's MADV_DONTNEED or MADV_REMOVE reached
    /// this resident page, and which one it was is for the page cache to
    /// tell (the same bit as `wasDiscardedInFlight`: discarded at a moment
    /// the handler cannot judge yet).
    var isRemovePending: Bool { bits & Self.resident != 0 && bits & Self.discardedInFlight != 0 }
    /// Lives in the page store only: worth fetching (or prefetching) as it is.
    var isOnServerOnly: Bool { bits & (Self.resident | Self.inFlight) == 0 && bits & Self.backed != 0 }

    // MARK: Transitions

    /// Installed by this handler (UFFDIO_COPY): resident, dirty when the fault
    /// was a write (installed writable). Keeps its data's home and queue entry.
    func installed(dirty: Bool) -> PageState {
        PageState(bits: Self.resident | (dirty ? Self.dirty : 0) | (bits & (Self.backed | Self.queued)))
    }

    /// An install that was about to happen did not (the copy failed): as before.
    func notInstalled() -> PageState { PageState(bits: bits & ~(Self.resident | Self.dirty)) }

    /// Installed as zeros over a page believed resident whose page the kernel
    /// had dropped: clean, no longer backed.
    func reinstalledAsZeros() -> PageState { PageState(bits: Self.resident | (bits & Self.queued)) }

    /// The first write to a clean resident page (write-protect fault).
    func written() -> PageState { PageState(bits: bits | Self.dirty) }

    /// The application discarded it (MADV_DONTNEED, MADV_REMOVE, munmap): zeros
    /// from now on. Its eviction-queue entry, if any, stays.
    func discarded() -> PageState { PageState(bits: bits & Self.queued) }

    /// memfd regions: a REMOVE event for this resident page (see
    /// `isRemovePending`). Dirty: whatever the page cache keeps is written back.
    func removedWhileResident() -> PageState { PageState(bits: bits | Self.dirty | Self.discardedInFlight) }

    /// The page cache told: the REMOVE kept the page (MADV_DONTNEED).
    func removeSettled() -> PageState { PageState(bits: bits & ~Self.discardedInFlight) }

    /// Discarded while its write-back was in flight: it is discarded once that lands.
    func discardedWhileInFlight() -> PageState { PageState(bits: bits | Self.discardedInFlight) }

    /// Moved into staging. A dirty page's write-back is now in flight; a clean
    /// one is where its data already was (the store, or nowhere: zeros).
    func movedOut() -> PageState {
        PageState(bits: (isDirty ? Self.inFlight : 0) | (bits & Self.backed))
    }

    /// Not mapped after all when it was to be moved out (the kernel dropped it): zeros.
    func foundUnmapped() -> PageState { PageState(bits: bits & Self.queued) }

    /// Its write-back landed: the store has it. Keeps its queue entry.
    func writtenBack() -> PageState { PageState(bits: Self.backed | (bits & Self.queued)) }

    /// Moved back from staging after its write-back failed: the only copy,
    /// resident and dirty again, and back in the eviction queue.
    func restored() -> PageState {
        PageState(bits: Self.resident | Self.dirty | Self.queued | (bits & Self.backed))
    }

    /// Taken off the eviction queue (as a victim candidate).
    func dequeued() -> PageState { PageState(bits: bits & ~Self.queued) }

    /// Put (back) on the eviction queue.
    func enqueued() -> PageState { PageState(bits: bits | Self.queued) }

    /// The kernel refused to move it for the first time: it goes back in the queue.
    func refusedOnceAndRequeued() -> PageState { PageState(bits: bits | Self.refusedOnce | Self.queued) }

    /// Refused a second time: set aside, unevictable, out of the queue.
    func setAside() -> PageState {
        PageState(bits: (bits | Self.unevictable) & ~(Self.queued | Self.refusedOnce))
    }

    /// A set-aside page about to be tried again: judged as it was before.
    func retried() -> PageState { PageState(bits: bits & ~Self.unevictable) }

    var description: String {
        let names = ["resident", "dirty", "backed", "in flight", "discarded in flight", "queued", "unevictable", "refused once"]
        let set = names.indices.filter { bits & (1 << $0) != 0 }.map { names[$0] }
        return set.isEmpty ? "zeros" : set.joined(separator: ", ")
    }
}
