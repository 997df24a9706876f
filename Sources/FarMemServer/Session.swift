import FarMemProtocol
import Synchronization

/// One client's namespace of regions. Every connection that presented the same
/// 128-bit session key in HELLO shares it; no other connection can name it.
/// The session lives while at least one of its connections is open.
final class Session: Sendable {
    let key: SessionKey
    private let pool: PagePool
    private let state: Mutex<State>

    /// Page table of one region: slot per page, -1 where never written.
    struct Region {
        var reservedPages: Int
        var slots: [Int32]
    }

    struct State {
        var regions: [UInt64: Region] = [:]
        var connections = 0
        var storedPages = 0
    }

    init(key: SessionKey, pool: PagePool) {
        self.key = key
        self.pool = pool
        self.state = Mutex(State())
    }

    func attach() { state.withLock { $0.connections += 1 } }

    /// Returns true when this was the last connection: the caller then removes the session.
    func detach() -> Bool { state.withLock { $0.connections -= 1; return $0.connections == 0 } }

    func createRegion(_ spec: RegionSpec) throws(ProtocolError) {
        let pages = Int(clamping: spec.pageCount)
        guard pages >= 1, pages <= Int(Int32.max) else {
            throw ProtocolError(.tooLarge, "region of \(spec.pageCount) pages: allowed 1...\(Int32.max)")
        }
        let result: ProtocolError? = state.withLock { state in
            guard state.regions[spec.regionID] == nil else {
                return ProtocolError(.regionExists, "region \(spec.regionID) already exists in this session")
            }
            guard pool.reserve(pages) else {
                return ProtocolError(.outOfCapacity,
                    "server out of capacity: region needs \(pages) pages, \(pool.capacityPages - pool.reservedPages) of \(pool.capacityPages) unreserved")
            }
            state.regions[spec.regionID] = Region(reservedPages: pages, slots: Array(repeating: -1, count: pages))
            return nil
        }
        if let result { throw result }
    }

    func dropRegion(_ id: UInt64) throws(ProtocolError) {
        let freed: [Int32]? = state.withLock { state in
            guard let region = state.regions.removeValue(forKey: id) else { return nil }
            let slots = region.slots.filter { $0 >= 0 }
            state.storedPages -= slots.count
            pool.unreserve(region.reservedPages)
            return slots
        }
        guard let freed else { throw ProtocolError(.noSuchRegion, "no region \(id) in this session") }
        pool.free(freed)
    }

    /// Frees everything the session holds (its last connection closed).
    func dropAll() {
        let all = state.withLock { state in state.regions.keys.map { $0 } }
        for id in all { try? dropRegion(id) }
    }

    /// Copies pages into `out` (count x pageSize bytes). Never-written pages read as zeros.
    func readPages(region id: UInt64, pages: [UInt64], into out: UnsafeMutableRawPointer) throws(ProtocolError) {
        let size = PagePool.pageSize
        let result: ProtocolError? = state.withLock { state in
            guard let region = state.regions[id] else { return ProtocolError(.noSuchRegion, "no region \(id) in this session") }
            for (i, page) in pages.enumerated() {
                guard page < UInt64(region.slots.count) else {
                    return ProtocolError(.pageOutOfRange, "page \(page) is outside region \(id) of \(region.slots.count) pages")
                }
                let slot = region.slots[Int(page)]
                if slot < 0 {
                    (out + i * size).initializeMemory(as: UInt8.self, repeating: 0, count: size)
                } else {
                    (out + i * size).copyMemory(from: pool.pointer(to: slot), byteCount: size)
                }
            }
            return nil
        }
        if let result { throw result }
    }

    /// Stores pages. All page numbers are checked before any page is written,
    /// so a bad batch changes nothing.
    func writePages(region id: UInt64, pages: [UInt64], from data: UnsafeRawPointer) throws(ProtocolError) {
        let size = PagePool.pageSize
        let result: ProtocolError? = state.withLock { state in
            guard var region = state.regions[id] else { return ProtocolError(.noSuchRegion, "no region \(id) in this session") }
            if let bad = pages.first(where: { $0 >= UInt64(region.slots.count) }) {
                return ProtocolError(.pageOutOfRange, "page \(bad) is outside region \(id) of \(region.slots.count) pages")
            }
            state.regions[id] = nil   // take ownership to mutate in place without a copy
            for (i, page) in pages.enumerated() {
                var slot = region.slots[Int(page)]
                if slot < 0 {
                    slot = pool.allocate()
                    region.slots[Int(page)] = slot
                    state.storedPages += 1
                }
                pool.pointer(to: slot).copyMemory(from: data + i * size, byteCount: size)
            }
            state.regions[id] = region
            return nil
        }
        if let result { throw result }
    }

    func discard(_ range: DiscardRange) throws(ProtocolError) {
        let freed: Result<[Int32], ProtocolError> = state.withLock { state in
            guard var region = state.regions[range.regionID] else {
                return .failure(ProtocolError(.noSuchRegion, "no region \(range.regionID) in this session"))
            }
            let count = UInt64(region.slots.count)
            guard range.firstPage < count, range.pageCount <= count - range.firstPage else {
                return .failure(ProtocolError(.pageOutOfRange,
                    "discard of pages \(range.firstPage)+\(range.pageCount) is outside region \(range.regionID) of \(count) pages"))
            }
            state.regions[range.regionID] = nil
            var slots: [Int32] = []
            for page in Int(range.firstPage)..<Int(range.firstPage + range.pageCount) where region.slots[page] >= 0 {
                slots.append(region.slots[page])
                region.slots[page] = -1
            }
            state.storedPages -= slots.count
            state.regions[range.regionID] = region
            return .success(slots)
        }
        pool.free(try freed.get())
    }

    func fill(_ stats: inout ServerStats) {
        state.withLock { state in
            stats.sessionRegions = UInt64(state.regions.count)
            stats.sessionReservedPages = UInt64(state.regions.values.reduce(0) { $0 + $1.reservedPages })
            stats.sessionStoredPages = UInt64(state.storedPages)
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
    private let pool: PagePool

    init(pool: PagePool) { self.pool = pool }

    func attach(key: SessionKey) -> Session {
        sessions.withLock { table in
            let session = table[key] ?? Session(key: key, pool: pool)
            table[key] = session
            session.attach()
            return session
        }
    }

    func detach(_ session: Session) {
        let last: Bool = sessions.withLock { table in
            guard session.detach() else { return false }
            table[session.key] = nil
            return true
        }
        if last { session.dropAll() }
    }

    var count: Int { sessions.withLock { $0.count } }
}
