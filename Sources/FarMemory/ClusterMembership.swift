import CFarMemSys
import FarMemSystem
import Logging
import Synchronization

/// Which servers of a cluster this client uses. A server is marked down at
/// its first failure (connection refused or reset, a request timed out, its
/// copy of a region lost), and nothing it held is ever read again: a
/// stopped-then-continued server holds pages rewritten elsewhere meanwhile
/// (fencing). When it answers again it rejoins as a new, empty incarnation: a
/// new session (new key, so none of the old regions or connections), holding
/// nothing until the repair copies extents to it. Shared by every pager
/// thread: atomics, no lock on the fault path.
final class ClusterMembership: @unchecked Sendable {
    let servers: [TCPSocket.Endpoint]
    private let down = Atomic<UInt64>(0)
    /// Per server: bumped at each rejoin (stores swap their links when it changes).
    private let incarnations: UnsafeMutablePointer<UInt64>
    /// Per server: the session key of its current incarnation. Its lock also
    /// serializes markDown with rejoin (a late failure of an old incarnation
    /// must not fence the new one between its check and its mark).
    private let keys: Mutex<[[UInt8]]>
    /// Bumped at every rejoin: a request that saw another value may hold a
    /// snapshot of copies from before it (see ReplicatedPageStore).
    private let rejoins = Atomic<UInt64>(0)
    private let logger: Logger

    init(servers: [TCPSocket.Endpoint], sessionKey: [UInt8], logger: Logger) {
        self.servers = servers
        self.logger = logger
        incarnations = .allocate(capacity: servers.count)
        incarnations.initialize(repeating: 0, count: servers.count)
        keys = Mutex(Array(repeating: sessionKey, count: servers.count))
    }

    deinit { incarnations.deallocate() }

    @inline(__always) func isUp(_ server: Int) -> Bool { live & (1 << UInt64(server)) != 0 }

    /// The servers in use. Sequentially consistent: a reader that sees a
    /// rejoined server up also sees its old copies forgotten (see `rejoin`).
    var live: Placement.ServerSet {
        let all: UInt64 = servers.count == 64 ? ~0 : (1 << UInt64(servers.count)) - 1
        return all & ~down.load(ordering: .sequentiallyConsistent)
    }

    var downCount: Int { down.load(ordering: .relaxed).nonzeroBitCount }

    /// Rejoins so far. Load it before `live`: if it has changed when a request
    /// is about to use a server, its snapshot of copies may predate a rejoin.
    var rejoinCount: UInt64 { rejoins.load(ordering: .sequentiallyConsistent) }

    @inline(__always) func incarnation(_ server: Int) -> UInt64 { fm_atomic_load_sc_u64(incarnations + server) }

    func sessionKey(_ server: Int) -> [UInt8] { keys.withLock { $0[server] } }

    /// The current incarnation of `server` and its session key, read together
    /// (a rejoin changes both under the same lock).
    func session(_ server: Int) -> (incarnation: UInt64, key: [UInt8]) {
        keys.withLock { (incarnation(server), $0[server]) }
    }

    /// Marks `server` down (if `incarnation` is still its current one: a late
    /// failure of an earlier incarnation's link says nothing of the new one);
    /// the first caller logs why.
    func markDown(_ server: Int, reason: String, incarnation: UInt64? = nil) {
        let marked = keys.withLock { _ -> Bool in
            if let incarnation, incarnation != self.incarnation(server) { return false }
            let (before, _) = down.bitwiseOr(UInt64(1) << UInt64(server), ordering: .sequentiallyConsistent)
            return before & (UInt64(1) << UInt64(server)) == 0
        }
        guard marked else { return }
        logger.error("memory server \(servers[server]) marked down (\(reason)): its pages are read from their other copies; it rejoins empty if it answers again")
    }

    /// A down server answers again (on a new session, `key`). The caller has
    /// already removed it from every extent's copies; from now on it is up, as
    /// a new incarnation holding nothing.
    func rejoin(_ server: Int, key: [UInt8]) {
        keys.withLock {
            $0[server] = key
            _ = rejoins.add(1, ordering: .sequentiallyConsistent)
            _ = fm_atomic_add_sc_u64(incarnations + server, 1)
            _ = down.bitwiseAnd(~(UInt64(1) << UInt64(server)), ordering: .sequentiallyConsistent)
        }
        logger.notice("memory server \(servers[server]) answers again: it rejoins as an empty server")
    }
}
