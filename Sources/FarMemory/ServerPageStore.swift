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

    init(link: ServerLink, member: Int = 0, retryWindowSeconds: Double, exposesForRDMA: Bool = false,
         onExposeFailure: @escaping (UInt64, String) -> Void = { _, _ in }) {
        self.link = link
        self.member = member
        self.retryWindowSeconds = retryWindowSeconds
        self.exposesForRDMA = exposesForRDMA
        self.onExposeFailure = onExposeFailure
    }

    /// Runs `body` with the link's retries; a failure becomes a StoreError.
    private func withRetries(_ body: () throws(ServerLink.LinkError) -> Void) throws(StoreError) {
        guard let failure = link.withRetries(windowSeconds: retryWindowSeconds, body) else { return }
        switch failure {
        case .refused(let refusal) where refusal.code == .noSuchRegion: throw .regionGone(refusal)
        case .refused(let refusal): throw .refused(refusal)
        case .network(let text): throw .unavailable("\(text); gave up after \(retryWindowSeconds) s")
        }
    }

    func read(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
              into buffer: UnsafeMutableRawPointer) throws(StoreError) -> UnsafeRawPointer {
        var landed = UnsafeRawPointer(buffer)
        try withRetries { () throws(ServerLink.LinkError) in
            landed = try link.readPages(region: region.id, remote: region.remote(on: member), pages: pages, into: buffer)
        }
        return landed
    }

    func write(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
               source: (Int) -> UnsafeRawPointer) throws(StoreError) {
        try withRetries { () throws(ServerLink.LinkError) in
            try link.writePages(region: region.id, remote: region.remote(on: member), pages: pages, source: source)
        }
    }

    func discard(_ region: StoreRegion, first: Int, count: Int) throws(StoreError) {
        let payload = DiscardRange(regionID: region.id, firstPage: UInt64(first), pageCount: UInt64(count)).encode()
        try withRetries { () throws(ServerLink.LinkError) in try link.exchange(.discard, payload) }
    }

    /// One request, not retried (region set-up and statistics: the caller gets the error at once).
    @discardableResult
    private func exchangeOnce(_ opcode: Opcode, _ payload: [UInt8]) throws(StoreError) -> [UInt8] {
        do {
            return try link.exchange(opcode, payload)
        } catch {
            switch error {
            case .refused(let refusal) where refusal.code == .noSuchRegion: throw .regionGone(refusal)
            case .refused(let refusal): throw .refused(refusal)
            case .network(let text): throw .unavailable(text)
            }
        }
    }

    func createRegion(id: UInt64, pageCount: Int) throws(StoreError) -> StoreRegion {
        try exchangeOnce(.createRegion, RegionSpec(regionID: id, pageCount: UInt64(pageCount)).encode())
        guard exposesForRDMA else { return StoreRegion(id: id) }
        do {
            let reply = try link.exchange(.rdmaExpose, RegionRef(regionID: id).encode())
            let exposed = try reply.withUnsafeBytes { try RDMAExposeReply.decode($0) }
            var remotes = [RemoteRegion?](repeating: nil, count: member + 1)
            remotes[member] = RemoteRegion(address: exposed.address, rkey: exposed.rkey, length: exposed.length)
            return StoreRegion(id: id, remotes: remotes)
        } catch {
            onExposeFailure(id, "\(error)")
            return StoreRegion(id: id)
        }
    }

    func dropRegion(_ region: StoreRegion) {
        _ = try? link.exchange(.dropRegion, RegionRef(regionID: region.id).encode())
    }

    /// The server's STATS reply (encoded ServerStats).
    func statistics() throws(StoreError) -> [UInt8] { try exchangeOnce(.stats, []) }

    func probe() -> Bool { (try? statistics()) != nil }
}
