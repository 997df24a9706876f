import CFarMemSys

/// Where a cluster region's copies are, extent by extent, and the writes
/// under way to each extent. Shared by every pager thread and the repair
/// worker, so it is atomics only (no lock on the fault path).
///
/// - `holders`: the servers whose copy of the extent is complete and current.
///   Reads go only there (and only to servers still up).
/// - `joining`: a server a repair is filling. Writes go to holders and joining
///   servers, so a repair never misses a write made while it copies.
/// - `writesStarted`/`writesFinished`: bumped around every write or discard.
///   A repair copies only while none is under way and keeps its copy only if
///   none started meanwhile (else it copies again): a copy it read before a
///   write landed can never overwrite that write on the new server.
final class ExtentCopies: @unchecked Sendable {
    let pageCount: Int
    let extentCount: Int
    private let words: UnsafeMutablePointer<UInt64>   // 4 per extent

    init(pageCount: Int, regionServers: Placement.ServerSet, initialHolders: (Int) -> Placement.ServerSet) {
        self.pageCount = pageCount
        extentCount = (pageCount + Placement.extentPages - 1) / Placement.extentPages
        words = .allocate(capacity: extentCount * 4)
        words.initialize(repeating: 0, count: extentCount * 4)
        for extent in 0..<extentCount { words[extent * 4] = initialHolders(extent) }
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

    /// A server rejoins empty: it holds no copy, no region, nothing joining.
    func forget(_ server: Int) {
        let keep = ~(UInt64(1) << UInt64(server))
        _ = fm_atomic_and_sc_u64(regionWords + 1, keep)
        for extent in 0..<extentCount {
            _ = fm_atomic_and_sc_u64(words + extent * 4, keep)
            _ = fm_atomic_and_sc_u64(words + extent * 4 + 1, keep)
        }
    }

    @inline(__always) func holders(_ extent: Int) -> Placement.ServerSet { fm_atomic_load_sc_u64(words + extent * 4) }
    @inline(__always) func joining(_ extent: Int) -> Placement.ServerSet { fm_atomic_load_sc_u64(words + extent * 4 + 1) }
    /// Where a write to the extent must go.
    @inline(__always) func writeTargets(_ extent: Int) -> Placement.ServerSet { holders(extent) | joining(extent) }

    @inline(__always) func beginWrite(_ extent: Int) { _ = fm_atomic_add_sc_u64(words + extent * 4 + 2, 1) }
    @inline(__always) func endWrite(_ extent: Int) { _ = fm_atomic_add_sc_u64(words + extent * 4 + 3, 1) }

    /// (started, finished): equal when no write is under way.
    func writes(_ extent: Int) -> (started: UInt64, finished: UInt64) {
        (fm_atomic_load_sc_u64(words + extent * 4 + 2), fm_atomic_load_sc_u64(words + extent * 4 + 3))
    }

    func startJoining(_ extent: Int, _ server: Int) { _ = fm_atomic_or_sc_u64(words + extent * 4 + 1, 1 << UInt64(server)) }
    func stopJoining(_ extent: Int, _ server: Int) { _ = fm_atomic_and_sc_u64(words + extent * 4 + 1, ~(1 << UInt64(server))) }
    /// The repair is done: `server` holds a current copy.
    func addHolder(_ extent: Int, _ server: Int) {
        _ = fm_atomic_or_sc_u64(words + extent * 4, 1 << UInt64(server))
        stopJoining(extent, server)
    }
}
