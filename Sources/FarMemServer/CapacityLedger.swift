import Synchronization

/// The server's capacity, promised region by region. CREATE_REGION reserves a
/// region's full size up front, or (protocol 2) the part of it the client will
/// put here, which RESERVE grows or shrinks; a write within a region's
/// reservation can never fail for lack of space. An RDMA-exposed region is
/// reserved whole (its memory is pinned).
final class CapacityLedger: Sendable {
    let capacityPages: Int
    private let reserved = Mutex(0)
    private let stored = Atomic<Int>(0)

    init(capacityPages: Int) { self.capacityPages = capacityPages }

    /// Promises `pages`; false when the server is full.
    func reserve(_ pages: Int) -> Bool {
        reserved.withLock { reserved in
            guard pages <= capacityPages - reserved else { return false }
            reserved += pages
            return true
        }
    }

    func release(_ pages: Int) { reserved.withLock { $0 -= pages } }

    var reservedPages: Int { reserved.withLock { $0 } }
    var unreservedPages: Int { capacityPages - reservedPages }

    /// Pages that hold data (written and not discarded; RDMA writes are not seen, see README).
    func addStored(_ delta: Int) { stored.add(delta, ordering: .relaxed) }
    var storedPages: Int { stored.load(ordering: .relaxed) }
}
