import FarMemProtocol

/// A page store over several servers. Every page has copies on the
/// `placement.replicas` servers that rendezvous hashing picks for its extent,
/// among the servers the region was created on. Reads go to the first live
/// copy and fail over to the next at once (no retry window: the next copy is
/// the retry); writes and discards go to every live copy, and fail only when
/// no copy could be written. A server that fails is marked down for good.
/// One instance per pager thread, one `ServerPageStore` per server inside it.
final class ReplicatedPageStore: PageStore {
    private var members: MemberStores
    private let membership: ClusterMembership
    private let placement: Placement
    /// Debugging (page verification): the copy the last read used, and what
    /// it chose among; kept only while `recordsReadSource` (it allocates).
    private(set) var lastReadSource = ""
    var recordsReadSource = false

    init(members: [ServerPageStore], membership: ClusterMembership, placement: Placement,
         makeMember: @escaping MemberStores.Make) {
        self.members = MemberStores(members, membership: membership, make: makeMember)
        self.membership = membership
        self.placement = placement
    }

    /// This thread's store for `server`, on its current incarnation's session.
    @inline(__always)
    private func member(_ server: Int) -> ServerPageStore { members.store(server) }

    /// Calls `body` for each run of `pages` that lies in one extent: the
    /// index of its first page, and the run.
    @inline(__always)
    private func forEachExtentRun(_ pages: UnsafeBufferPointer<UInt64>,
                                  _ body: (Int, Int, UnsafeBufferPointer<UInt64>) throws(StoreError) -> Void) throws(StoreError) {
        var start = 0
        while start < pages.count {
            let extent = Placement.extent(of: Int(pages[start]))
            var end = start + 1
            while end < pages.count, Placement.extent(of: Int(pages[end])) == extent { end += 1 }
            try body(start, extent, UnsafeBufferPointer(rebasing: pages[start..<end]))
            start = end
        }
    }

    /// The live servers holding a current copy of the extent, best first. The
    /// live set is loaded first: a server seen up after a rejoin is then seen
    /// without its old copies (they are forgotten before it comes up).
    private func replicas(_ region: StoreRegion, _ extent: Int) -> ReplicaList {
        let live = membership.live
        let holders = region.copies?.holders(extent) ?? region.members
        return placement.replicaSet(region: region.id, extent: extent, among: holders & live)
    }

    /// Where a write or discard of the extent goes: every live holder, and a
    /// server a repair is filling.
    private func writeTargets(_ region: StoreRegion, _ extent: Int) -> ReplicaList {
        let live = membership.live
        return ReplicaList((region.copies?.writeTargets(extent) ?? region.members) & live)
    }

    func read(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
              into buffer: UnsafeMutableRawPointer, inPlace: Bool) throws(StoreError) -> UnsafeRawPointer {
        var single: UnsafeRawPointer?
        try forEachExtentRun(pages) { (first, extent, run) throws(StoreError) in
            let destination = buffer + first * 4096
            let landed = try readRun(region, extent: extent, pages: run, into: destination, inPlace: inPlace)
            if run.count == pages.count { single = landed; return }   // one extent: wherever it landed, no copy
            if landed != UnsafeRawPointer(destination) { destination.copyMemory(from: landed, byteCount: run.count * 4096) }
        }
        return single ?? UnsafeRawPointer(buffer)
    }

    private func readRun(_ region: StoreRegion, extent: Int, pages: UnsafeBufferPointer<UInt64>,
                         into buffer: UnsafeMutableRawPointer, inPlace: Bool) throws(StoreError) -> UnsafeRawPointer {
        var failure: StoreError?
        var snapshots = 0, movedSnapshots = 0
        snapshot: while true {
            // The rejoin count first, then the copies: if it has moved when a
            // copy's store is taken, the copies may predate a rejoin (a server
            // that rejoined empty), so look again.
            let epoch = membership.rejoinCount
            let moves = region.copies?.moves(extent) ?? 0
            let copies = replicas(region, extent)
            for i in 0..<copies.count {
                let (store, incarnation) = storeAndIncarnation(copies[i])
                if membership.rejoinCount != epoch, snapshots < 8 {
                    snapshots += 1
                    continue snapshot
                }
                let landed: UnsafeRawPointer
                do {
                    landed = try store.read(region, pages: pages, into: buffer, inPlace: inPlace)
                } catch {
                    failed(copies[i], error, region, incarnation: incarnation)
                    failure = error
                    continue
                }
                if recordsReadSource, let now = region.copies {
                    lastReadSource = "extent \(extent) from server \(copies[i]) (incarnation \(incarnation)) of \(copies.count) copies; "
                        + "holders \(String(now.holders(extent), radix: 2)) joining \(String(now.joining(extent), radix: 2)) "
                        + "live \(String(membership.live, radix: 2)) rejoins \(epoch)->\(membership.rejoinCount) moves \(moves)->\(now.moves(extent))"
                }
                // A rebalance moved a copy meanwhile: this one may have been
                // discarded before the read reached it. Read again from where
                // the copies are now (an extent moves once per rebalance).
                if let copies = region.copies, copies.moves(extent) != moves {
                    guard movedSnapshots < 64 else { throw .unavailable("extent \(extent) of region \(region.id) kept moving") }
                    movedSnapshots += 1
                    store.link.counters.add(.rereadsAfterMove)
                    continue snapshot
                }
                return landed
            }
            throw .unavailable("no live server holds extent \(extent) of region \(region.id)"
                + (failure.map { " (last error: \($0))" } ?? ": every copy was on servers marked down"))
        }
    }

    /// This thread's store for `server`, and the incarnation its link belongs to.
    @inline(__always)
    private func storeAndIncarnation(_ server: Int) -> (ServerPageStore, UInt64) {
        let store = members.store(server)
        return (store, members.incarnations[server])
    }

    /// Rounds of a write or discard that a rejoin cut short before one went out whole.
    private static let rejoinRetries = 8

    /// One round of a write or discard: hands each live write target of the
    /// extent to `send` (its index among the targets, the server, its store
    /// and incarnation) while no server rejoins. A rejoin makes the targets
    /// stale: the round stops (`rejoined`) and the caller sends again to the
    /// targets taken afresh (the rejoined server is no target then; the
    /// repair, which waits for this write, fills it). Skipping the targets
    /// still to send instead, as this once did, left a holder without the
    /// write or discard: a stale copy, served later.
    private func sendRound(_ region: StoreRegion, _ extent: Int,
                           _ send: (_ index: Int, _ server: Int, ServerPageStore, _ incarnation: UInt64) -> Void)
        -> (targets: ReplicaList, rejoined: Bool) {
        let epoch = membership.rejoinCount
        let copies = writeTargets(region, extent)
        for i in 0..<copies.count where membership.isUp(copies[i]) {
            let (store, incarnation) = storeAndIncarnation(copies[i])
            guard membership.rejoinCount == epoch else { return (copies, true) }
            send(i, copies[i], store, incarnation)
        }
        return (copies, false)
    }

    func write(_ region: StoreRegion, pages: UnsafeBufferPointer<UInt64>,
               source: (Int) -> UnsafeRawPointer) throws(StoreError) {
        try forEachExtentRun(pages) { (first, extent, run) throws(StoreError) in
            region.copies?.beginWrite(extent)
            defer { region.copies?.endWrite(extent) }
            var attempt = 0
            while true {
                attempt += 1
                var written = 0
                var failure: StoreError?
                // All copies on their way first, then every reply: the copies are
                // written in parallel, in about the time of one. Each copy's store is
                // taken once, so its reply is read on the link its request went out on.
                var pending: [(store: ServerPageStore, incarnation: UInt64, request: UInt32?)?] = [nil, nil, nil, nil]
                let (copies, rejoined) = sendRound(region, extent) { i, server, store, incarnation in
                    do throws(StoreError) {
                        let request = try store.startWrite(region, pages: run) { source(first + $0) }
                        pending[i] = (store, incarnation, request)
                    } catch {
                        failed(server, error, region, incarnation: incarnation)
                        failure = error
                    }
                }
                for i in 0..<copies.count {
                    guard let (store, incarnation, request) = pending[i] else { continue }
                    do throws(StoreError) {
                        if let request { try store.finishWrite(request, count: run.count) }
                        // Only a copy reads can reach counts: not a server a repair is
                        // still filling, nor one another thread fenced meanwhile.
                        let holds = region.copies.map { $0.holders(extent) & (1 << UInt64(copies[i])) != 0 } ?? true
                        if holds, membership.isUp(copies[i]), membership.incarnation(copies[i]) == incarnation { written += 1 }
                    } catch {
                        // A rebalance moved the copy away meanwhile (and may have given
                        // back its room): the server's answer no longer matters.
                        if error.refusal != nil, let moved = region.copies, moved.writeTargets(extent) & (1 << UInt64(copies[i])) == 0 { continue }
                        failed(copies[i], error, region, incarnation: incarnation)
                        failure = error
                    }
                }
                if rejoined, attempt < Self.rejoinRetries { continue }
                guard written > 0 else {
                    // No live server holds the extent any more: its pages can only stay local.
                    if replicas(region, extent).count == 0 { throw .lost("every copy of extent \(extent) of region \(region.id) is on servers marked down") }
                    throw failure ?? .unavailable("no live server for extent \(extent) of region \(region.id)")
                }
                return
            }
        }
    }

    func discard(_ region: StoreRegion, first: Int, count: Int) throws(StoreError) {
        var page = first
        while page < first + count {
            let extent = Placement.extent(of: page)
            let end = min(first + count, (extent + 1) * Placement.extentPages)
            region.copies?.beginWrite(extent)
            // A holder skipped would keep data the application discarded.
            for _ in 0..<Self.rejoinRetries {
                let (_, rejoined) = sendRound(region, extent) { _, server, store, incarnation in
                    do throws(StoreError) { try store.discard(region, first: page, count: end - page) } catch {
                        failed(server, error, region, incarnation: incarnation)
                    }
                }
                if !rejoined { break }
            }
            region.copies?.endWrite(extent)
            page = end
        }
    }

    /// Creates the region on every live server, each reserving only its
    /// share of the copies (`Placement.shares`), and merges their RDMA
    /// remotes. A server that cannot be reached is marked down and the
    /// creation starts over without it (the shares change); one that refuses
    /// (full) fails the whole allocation, after the servers already done drop
    /// it again.
    func createRegion(id: UInt64, pageCount: Int) throws(StoreError) -> StoreRegion {
        creating: while true {
            let live = membership.live
            guard live != 0 else { throw .unavailable("no memory server of the cluster answers") }
            let shares = placement.shares(region: id, pageCount: pageCount, among: live)
            var created = StoreRegion(id: id, remotes: [RemoteRegion?](repeating: nil, count: members.indices.count), members: 0)
            for server in members.indices where live & (1 << UInt64(server)) != 0 {
                do {
                    let made = try member(server).createRegion(id: id, pageCount: pageCount, reserving: shares[server])
                    created.remotes[server] = made.remote(on: server)
                    created.members |= 1 << UInt64(server)
                } catch {
                    dropRegion(created)
                    if case .unavailable(let text) = error {
                        membership.markDown(server, reason: text)
                        continue creating
                    }
                    let copies = placement.replicas == 1 ? "one copy" : "\(placement.replicas) copies"
                    throw .refused(ProtocolError(error.refusal?.code ?? .internalError,
                        "the cluster cannot hold a region of \(formatByteSize(pageCount * 4096)) with \(copies) of each page: "
                        + "memory server \(membership.servers[server]) (its share: \(shares[server]) pages): "
                        + "\(error.refusal?.message ?? "\(error)")"))
                }
            }
            let members = created.members
            let copies = ExtentCopies(pageCount: pageCount, regionServers: members, reservations: shares) { extent in
                self.placement.replicaSet(region: id, extent: extent, among: members).mask
            }
            for server in self.members.indices {
                if let remote = created.remote(on: server) {
                    copies.remotes.publish(remote, server: server, incarnation: self.members.incarnations[server])
                }
            }
            created.copies = copies
            return created
        }
    }

    func dropRegion(_ region: StoreRegion) {
        region.copies?.markClosed()
        let on = region.copies?.regionServers ?? region.members
        for server in members.indices where on & (1 << UInt64(server)) != 0 && membership.isUp(server) {
            member(server).dropRegion(region)
        }
    }

    func closeConnections() { for server in members.indices { members.stores[server].link.close() } }

    func probe() -> Bool { members.indices.contains { membership.isUp($0) && member($0).probe() } }

    /// Each live server's STATS reply.
    func statisticsReplies() -> [(server: Int, reply: [UInt8])] {
        members.indices.compactMap { server in
            guard membership.isUp(server), let reply = try? member(server).statistics() else { return nil }
            return (server, reply)
        }
    }

    /// A server failed a request: down for good (a refusal too: a server that
    /// refuses a write has not got the page), and this store's connection to
    /// it is closed (the other pager threads close theirs when they next try it).
    private func failed(_ server: Int, _ error: StoreError, _ region: StoreRegion, incarnation: UInt64) {
        // The region closed here while a request was on its way: not the server's fault.
        if case .regionGone = error, region.copies?.isClosed == true { return }
        let reason: String
        switch error {
        case .unavailable(let text), .lost(let text): reason = text
        case .regionGone(let refusal): reason = "it lost the region: \(refusal)"
        case .refused(let refusal): reason = "it refused: \(refusal)"
        }
        membership.markDown(server, reason: reason, incarnation: incarnation)
        if members.incarnations[server] == incarnation { members.stores[server].link.close() }
    }
}
