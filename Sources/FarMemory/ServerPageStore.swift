import FarMemProtocol

/// A page store on one farmemd, over one `ServerLink`: TCP, with RDMA as the
/// data path when the link has a channel attached (falling back to TCP by
/// itself). Network failures are retried, reconnecting, for the retry window.
final class ServerPageStore: PageStore {
    let link: ServerLink
    /// This server's place in the cluster (0 alone): which of a region's RDMA remotes is its.
    let member: Int
    private let retryWindowSeconds: Double
    /// Expose new regions for one-sided RDMA (when the links use RDMA).
    private let exposesForRDMA: Bool
    private let onExposeFailure: (UInt64, String) -> Void

    /// The incarnation of the server this store's session belongs to (a
    /// cluster's; see `ClusterMembership`): RDMA goes only to the region's
    /// memory registered in that session.
    let incarnation: UInt64

    init(link: ServerLink, member: Int = 0, incarnation: UInt64 = 0, retryWindowSeconds: Double, exposesForRDMA: Bool = false,
         onExposeFailure: @escaping (UInt64, String) -> Void = { _, _ in }) {
        self.link = link
        self.member = member
        self.incarnation = incarnation
        self.retryWindowSeconds = retryWindowSeconds
        self.exposesForRDMA = exposesForRDMA
        self.onExposeFailure = onExposeFailure
    }

    /// Set when a request gave up after the whole retry window; cleared by
    /// the next success. While set, requests get one attempt, no window: a
    /// server that is gone must not cost every later fault (or a crash
    /// handler reading far pages on its way out) another window.
    private var gaveUp = false

    /// Runs `body` with the link's retries; a failure becomes a StoreError.
    private func withRetries(_ body: () throws(ServerLink.LinkError) -> Void) throws(StoreError) {
        let window = gaveUp ? 0 : retryWindowSeconds
        guard let failure = link.withRetries(windowSeconds: window, body) else {
            gaveUp = false
            return
        }
        if case .network(let text) = failure {
            gaveUp = true
            throw .unavailable(window > 0 ? "\(text); gave up after \(window) s" : "\(text); the server did not answer the last request either")
        }
        throw Self.storeError(failure)
    }

    /// Where the region's memory is on this server for one-sided RDMA: in a
    /// cluster, as published for this store's incarnation; nil: over TCP.
    @inline(__always)
    private func remote(_ region: StoreRegion) -> RemoteRegion? {
        if let copies = region.copies { return copies.remotes.remote(server: member, incarnation: incarnation) }
        return region.remote(on: member)
    }

    func read(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
              into buffer: UnsafeMutableRawPointer, inPlace: Bool) throws(StoreError) -> UnsafeRawPointer {
        var landed = UnsafeRawPointer(buffer)
        try withRetries { () throws(ServerLink.LinkError) in
            landed = try link.readPages(region: region.id, remote: remote(region), pages: pages, into: buffer, inPlace: inPlace)
        }
        return landed
    }

    func write(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
               source: (Int) -> UnsafeRawPointer) throws(StoreError) {
        try withRetries { () throws(ServerLink.LinkError) in
            try link.writePages(region: region.id, remote: remote(region), pages: pages, source: source)
        }
    }

    /// One attempt, no retries, in two halves (a replicated store writes all
    /// copies' first halves, then waits for them all): returns the request
    /// to finish, or nil when it is done already (RDMA).
    func startWrite(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
                    source: (Int) -> UnsafeRawPointer) throws(StoreError) -> UInt32? {
        do {
            return try link.startWritePages(region: region.id, remote: remote(region), pages: pages, source: source)
        } catch {
            throw Self.storeError(error)
        }
    }

    func finishWrite(_ request: UInt32, count: Int) throws(StoreError) {
        do { try link.finishWritePages(request, count: count) } catch { throw Self.storeError(error) }
    }

    private static func storeError(_ error: ServerLink.LinkError) -> StoreError {
        switch error {
        case .refused(let refusal) where refusal.code == .noSuchRegion: return .regionGone(refusal)
        case .refused(let refusal): return .refused(refusal)
        case .network(let text): return .unavailable(text)
        }
    }

    func discard(_ region: StoreRegion, first: Int, count: Int) throws(StoreError) {
        let payload = DiscardRange(regionID: region.id, firstPage: UInt64(first), pageCount: UInt64(count)).encode()
        try withRetries { () throws(ServerLink.LinkError) in try link.exchange(.discard, payload) }
    }

    /// One request, not retried (region set-up and statistics: the caller gets the error at once).
    @discardableResult
    private func exchangeOnce(_ opcode: Opcode, _ payload: [UInt8]) throws(StoreError) -> [UInt8] {
        do { return try link.exchange(opcode, payload) } catch { throw Self.storeError(error) }
    }

    func createRegion(id: UInt64, pageCount: Int) throws(StoreError) -> StoreRegion {
        try createRegion(id: id, pageCount: pageCount, reserving: pageCount)
    }

    /// Makes the region with `reserving` of its pages reserved (a cluster
    /// member holds only its share of the copies). A version-1 server, or a
    /// region exposed for RDMA (registration pins all of it), reserves all.
    func createRegion(id: UInt64, pageCount: Int, reserving: Int) throws(StoreError) -> StoreRegion {
        do { try link.connect() } catch { throw Self.storeError(error) }
        let partial = reserving < pageCount && link.protocolVersion >= 2 && !exposesForRDMA
        try exchangeOnce(.createRegion, RegionSpec(regionID: id, pageCount: UInt64(pageCount),
                                                   reservedPages: partial ? UInt64(reserving) : nil).encode())
        guard let remote = expose(id: id) else { return StoreRegion(id: id) }
        var remotes = [RemoteRegion?](repeating: nil, count: member + 1)
        remotes[member] = remote
        return StoreRegion(id: id, remotes: remotes)
    }

    /// Registers region `id` for one-sided RDMA (when this store exposes
    /// regions); the server answers an exposed one with its registration.
    /// Nil: the region's pages move over TCP on this server.
    func expose(id: UInt64) -> RemoteRegion? {
        guard exposesForRDMA else { return nil }
        do {
            let reply = try link.exchange(.rdmaExpose, RegionRef(regionID: id).encode())
            let exposed = try reply.withUnsafeBytes { try RDMAExposeReply.decode($0) }
            return RemoteRegion(address: exposed.address, rkey: exposed.rkey, length: exposed.length)
        } catch {
            onExposeFailure(id, "\(error)")
            return nil
        }
    }

    /// Sets the region's reservation on this server (a repair about to put
    /// more copies there); returns the reservation it has now. A version-1
    /// server reserved the whole region already.
    func reserve(_ region: StoreRegion, pages: Int, pageCount: Int) throws(StoreError) -> Int {
        do { try link.connect() } catch { throw Self.storeError(error) }
        guard link.protocolVersion >= 2 else { return pageCount }
        let reply = try exchangeOnce(.reserve, Reservation(regionID: region.id, reservedPages: UInt64(pages)).encode())
        do throws(ProtocolError) {
            return Int(try reply.withUnsafeBufferPointer { buffer throws(ProtocolError) in
                try Reservation.decodeReply(UnsafeRawBufferPointer(buffer))
            })
        } catch {
            throw .refused(error)
        }
    }

    func dropRegion(_ region: StoreRegion) {
        _ = try? link.exchange(.dropRegion, RegionRef(regionID: region.id).encode())
    }

    /// The server's STATS reply (encoded ServerStats).
    func statistics() throws(StoreError) -> [UInt8] { try exchangeOnce(.stats, []) }

    func probe() -> Bool { (try? statistics()) != nil }

    func closeConnections() { link.close() }
}
