import FarMemSystem

/// How a `FarMemory` instance pages. The defaults suit a large-heap program
/// talking to a memory server on the same rack.
public struct FarMemoryConfiguration: Sendable {
    /// The memory servers. With more than one, the pages are spread over
    /// them and every page has `replicas` copies on different servers, so
    /// losing a server loses no page (see README, "Several servers").
    public var servers: [TCPSocket.Endpoint]
    /// Copies of every page: by default 2 with two or more servers, else 1;
    /// at most 4, and never more than there are servers.
    public var replicas: Int
    /// The first server (the only one in a single-server set-up).
    public var server: TCPSocket.Endpoint { servers[0] }
    /// Local memory all regions of this instance may keep resident, in bytes.
    /// Rounded down to whole pages; at least 64 pages.
    public var budgetBytes: Int
    /// Shared secret the server was started with (`farmemd --token-file`).
    public var token: [UInt8]
    /// Pages moved out per eviction round (one batch to the evictor).
    public var evictionBatchPages: Int
    /// Per-request network time-out; a server silent this long is treated as down.
    public var requestTimeoutSeconds: Double
    /// With several servers: a server silent this long on a page request (a
    /// fetch, a write-back) is marked down and the request goes to another
    /// copy. Short, so that a stalled server costs a thread well under a
    /// second; a server slower than this is fenced (and repaired around).
    public var failoverTimeoutSeconds: Double
    /// How long a failed fetch or write-back keeps reconnecting before it gives up
    /// (then the faulting access gets SIGBUS; a write-back restores the page locally).
    public var retryWindowSeconds: Double
    /// How pages move: `.tcp`; `.rdma` (required: no device or no RDMA on the
    /// server is an error); `.auto` (RDMA when this host has a device and the
    /// server serves it, else TCP, said in the log).
    public var transport: Transport
    /// Most pages fetched ahead when faults follow a sequential or strided
    /// pattern (capped at an eighth of the budget); 0 turns prefetching off.
    public var prefetchPages: Int
    /// How long the fault handler keeps polling for the next fault before it
    /// blocks (0: block at once). Spinning trades a CPU for the wake-up cost;
    /// see README, "Handler placement".
    public var handlerSpinMicroseconds: Int
    /// Fault-handler threads (each with its own evictor, connections and an
    /// equal share of the budget); every region is split into that many
    /// contiguous chunks. More than one means a region is several mappings to
    /// the kernel, so `mremap` of a whole region fails (EFAULT). See README.
    public var handlerThreads: Int
    /// Spin instead of sleeping while the next message has been coming
    /// quickly (`SpinPolicy`): the fault handler waiting for faults, and a
    /// fetch waiting for its reply over TCP; each for at most
    /// `adaptiveSpinLimitMicroseconds`. A fixed `handlerSpinMicroseconds`
    /// overrides it for the handler. See README, "Handler placement".
    public var adaptiveSpinning = true
    public var adaptiveSpinLimitMicroseconds = 50
    /// Install prefetched pages writable and dirty while most pages installed
    /// clean get written (`WritePredictor`): a sort or an update pass then
    /// takes no write-protect fault per page. Off: prefetched pages always go
    /// in clean (a page read-only stays cheaper to evict).
    public var predictsWrites = true
    /// Give a page that comes back soon after its eviction a second chance
    /// the next time it would be evicted (`Recency`). Off: plain FIFO.
    public var keepsRefaultedPages = true
    /// The share of the budget a probation area for anonymous regions may
    /// take (`ProbationArea`): evicted pages wait there, written back but
    /// still local, and a fault on one is served without the network and
    /// marks it hot. Off (0) by default: on these machines a page served from
    /// it still costs a userfaultfd round trip, and the resident set it takes
    /// room from would have served more of them for nothing (README,
    /// "Probation area"). At most 0.5; none under 32 pages.
    public var probationShare = 0.0
    /// Keep memfd and hugetlb regions mapped in forked children and serve
    /// their faults (UFFD_FEATURE_EVENT_FORK; needs CAP_SYS_PTRACE, and is
    /// silently off without it: the regions are then not inherited, as
    /// anonymous ones never are). A fork then waits until a fault handler has
    /// taken the child's userfaultfd. See README, "fork".
    public var followsForks = true
    /// A debugging aid, off by default (it hashes every page that moves):
    /// check that every fetched page is the one last written back, and that
    /// every page dropped as clean is unchanged since it was installed. A
    /// mismatch is logged (critical) and counted as `verificationFailures`.
    /// The C interface and the preload library turn it on with FARMEM_VERIFY_PAGES=1.
    public var verifiesPages = false
    /// Debugging: pages (of every region) whose every step the fault handler
    /// records (`PageTrace`; -1: every page); read with `FarMemory.pageTrace` (internal).
    var tracedPages: [Int] = []
    /// Testing: see `HandlerTestHooks`.
    var testHooks: HandlerTestHooks?
    /// Serve the pager's statistics at `http://HOST:PORT/metrics` (Prometheus
    /// text format) while the FarMemory is open; nil: not served.
    public var metricsListen: TCPSocket.Endpoint?

    public enum Transport: String, Sendable, CaseIterable {
        case tcp, rdma, auto
    }

    public init(server: TCPSocket.Endpoint, budgetBytes: Int, token: [UInt8] = [],
                evictionBatchPages: Int = 64, requestTimeoutSeconds: Double = 2,
                retryWindowSeconds: Double = 3, transport: Transport = .auto,
                prefetchPages: Int = 64, handlerSpinMicroseconds: Int = 0,
                handlerThreads: Int = 1) {
        self.init(servers: [server], budgetBytes: budgetBytes, token: token, evictionBatchPages: evictionBatchPages,
                  requestTimeoutSeconds: requestTimeoutSeconds, retryWindowSeconds: retryWindowSeconds,
                  transport: transport, prefetchPages: prefetchPages, handlerSpinMicroseconds: handlerSpinMicroseconds,
                  handlerThreads: handlerThreads)
    }

    /// `servers` must not be empty (`allocate` says so otherwise); `replicas`
    /// nil: 2 with two or more servers, else 1.
    public init(servers: [TCPSocket.Endpoint], replicas: Int? = nil, budgetBytes: Int, token: [UInt8] = [],
                evictionBatchPages: Int = 64, requestTimeoutSeconds: Double = 2,
                retryWindowSeconds: Double = 3, failoverTimeoutSeconds: Double = 0.5, transport: Transport = .auto,
                prefetchPages: Int = 64, handlerSpinMicroseconds: Int = 0,
                handlerThreads: Int = 1) {
        self.failoverTimeoutSeconds = failoverTimeoutSeconds
        self.servers = servers
        self.replicas = max(1, min(replicas ?? (servers.count >= 2 ? 2 : 1), 4, max(1, servers.count)))
        self.budgetBytes = budgetBytes
        self.token = token
        self.evictionBatchPages = evictionBatchPages
        self.requestTimeoutSeconds = requestTimeoutSeconds
        self.retryWindowSeconds = retryWindowSeconds
        self.transport = transport
        self.prefetchPages = max(0, prefetchPages)
        self.handlerSpinMicroseconds = max(0, handlerSpinMicroseconds)
        self.handlerThreads = min(max(1, handlerThreads), 64)
    }

    var budgetPages: Int { max(64, budgetBytes / MemoryMapping.pageSize) }

    /// Parses "HOST:PORT[,HOST:PORT...]" (the C interface's and the command
    /// line's form); nil, with the reason, when an entry is not HOST:PORT.
    public static func servers(parsing text: String) -> Result<[TCPSocket.Endpoint], FarMemoryError> {
        let entries = text.split(separator: ",", omittingEmptySubsequences: false).map {
            String($0.drop(while: \.isWhitespace).reversed().drop(while: \.isWhitespace).reversed())
        }
        var servers: [TCPSocket.Endpoint] = []
        for entry in entries {
            guard let endpoint = TCPSocket.Endpoint(parsing: entry) else {
                return .failure(.invalidArgument("server list entry '\(entry)' is not HOST:PORT (the list is HOST:PORT[,HOST:PORT...])"))
            }
            servers.append(endpoint)
        }
        guard Set(servers.map(\.description)).count == servers.count else {
            return .failure(.invalidArgument("server list '\(text)' names a server twice"))
        }
        guard servers.count <= 64 else { return .failure(.invalidArgument("at most 64 servers, got \(servers.count)")) }
        return .success(servers)
    }
}
