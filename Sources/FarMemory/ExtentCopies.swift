import CFarMemSys
import Synchronization

/// Where a cluster region's copies are, extent by extent, and the writes
/// under way to each extent. Shared by every pager thread and the repair
/// worker, so it is atomics only (no lock on the fault path; the
/// reservations, which only region set-up and repairs use, have one).
///
/// - `holders`: the servers whose copy of the extent is complete and current.
///   Reads go only there (and only to servers still up).
/// - `joining`: a server a repair is filling. Writes go to holders and joining
///   servers, so a repair never misses a write made while it copies.
/// - `writesStarted`/`writesFinished`: bumped around every write or discard.
///   A repair copies only while none is under way and keeps its copy only if
///   none started meanwhile (else it copies again): a copy it read before a
///   write landed can never overwrite that write on the new server.
/// - `moves`: bumped when a holder is removed (a rebalance moved the copy),
///   before that server's copy is discarded. A read checks it did not move
///   while the read was under way, else it may have read a discarded copy.
final class ExtentCopies: @unchecked Sendable {
    let pageCount: Int
    let extentCount: Int
    private let words: UnsafeMutablePointer<UInt64>   // `stride` per extent
    private static let stride = 5
    private static let (holdersWord, joiningWord, startedWord, finishedWord, movesWord) = (0, 1, 2, 3, 4)
    @inline(__always) private func word(_ extent: Int, _ which: Int) -> UnsafeMutablePointer<UInt64> {
        words + extent * Self.stride + which
    }

    /// Pages of capacity each server reserved for the region (by server index).
    private let reservations: Mutex<[Int]>
    /// The region's memory on each server (incarnation) for one-sided RDMA.
    let remotes = RemoteDirectory(servers: 64)

    init(pageCount: Int, regionServers: Placement.ServerSet, reservations: [Int] = [],
         initialHolders: (Int) -> Placement.ServerSet) {
        self.pageCount = pageCount
        self.reservations = Mutex(reservations + [Int](repeating: 0, count: max(0, 64 - reservations.count)))
        extentCount = (pageCount + Placement.extentPages - 1) / Placement.extentPages
        words = .allocate(capacity: extentCount * Self.stride)
        words.initialize(repeating: 0, count: extentCount * Self.stride)
        for extent in 0..<extentCount { word(extent, Self.holdersWord).pointee = initialHolders(extent) }
        regionWords.initialize(to: 0)
        (regionWords + 1).initialize(to: regionServers)
    }

    deinit {
        words.deallocate()
        regionWords.deallocate()
    }

    /// [0]: closed by this client; [1]: the servers the region exists on.
    private let regionWords = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)

    /// Closed by this client: its pages being gone on a server says nothing
    /// about the server (a write-back that raced the close).
    var isClosed: Bool { fm_atomic_load_sc_u64(regionWords) != 0 }
    func markClosed() { _ = fm_atomic_or_sc_u64(regionWords, 1) }

    /// The servers the region was created on (a repair creates it on more).
    var regionServers: Placement.ServerSet { fm_atomic_load_sc_u64(regionWords + 1) }
    func addRegionServer(_ server: Int) { _ = fm_atomic_or_sc_u64(regionWords + 1, 1 << UInt64(server)) }

    func reservation(_ server: Int) -> Int { reservations.withLock { $0[server] } }
    func setReservation(_ server: Int, _ pages: Int) { reservations.withLock { $0[server] = pages } }

    /// Pages in the extents `server` holds or is being filled with, plus
    /// `extent`: the reservation it needs to take that extent too.
    func pagesPlaced(on server: Int, adding extent: Int? = nil) -> Int {
        let bit = UInt64(1) << UInt64(server)
        var total = 0
        for other in 0..<extentCount where other == extent || writeTargets(other) & bit != 0 { total += pages(in: other) }
        return total
    }

    func pages(in extent: Int) -> Int { min(Placement.extentPages, pageCount - extent * Placement.extentPages) }

    /// A server rejoins empty: it holds no copy, no region, nothing joining.
    func forget(_ server: Int) {
        setReservation(server, 0)
        let keep = ~(UInt64(1) << UInt64(server))
        _ = fm_atomic_and_sc_u64(regionWords + 1, keep)
        for extent in 0..<extentCount {
            _ = fm_atomic_and_sc_u64(word(extent, Self.holdersWord), keep)
            _ = fm_atomic_and_sc_u64(word(extent, Self.joiningWord), keep)
        }
    }

    @inline(__always) func holders(_ extent: Int) -> Placement.ServerSet { fm_atomic_load_sc_u64(word(extent, Self.holdersWord)) }
    @inline(__always) func joining(_ extent: Int) -> Placement.ServerSet { fm_atomic_load_sc_u64(word(extent, Self.joiningWord)) }
    /// Where a write to the extent must go.
    @inline(__always) func writeTargets(_ extent: Int) -> Placement.ServerSet { holders(extent) | joining(extent) }

    @inline(__always) func beginWrite(_ extent: Int) { _ = fm_atomic_add_sc_u64(word(extent, Self.startedWord), 1) }
    @inline(__always) func endWrite(_ extent: Int) { _ = fm_atomic_add_sc_u64(word(extent, Self.finishedWord), 1) }

    /// (started, finished): equal when no write was under way. Finished is
    /// loaded first: equal counts then mean none was under way at that load
    /// (loaded the other way round, a write that started and finished in
    /// between could hide one still under way).
    func writes(_ extent: Int) -> (started: UInt64, finished: UInt64) {
        let finished = fm_atomic_load_sc_u64(word(extent, Self.finishedWord))
        return (fm_atomic_load_sc_u64(word(extent, Self.startedWord)), finished)
    }

    func writesUnderWay(_ extent: Int) -> Bool { let w = writes(extent); return w.started != w.finished }

    /// How many times a copy of the extent was moved away (see `moves` above).
    @inline(__always) func moves(_ extent: Int) -> UInt64 { fm_atomic_load_sc_u64(word(extent, Self.movesWord)) }

    func startJoining(_ extent: Int, _ server: Int) { _ = fm_atomic_or_sc_u64(word(extent, Self.joiningWord), 1 << UInt64(server)) }
    func stopJoining(_ extent: Int, _ server: Int) { _ = fm_atomic_and_sc_u64(word(extent, Self.joiningWord), ~(1 << UInt64(server))) }
    /// The repair is done: `server` holds a current copy.
    func addHolder(_ extent: Int, _ server: Int) {
        _ = fm_atomic_or_sc_u64(word(extent, Self.holdersWord), 1 << UInt64(server))
        stopJoining(extent, server)
    }

    /// A rebalance moved the copy away from `server`: no read or write goes
    /// there from now on, and a read under way notices (`moves`). Only then
    /// may the server's copy be discarded.
    func removeHolder(_ extent: Int, _ server: Int) {
        _ = fm_atomic_and_sc_u64(word(extent, Self.holdersWord), ~(1 << UInt64(server)))
        _ = fm_atomic_add_sc_u64(word(extent, Self.movesWord), 1)
    }
}
