import CFarMemSys

/// Where a cluster region's memory is on each server for one-sided RDMA, and
/// for which incarnation of the server (see `ClusterMembership`): a server
/// that rejoined holds the region in a new session, registered anew, so the
/// address and rkey of its earlier incarnation must never be used with it.
/// Published by whoever created the region there (allocation, or the repair
/// worker on a rejoined server); read on the fault path, so atomics only.
final class RemoteDirectory: @unchecked Sendable {
    /// Per server: [tag, address, rkey, length]; tag is incarnation + 1, 0 when none.
    private let words: UnsafeMutablePointer<UInt64>
    private static let stride = 4

    init(servers: Int) {
        words = .allocate(capacity: servers * Self.stride)
        words.initialize(repeating: 0, count: servers * Self.stride)
    }

    deinit { words.deallocate() }

    /// Makes `remote` the region's memory on `server` in `incarnation`.
    func publish(_ remote: RemoteRegion, server: Int, incarnation: UInt64) {
        let entry = words + server * Self.stride
        fm_atomic_store_sc_u64(entry, 0)   // readers of the old entry see it change
        fm_atomic_store_sc_u64(entry + 1, remote.address)
        fm_atomic_store_sc_u64(entry + 2, UInt64(remote.rkey))
        fm_atomic_store_sc_u64(entry + 3, remote.length)
        fm_atomic_store_sc_u64(entry, incarnation + 1)
    }

    /// The region's memory on `server` in `incarnation`, or nil (not exposed
    /// there, or being republished: the request goes over TCP).
    @inline(__always)
    func remote(server: Int, incarnation: UInt64) -> RemoteRegion? {
        let entry = words + server * Self.stride
        let tag = fm_atomic_load_sc_u64(entry)
        guard tag == incarnation + 1 else { return nil }
        let remote = RemoteRegion(address: fm_atomic_load_sc_u64(entry + 1), rkey: UInt32(truncatingIfNeeded: fm_atomic_load_sc_u64(entry + 2)),
                                  length: fm_atomic_load_sc_u64(entry + 3))
        return fm_atomic_load_sc_u64(entry) == tag ? remote : nil
    }
}
