import FarMemSystem
import Logging
import Synchronization

/// Which servers of a cluster this client still uses. A server is marked
/// down at its first failure (connection refused or reset, a request timed
/// out, its copy of a region lost) and is never used again by this client:
/// a stopped-then-continued server holds pages that were rewritten elsewhere
/// meanwhile, so nothing it held may be served again (fencing). Shared by
/// every pager thread: one atomic word, no lock.
final class ClusterMembership: Sendable {
    let servers: [TCPSocket.Endpoint]
    private let down = Atomic<UInt64>(0)
    private let logger: Logger

    init(servers: [TCPSocket.Endpoint], logger: Logger) {
        self.servers = servers
        self.logger = logger
    }

    @inline(__always) func isUp(_ server: Int) -> Bool { down.load(ordering: .relaxed) & (1 << UInt64(server)) == 0 }

    /// The servers still in use.
    var live: Placement.ServerSet {
        let all: UInt64 = servers.count == 64 ? ~0 : (1 << UInt64(servers.count)) - 1
        return all & ~down.load(ordering: .relaxed)
    }

    var downCount: Int { down.load(ordering: .relaxed).nonzeroBitCount }

    /// Marks `server` down for good; the first caller logs why.
    func markDown(_ server: Int, reason: String) {
        let (before, _) = down.bitwiseOr(UInt64(1) << UInt64(server), ordering: .relaxed)
        guard before & (UInt64(1) << UInt64(server)) == 0 else { return }
        logger.error("memory server \(servers[server]) marked down (\(reason)): its pages are read from their other copies, and this client will not use it again")
    }
}
