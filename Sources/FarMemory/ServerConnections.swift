import FarMemProtocol
import FarMemSystem
import Logging

/// Everything one client keeps open to one memory server: a control link,
/// and a fault link and a write-back link per shard (so no pager thread ever
/// waits on another's request). Links connect on first use; `connect`
/// connects them all now, and `attachRDMA` moves their pages over RDMA.
final class ServerConnections {
    let endpoint: TCPSocket.Endpoint
    /// This server's place in the cluster's server list.
    let member: Int
    let control: ServerLink
    let faultLinks: [ServerLink]
    let writeLinks: [ServerLink]
    /// The repair worker's (a cluster's): copies never wait behind faults.
    let repairLink: ServerLink
    private(set) var usesRDMA = false
    /// How long a page request may go unanswered (see `failoverTimeoutSeconds`).
    private let pageTimeout: Double

    init(endpoint: TCPSocket.Endpoint, member: Int, configuration: FarMemoryConfiguration, sessionKey: [UInt8],
         shardCounters: [PagerCounters], logger: Logger) {
        self.endpoint = endpoint
        self.member = member
        // Each shard's links count into the shard's counters (page traffic only).
        // In a cluster the page links give up after the failover time-out: another copy answers.
        pageTimeout = configuration.servers.count > 1 ? configuration.failoverTimeoutSeconds : configuration.requestTimeoutSeconds
        control = ServerLink(endpoint: endpoint, configuration: configuration, sessionKey: sessionKey, counters: PagerCounters())
        faultLinks = shardCounters.map { [pageTimeout] in
            ServerLink(endpoint: endpoint, configuration: configuration, sessionKey: sessionKey, counters: $0, timeoutSeconds: pageTimeout)
        }
        writeLinks = shardCounters.map { [pageTimeout] in
            ServerLink(endpoint: endpoint, configuration: configuration, sessionKey: sessionKey, counters: $0, timeoutSeconds: pageTimeout)
        }
        repairLink = ServerLink(endpoint: endpoint, configuration: configuration, sessionKey: sessionKey, counters: PagerCounters())
        for link in faultLinks + writeLinks {
            link.onRDMAFailure = { reason in logger.error("\(reason) (\(endpoint)); this connection falls back to TCP") }
        }
        for link in allLinks {
            link.onRetry = { failure in logger.warning("\(endpoint): \(failure); reconnecting and trying again") }
        }
    }

    private var allLinks: [ServerLink] { [control, repairLink] + faultLinks + writeLinks }

    func connect() throws(FarMemoryError) {
        do {
            for link in allLinks { try link.connect() }
        } catch {
            switch error {
            case .network(let text): throw .serverUnreachable(text)
            case .refused(let refusal): throw .serverRefused(refusal)
            }
        }
    }

    /// Connects the fault and write-back links over RDMA. Returns nil on
    /// success, or why RDMA is not used with this server.
    func attachRDMA(configuration: FarMemoryConfiguration) -> String? {
        guard configuration.transport != .tcp else { return "TCP was asked for" }
        let reason = ServerLink.attachRDMA(faultLinks + writeLinks, ticketFrom: control, configuration: configuration,
                                           transferTimeoutSeconds: pageTimeout)
        usesRDMA = reason == nil
        return reason
    }

    func close() { for link in allLinks { link.close() } }
}
