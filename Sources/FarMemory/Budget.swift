/// One shard's share of the local-memory budget: what it counts, and the
/// decisions that follow from the counts. Owned by the handler thread.
struct Budget: Equatable {
    /// Pages this shard may hold: resident, plus staged until their slots are emptied.
    private(set) var limit: Int
    /// Pages moved out per eviction round.
    let batchSize: Int
    /// Eviction starts above this many resident pages: two batches below the
    /// limit, so eviction runs ahead of the throttle and staged pages still
    /// fit while the evictor catches up.
    private(set) var highWater: Int
    /// Installed by this handler and not moved out (unevictable ones excluded).
    var resident = 0
    /// Moved into staging; their slots are not emptied yet.
    var staged = 0
    /// Resident pages the kernel will not let FarMem move: outside the budget.
    var unevictable = 0

    init(limit: Int, batchSize: Int) {
        self.limit = limit
        self.batchSize = batchSize
        highWater = max(limit - 2 * batchSize, batchSize)
    }

    /// `pages` of the budget go to another use (the probation area, once an
    /// anonymous region is there to use it): eviction makes room.
    mutating func lower(by pages: Int) {
        limit -= pages
        highWater = max(limit - 2 * batchSize, batchSize)
    }

    /// An eviction round is due.
    var needsEviction: Bool { resident > highWater }
    /// Where an eviction round stops: half a batch below the high-water mark.
    var evictionTarget: Int { highWater - batchSize / 2 }
    /// At the limit: a new page waits until eviction has made room.
    var isFull: Bool { resident + staged >= limit }
    /// Pages that may still come in before the limit (room for prefetching).
    var headroom: Int { limit - resident - staged }
    /// Pages held above the limit (write-backs draining), or 0.
    var overshoot: Int { max(0, resident + staged - limit) }
    /// Memory is over the high-water mark once the pages set aside outside
    /// the budget are counted too: worth trying to move those again.
    var overHighWaterWithUnevictable: Bool { resident + unevictable > highWater }

    /// The gauges in the statistics.
    func publish(to counters: PagerCounters) {
        counters.set(.residentPages, UInt64(resident))
        counters.set(.stagedPages, UInt64(staged))
        counters.set(.unevictablePages, UInt64(unevictable))
        if overshoot > 0, UInt64(overshoot) > counters.get(.budgetOvershoot) { counters.set(.budgetOvershoot, UInt64(overshoot)) }
    }
}
