import FarMemProtocol
import FarMemSystem
import Synchronization

/// One client's namespace of regions. Every connection that presented the same
/// 128-bit session key in HELLO shares it; no other connection can name it.
/// The session lives while at least one of its connections is open.
final class Session: @unchecked Sendable {
    let key: SessionKey
    private let ledger: CapacityLedger
    /// The tenant whose key opened the session (servers with a keys file):
    /// its reservations count against that tenant's quota too.
    let tenant: TenantAccount?
    /// Set once its last TCP connection has closed; an ended session never comes back.
    let ended = Atomic<Bool>(false)
    private let lock = Lock()
    private var _state = State()

    struct State {
        var regions: [UInt64: RegionStore] = [:]
        var connections = 0
        /// The newest generation fenced for each link (FENCE).
        var fences: [UInt32: UInt32] = [:]
    }

    init(key: SessionKey, ledger: CapacityLedger, tenant: TenantAccount? = nil) {
        self.key = key
        self.ledger = ledger
        self.tenant = tenant
    }

    /// Reserves server capacity (and tenant quota) or throws OUT_OF_CAPACITY
    /// saying which ran out; `what` starts the message.
    private func claim(_ pages: Int, _ what: String) throws(ProtocolError) {
        if let tenant, let refusal = tenant.reserve(pages) { throw ProtocolError(.outOfCapacity, refusal) }
        guard ledger.reserve(pages) else {
            tenant?.release(pages)
            throw ProtocolError(.outOfCapacity,
                "server out of capacity: \(what), \(ledger.unreservedPages) of \(ledger.capacityPages) unreserved")
        }
    }

    private func give(_ pages: Int) {
        ledger.release(pages)
        tenant?.release(pages)
    }

    private func addStored(_ delta: Int) {
        ledger.addStored(delta)
        tenant?.addStored(delta)
    }

    /// Runs `body` on the session's state under its lock.
    private func locked<T, E: Error>(_ body: (inout State) throws(E) -> T) throws(E) -> T {
        try lock.withLock { () throws(E) -> T in try body(&_state) }
    }

    func attach() { locked { $0.connections += 1 } }

    /// Returns true when this was the last connection: the caller then removes the session.
    func detach() -> Bool { locked { $0.connections -= 1; return $0.connections == 0 } }


    /// Runs `body` on a region under the session's lock. With a fence (the
    /// connection's), only while no newer connection of its link has fenced.
    func withRegion<T>(_ id: UInt64, fence: Fence? = nil, _ body: (RegionStore) throws(ProtocolError) -> T) throws(ProtocolError) -> T {
        try locked { state throws(ProtocolError) -> T in
            if let fence, let newest = state.fences[fence.link], newest != fence.generation {
                throw ProtocolError(.fenced, "link \(fence.link) reconnected (generation \(newest)); this connection "
                                    + "(generation \(fence.generation)) may no longer change pages")
            }
            guard let region = state.regions[id] else { throw ProtocolError(.noSuchRegion, "no region \(id) in this session") }
            return try body(region)
        }
    }

    /// FENCE: from now on only connections of `fence.link` with this
    /// generation (or a newer one, when it comes) change pages.
    func fence(_ fence: Fence) throws(ProtocolError) {
        try locked { state throws(ProtocolError) in
            if let newest = state.fences[fence.link], newest > fence.generation {
                throw ProtocolError(.fenced, "link \(fence.link) is at generation \(newest); \(fence.generation) is older")
            }
            state.fences[fence.link] = fence.generation
        }
    }

    func createRegion(_ spec: RegionSpec) throws(ProtocolError) {
        guard spec.pageCount >= 1, spec.pageCount <= UInt64(Int32.max) else {
            throw ProtocolError(.tooLarge, "region of \(spec.pageCount) pages: allowed 1...\(Int32.max)")
        }
        let pages = Int(spec.pageCount)
        let reserved = Int(spec.reservedPages ?? spec.pageCount)
        try locked { state throws(ProtocolError) in
            guard state.regions[spec.regionID] == nil else {
                throw ProtocolError(.regionExists, "region \(spec.regionID) already exists in this session")
            }
            try claim(reserved, "region needs \(reserved) pages")
            do {
                state.regions[spec.regionID] = try RegionStore(pageCount: pages, reservedPages: reserved)
            } catch {
                give(reserved)
                throw ProtocolError(.outOfCapacity, "server cannot map \(pages) pages: \(error)")
            }
        }
    }

    /// Sets a region's reservation (RESERVE): a growth the server cannot
    /// promise is refused and changes nothing; a shrink below the pages the
    /// region holds stops at that count (an RDMA-exposed region stays whole).
    /// Returns the reservation now.
    func reserve(_ request: Reservation) throws(ProtocolError) -> Int {
        try withRegion(request.regionID) { region throws(ProtocolError) -> Int in
            guard request.reservedPages <= UInt64(region.pageCount) else {
                throw ProtocolError(.pageOutOfRange,
                    "RESERVE of \(request.reservedPages) pages: region \(request.regionID) has \(region.pageCount)")
            }
            // An RDMA-registered region is pinned whole (and its RDMA writes are not counted).
            let floor = region.pinned ? region.pageCount : region.writtenCount
            return try setReservation(region, max(Int(request.reservedPages), floor))
        }
    }

    /// Reserves the whole region (RDMA registration pins all of it).
    func reserveWhole(_ id: UInt64) throws(ProtocolError) {
        try withRegion(id) { region throws(ProtocolError) in _ = try setReservation(region, region.pageCount) }
    }

    /// Publishes an RDMA registration of `region` (if it is still region `id`)
    /// and returns the one in use: an earlier one if two raced. The region is
    /// pinned whole from now on, so it is reserved whole here, under the same
    /// lock (a RESERVE may have lowered it since `reserveWhole`).
    func publishRegistration(_ registration: UnsafeMutableRawPointer, of region: RegionStore, id: UInt64) throws(ProtocolError) -> UnsafeMutableRawPointer {
        try withRegion(id) { current throws(ProtocolError) -> UnsafeMutableRawPointer in
            guard current === region else { throw ProtocolError(.noSuchRegion, "region \(id) was dropped meanwhile") }
            if let other = current.registration { return other }
            _ = try setReservation(current, current.pageCount)
            current.registration = registration
            return registration
        }
    }

    private func setReservation(_ region: RegionStore, _ pages: Int) throws(ProtocolError) -> Int {
        let growth = pages - region.reservedPages
        if growth > 0 {
            try claim(growth, "\(growth) more pages asked")
        } else if growth < 0 {
            give(-growth)
        }
        region.reservedPages = pages
        return pages
    }

    /// Removes a region. Its store is freed (RDMA registration released, memory
    /// unmapped) when this returns, outside the session's lock.
    func removeRegion(_ id: UInt64) throws(ProtocolError) {
        let region = try locked { state throws(ProtocolError) -> RegionStore in
            guard let region = state.regions.removeValue(forKey: id) else {
                throw ProtocolError(.noSuchRegion, "no region \(id) in this session")
            }
            return region
        }
        give(region.reservedPages)
        addStored(-region.writtenCount)
    }

    var regionIDs: [UInt64] { locked { Array($0.regions.keys) } }

    /// Copies pages into `out` (count x pageSize bytes). Never-written pages read as zeros.
    func readPages(region id: UInt64, pages: [UInt64], into out: UnsafeMutableRawPointer) throws(ProtocolError) {
        try withRegion(id) { region throws(ProtocolError) in
            for (i, page) in pages.enumerated() {
                guard page < UInt64(region.pageCount) else {
                    throw ProtocolError(.pageOutOfRange, "page \(page) is outside region \(id) of \(region.pageCount) pages")
                }
                (out + i * 4096).copyMemory(from: region.pointer(Int(page)), byteCount: 4096)
            }
        }
    }

    /// Stores pages. All page numbers, and the reservation, are checked before
    /// any page is written, so a refused batch changes nothing.
    func writePages(region id: UInt64, pages: [UInt64], from data: UnsafeRawPointer, fence: Fence? = nil) throws(ProtocolError) {
        try withRegion(id, fence: fence) { region throws(ProtocolError) in
            if let bad = pages.first(where: { $0 >= UInt64(region.pageCount) }) {
                throw ProtocolError(.pageOutOfRange, "page \(bad) is outside region \(id) of \(region.pageCount) pages")
            }
            // Only a partly reserved region can run out (a page listed twice is new once).
            if region.writtenCount + pages.count > region.reservedPages {
                var new = 0
                for (i, page) in pages.enumerated() where !region.isWritten(Int(page)) && !pages[..<i].contains(page) { new += 1 }
                guard region.writtenCount + new <= region.reservedPages else {
                    throw ProtocolError(.outOfCapacity,
                        "region \(id) would hold \(region.writtenCount + new) pages; \(region.reservedPages) are reserved (RESERVE more first)")
                }
            }
            var fresh = 0
            for (i, page) in pages.enumerated() {
                region.pointer(Int(page)).copyMemory(from: data + i * 4096, byteCount: 4096)
                if region.markWritten(Int(page)) { fresh += 1 }
            }
            addStored(fresh)
        }
    }

    func discard(_ range: DiscardRange, fence: Fence? = nil) throws(ProtocolError) {
        try withRegion(range.regionID, fence: fence) { region throws(ProtocolError) in
            let count = UInt64(region.pageCount)
            guard range.firstPage < count, range.pageCount <= count - range.firstPage else {
                throw ProtocolError(.pageOutOfRange,
                    "discard of pages \(range.firstPage)+\(range.pageCount) is outside region \(range.regionID) of \(count) pages")
            }
            addStored(-region.discard(first: Int(range.firstPage), count: Int(range.pageCount)))
        }
    }

    /// Regions registered for RDMA now, and their bytes (pinned), for metrics.
    var registrations: (count: Int, bytes: Int) {
        locked { state in
            state.regions.values.reduce((0, 0)) { $1.pinned ? ($0.0 + 1, $0.1 + $1.length) : $0 }
        }
    }

    func fill(_ stats: inout ServerStats) {
        locked { state in
            stats.sessionRegions = UInt64(state.regions.count)
            stats.sessionReservedPages = UInt64(state.regions.values.reduce(0) { $0 + $1.reservedPages })
            stats.sessionStoredPages = UInt64(state.regions.values.reduce(0) { $0 + $1.writtenCount })
        }
        if let tenant {
            stats.tenant = ServerStats.Tenant(name: tenant.name, quotaPages: UInt64(tenant.quotaPages),
                                              reservedPages: UInt64(tenant.reservedPages), storedPages: UInt64(tenant.storedPages))
        }
    }
}

/// The 16 random bytes that name a session.
struct SessionKey: Hashable, Sendable {
    let high: UInt64
    let low: UInt64
    init(_ bytes: [UInt8]) {
        precondition(bytes.count == 16)
        high = bytes[0..<8].reduce(0) { $0 << 8 | UInt64($1) }
        low = bytes[8..<16].reduce(0) { $0 << 8 | UInt64($1) }
    }
}

/// All live sessions of a server.
final class SessionTable: Sendable {
    private let sessions = Mutex<[SessionKey: Session]>([:])
    private let ledger: CapacityLedger

    init(ledger: CapacityLedger) { self.ledger = ledger }

    /// Joins (or starts) the session named `key`; nil when it belongs to
    /// another tenant (a key is only ever shared by one client's connections).
    func attach(key: SessionKey, tenant: TenantAccount? = nil) -> Session? {
        sessions.withLock { table in
            if let existing = table[key], existing.tenant !== tenant { return nil }
            let session = table[key] ?? Session(key: key, ledger: ledger, tenant: tenant)
            if table[key] == nil { tenant?.sessions.add(1, ordering: .relaxed) }
            table[key] = session
            session.attach()
            return session
        }
    }

    /// Detaches a connection; returns the session if that was its last one
    /// (the caller frees its regions).
    func detach(_ session: Session) -> Session? {
        sessions.withLock { table in
            guard session.detach() else { return nil }
            if table[session.key] === session { table[session.key] = nil }
            session.tenant?.sessions.subtract(1, ordering: .relaxed)
            session.ended.store(true, ordering: .releasing)
            return session
        }
    }

    var count: Int { sessions.withLock { $0.count } }

    /// The live sessions now (a snapshot, for metrics).
    var all: [Session] { sessions.withLock { Array($0.values) } }
}
