import FarMemSystem

/// Faults the handler holds back, oldest first: while the budget is full
/// (until eviction makes room) or while an event is pending (EAGAIN; until it
/// has been read). Events keep being read meanwhile.
///
/// It holds at most one fault per page: serving a held fault wakes every
/// thread waiting on that page (UFFDIO_COPY and UFFDIO_WAKE wake the whole
/// page; a parked fault's page is woken when its write-back ends), so a
/// second message for the same page adds nothing. That bounds it by the
/// pages threads wait on; past its capacity it grows (a rare allocation)
/// rather than serve a fault out of turn, which is what once recursed.
struct DeferredFaults {
    private var storage: UnsafeMutablePointer<PageFault>
    private(set) var capacity: Int
    private var head = 0
    private(set) var count = 0

    init(capacity: Int) {
        self.capacity = max(capacity, 1)
        storage = .allocate(capacity: self.capacity)
    }

    func deallocate() { storage.deallocate() }

    var isEmpty: Bool { count == 0 }

    /// Holds `fault` unless a fault for the same page of the same process is
    /// already held. Returns false for such a duplicate (it needs no reply of
    /// its own: serving the first wakes every waiter on that userfaultfd; a
    /// forked child's fault at the same address is another process's).
    @discardableResult
    mutating func append(_ fault: PageFault) -> Bool {
        let page = fault.page, origin = fault.origin
        for i in 0..<count {
            let held = storage[(head + i) % capacity]
            if held.page == page, held.origin == origin { return false }
        }
        if count == capacity { grow() }
        storage[(head + count) % capacity] = fault
        count += 1
        return true
    }

    /// The oldest held fault, taken out (so serving it may hold it again).
    mutating func popFirst() -> PageFault? {
        guard count > 0 else { return nil }
        let fault = storage[head]
        head = (head + 1) % capacity
        count -= 1
        return fault
    }

    private mutating func grow() {
        let fresh = UnsafeMutablePointer<PageFault>.allocate(capacity: capacity * 2)
        for i in 0..<count { fresh[i] = storage[(head + i) % capacity] }
        storage.deallocate()
        storage = fresh
        capacity *= 2
        head = 0
    }
}
