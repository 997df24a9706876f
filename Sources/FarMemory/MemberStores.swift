/// One thread's store for each server of a cluster, each on its server's
/// current incarnation: when a server rejoins (see `ClusterMembership`), the
/// link of the earlier incarnation is closed and a new one made, on the new
/// session (an allocation and, over RDMA, a queue pair to set up, once per
/// rejoin). Owned by one thread.
struct MemberStores {
    private(set) var stores: [ServerPageStore]
    /// The incarnation each store's link belongs to.
    private(set) var incarnations: [UInt64]
    private let membership: ClusterMembership
    /// A new store for `server` on session `key`, its incarnation `incarnation`
    /// (over RDMA when the cluster uses it).
    typealias Make = (_ server: Int, _ key: [UInt8], _ incarnation: UInt64) -> ServerPageStore
    private let make: Make

    init(_ stores: [ServerPageStore], membership: ClusterMembership, make: @escaping Make) {
        self.stores = stores
        self.membership = membership
        self.make = make
        incarnations = stores.indices.map { membership.incarnation($0) }
    }

    var indices: Range<Int> { stores.indices }

    /// The store for `server` on its current incarnation.
    @inline(__always)
    mutating func store(_ server: Int) -> ServerPageStore {
        let current = membership.incarnation(server)
        if current != incarnations[server] {
            let (incarnation, key) = membership.session(server)
            replace(server, with: make(server, key, incarnation), incarnation: incarnation)
        }
        return stores[server]
    }

    /// Puts `store` in for `server`, closing the old link and dropping its
    /// queue pair and pinned buffer (else they would keep the old session alive
    /// on a server that continued).
    mutating func replace(_ server: Int, with store: ServerPageStore, incarnation: UInt64) {
        stores[server].link.detachRDMA()
        stores[server].link.close()
        stores[server] = store
        incarnations[server] = incarnation
    }
}
