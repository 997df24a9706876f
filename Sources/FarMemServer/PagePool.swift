import FarMemProtocol
import FarMemSystem
import Synchronization

/// The server's page memory: one NORESERVE mapping of `capacity` pages, carved
/// into page slots. One contiguous pool is what an RDMA transport registers once.
/// Capacity is promised up front by `reserve` (at CREATE_REGION), so a slot
/// allocation for a write can never fail later.
final class PagePool: Sendable {
    static let pageSize = ProtocolLimits.pageSize

    let capacityPages: Int
    let baseAddress: UInt

    private struct Book {
        var reserved = 0
        var nextFresh = 0
        var freeSlots: [Int32] = []
    }
    private let book = Mutex(Book())

    init(capacityPages: Int) throws(Errno) {
        precondition(capacityPages > 0 && capacityPages < Int(Int32.max))
        self.capacityPages = capacityPages
        baseAddress = try MemoryMapping.anonymous(length: capacityPages * PagePool.pageSize, noReserve: true)
    }

    deinit { MemoryMapping.unmap(baseAddress, length: capacityPages * PagePool.pageSize) }

    func pointer(to slot: Int32) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: baseAddress + UInt(slot) * UInt(PagePool.pageSize))!
    }

    /// Promises `pages` of capacity; false when the server is full.
    func reserve(_ pages: Int) -> Bool {
        book.withLock { book in
            guard pages <= capacityPages - book.reserved else { return false }
            book.reserved += pages
            return true
        }
    }

    func unreserve(_ pages: Int) { book.withLock { $0.reserved -= pages } }

    /// Takes a slot; callers hold a reservation, so the pool cannot be empty.
    func allocate() -> Int32 {
        book.withLock { book in
            if let slot = book.freeSlots.popLast() { return slot }
            precondition(book.nextFresh < capacityPages, "page pool overcommitted: reservations are broken")
            defer { book.nextFresh += 1 }
            return Int32(book.nextFresh)
        }
    }

    /// Returns slots to the pool. Their contents are zeroed by MADV_DONTNEED so
    /// the memory goes back to the host and no page leaks into another session.
    func free(_ slots: [Int32]) {
        guard !slots.isEmpty else { return }
        for slot in slots {
            try? MemoryMapping.advise(UInt(bitPattern: pointer(to: slot)), length: PagePool.pageSize, .dontNeed)
        }
        book.withLock { $0.freeSlots.append(contentsOf: slots) }
    }

    var storedPages: Int { book.withLock { $0.nextFresh - $0.freeSlots.count } }
    var reservedPages: Int { book.withLock { $0.reserved } }
}
