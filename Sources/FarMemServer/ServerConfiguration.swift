import FarMemSystem

/// How a memory server runs. `farmemd` fills this from its command line;
/// `farmem demo` and the tests embed a server with their own.
public struct ServerConfiguration: Sendable {
    public var listen: TCPSocket.Endpoint
    public var capacityBytes: Int
    /// Shared secret clients must present in HELLO; nil accepts any client.
    public var token: [UInt8]?
    /// Tenants with their own secrets and quotas (`--keys-file`); instead of
    /// `token`: a client's HELLO token must be one of these secrets.
    public var keys: TenantKeys?
    public var maxConnections: Int
    /// Threads serving connections; 0 picks one per online CPU, at most 8.
    public var eventLoops: Int
    /// Memory for frames that cannot be finished at once (a request still
    /// arriving, a reply not yet taken), for all connections together; about
    /// 1 MiB a frame. Past it, connections wait (see `FrameBufferPool`).
    public var bufferMemoryBytes: Int
    /// A frame not whole (or a reply not taken) this long after its first
    /// byte, or no HELLO this long after connecting, disconnects the peer.
    public var frameTimeoutSeconds: Double
    /// Which transports to serve: TCP always; RDMA with `.rdma` (required) or `.auto` (if a device is there).
    public var transport: Transport
    /// RDMA-CM port; nil uses the TCP port's number (a separate port space).
    public var rdmaPort: UInt16?
    /// Where to serve `/metrics` (Prometheus text format); nil: not served.
    public var metricsListen: TCPSocket.Endpoint?

    var resolvedEventLoops: Int {
        eventLoops > 0 ? eventLoops : min(max(onlineProcessorCount(), 1), 8)
    }

    public enum Transport: String, Sendable, CaseIterable {
        case tcp, rdma, auto
    }

    public init(listen: TCPSocket.Endpoint = TCPSocket.Endpoint(host: "127.0.0.1", port: 7070),
                capacityBytes: Int = 1 << 30, token: [UInt8]? = nil,
                maxConnections: Int = 1024, frameTimeoutSeconds: Double = 10,
                transport: Transport = .auto, rdmaPort: UInt16? = nil, metricsListen: TCPSocket.Endpoint? = nil,
                keys: TenantKeys? = nil, eventLoops: Int = 0, bufferMemoryBytes: Int = 64 << 20) {
        self.bufferMemoryBytes = bufferMemoryBytes
        self.keys = keys
        self.eventLoops = eventLoops
        self.listen = listen
        self.capacityBytes = capacityBytes
        self.token = token
        self.maxConnections = maxConnections
        self.frameTimeoutSeconds = frameTimeoutSeconds
        self.transport = transport
        self.rdmaPort = rdmaPort
        self.metricsListen = metricsListen
    }
}

