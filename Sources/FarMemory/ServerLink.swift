import CFarMemSys
import FarMemProtocol
import FarMemSystem
import Synchronization

/// Numbers every link of this process (FENCE's link; unique per session too).
private let nextLinkNumber = Atomic<UInt32>(1)

/// One connection to the memory server, owned by a single thread (the fault
/// handler, the evictor, or the control path under its lock). Request and
/// reply buffers are allocated once, so a page fetch allocates nothing.
/// On a network failure the link reconnects with the same session key, which
/// finds the same session as long as one of the client's connections stayed up.
final class ServerLink {
    private let configuration: FarMemoryConfiguration
    /// The server this link talks to.
    let endpoint: TCPSocket.Endpoint
    private let sessionKey: [UInt8]
    private var socket: TCPSocket?
    private var nextRequestID: UInt32 = 1
    private let request: UnsafeMutableRawPointer
    private let header: UnsafeMutableRawPointer
    /// Where this link counts bytes (its shard's counters).
    let counters: PagerCounters
    /// Whether a fetch polls for its reply before it sleeps (`adaptiveSpinning`).
    private var replyPolicy: SpinPolicy?
    private(set) var helloReply: HelloReply?
    /// The protocol version HELLO settled on (1 until connected).
    var protocolVersion: UInt16 { helloReply?.version ?? ProtocolVersion.oldest }
    /// The RDMA data path, when attached. Any RDMA failure drops it (logged) and
    /// the link carries on over TCP.
    private(set) var rdma: RDMAChannel?
    var onRDMAFailure: ((String) -> Void)?
    /// Told of a request's first network failure, when it is then tried again.
    var onRetry: ((LinkError) -> Void)?

    /// Silence longer than this on a request is a network failure.
    private let timeoutSeconds: Double
    /// FENCE: this link's number, and how many times it has connected. A
    /// request given up on an old connection can then never change pages
    /// after the retry on a new one (the server refuses it: FENCED).
    private let linkNumber = nextLinkNumber.wrappingAdd(1, ordering: .relaxed).oldValue
    private var generation: UInt32 = 0

    init(endpoint: TCPSocket.Endpoint, configuration: FarMemoryConfiguration, sessionKey: [UInt8], counters: PagerCounters,
         timeoutSeconds: Double? = nil) {
        self.endpoint = endpoint
        self.timeoutSeconds = timeoutSeconds ?? configuration.requestTimeoutSeconds
        self.configuration = configuration
        if configuration.adaptiveSpinning {
            replyPolicy = SpinPolicy(limitNanoseconds: UInt64(configuration.adaptiveSpinLimitMicroseconds) * 1000)
        }
        self.sessionKey = sessionKey
        self.counters = counters
        request = .allocate(byteCount: ProtocolLimits.maxPayload, alignment: 4096)
        header = .allocate(byteCount: FrameHeader.size, alignment: 8)
    }

    deinit {
        socket?.close()
        request.deallocate()
        header.deallocate()
    }

    func attach(_ channel: RDMAChannel) { rdma = channel }
    func detachRDMA() { rdma = nil }

    /// Moves the pages of `links` (all to one server, one session) over RDMA:
    /// a ticket from `control` (RDMA_ATTACH), then a queue pair per link.
    /// Returns nil on success, or why not (then no link is attached: the
    /// channels already made would hold queue pairs and pinned buffers on
    /// both sides for nothing).
    static func attachRDMA(_ links: [ServerLink], ticketFrom control: ServerLink, configuration: FarMemoryConfiguration,
                           connectTimeoutSeconds: Double? = nil, transferTimeoutSeconds: Double) -> String? {
        guard RDMAChannel.deviceCount > 0 else { return "no RDMA device on this host" }
        let attach: RDMAAttachReply
        do {
            let reply = try control.exchange(.rdmaAttach, [])
            attach = try reply.withUnsafeBytes { try RDMAAttachReply.decode($0) }
        } catch {
            return "the server does not serve RDMA (\(error))"
        }
        do {
            for link in links {
                link.attach(try RDMAChannel(host: control.endpoint.host, port: attach.port, ticket: attach.ticket,
                                            capacityPages: ProtocolLimits.maxBatchPages,
                                            timeoutSeconds: connectTimeoutSeconds ?? configuration.requestTimeoutSeconds,
                                            transferTimeoutSeconds: transferTimeoutSeconds))
            }
        } catch {
            for link in links { link.detachRDMA() }
            return error.description
        }
        return nil
    }

    /// Runs `body` until it succeeds (nil), the server refuses (that error, at
    /// once), or network errors outlast `windowSeconds` (the last of them).
    /// Between tries: back-off from 20 ms to 500 ms; the link reconnects on its
    /// next request.
    func withRetries(windowSeconds: Double, _ body: () throws(LinkError) -> Void) -> LinkError? {
        let deadline = monotonicSeconds() + windowSeconds
        var delay = 0.02
        var retried = false
        while true {
            do {
                try body()
                return nil
            } catch {
                if case .refused = error { return error }
                counters.add(.retries)
                if monotonicSeconds() + delay > deadline { return error }
                if !retried { onRetry?(error) }   // said once, and only when it does try again
                retried = true
                sleepSeconds(delay)
                delay = min(delay * 2, 0.5)
            }
        }
    }

    private func dropRDMA(_ reason: String) {
        rdma = nil
        onRDMAFailure?(reason)
    }

    func close() {
        socket?.shutdown()
        socket?.close()
        socket = nil
    }

    /// Failures a caller may retry (the network), as opposed to refusals.
    enum LinkError: Error, CustomStringConvertible {
        case network(String)
        case refused(ProtocolError)
        var description: String {
            switch self {
            case .network(let text): return text
            case .refused(let error): return error.description
            }
        }
    }

    /// Connects and says HELLO if not connected yet.
    func connect() throws(LinkError) {
        guard socket == nil else { return }
        let fresh: TCPSocket
        do {
            fresh = try TCPSocket.connect(to: endpoint, timeoutSeconds: timeoutSeconds)
        } catch {
            throw .network("cannot connect to \(endpoint): \(error)")
        }
        socket = fresh
        let hello = Hello(sessionKey: sessionKey, token: configuration.token).encode()
        do {
            let reply = try exchange(.hello, hello)
            let accepted = try reply.withUnsafeBytes { raw in try HelloReply.decode(raw) }
            guard (ProtocolVersion.oldest...ProtocolVersion.newest).contains(accepted.version) else {
                throw ProtocolError(.unsupportedVersion, "the server chose protocol version \(accepted.version); this client speaks "
                                    + "\(ProtocolVersion.oldest)...\(ProtocolVersion.newest)")
            }
            helloReply = accepted
            if accepted.version >= Opcode.fence.sinceVersion {
                generation &+= 1
                try exchange(.fence, Fence(link: linkNumber, generation: generation).encode())
            }
        } catch let error as LinkError {
            close()
            throw error
        } catch {
            close()
            throw .refused(error as? ProtocolError ?? ProtocolError(.internalError, "\(error)"))
        }
    }

    /// Sends a control request and returns the reply payload.
    @discardableResult
    func exchange(_ opcode: Opcode, _ payload: [UInt8]) throws(LinkError) -> [UInt8] {
        if opcode != .hello { try connect() }
        payload.withUnsafeBytes { raw in
            if let base = raw.baseAddress { request.copyMemory(from: base, byteCount: raw.count) }
        }
        let id = try send(opcode, payloadLength: payload.count)
        let reply = try receiveHeader(expecting: opcode, id: id)
        let body = try readBody(Int(reply.payloadLength), of: opcode)
        if reply.status != 0 { throw .refused(Self.refusal(status: reply.status, body: body)) }
        return body
    }

    /// Sends one frame whose payload is already in `request`; returns its id.
    private func send(_ opcode: Opcode, payloadLength: Int) throws(LinkError) -> UInt32 {
        guard let socket else { throw .network("not connected") }
        let id = takeRequestID()
        FrameHeader(opcode: opcode.rawValue, requestID: id, payloadLength: UInt32(payloadLength)).encode(into: header)
        do {
            try socket.writeAll(UnsafeRawBufferPointer(start: header, count: FrameHeader.size),
                                UnsafeRawBufferPointer(start: request, count: payloadLength))
        } catch {
            close()
            throw .network("sending \(opcode) failed: \(error)")
        }
        return id
    }

    /// Reads a reply payload of `length` bytes (control replies and errors: allocates).
    private func readBody(_ length: Int, of opcode: Opcode) throws(LinkError) -> [UInt8] {
        guard let socket else { throw .network("not connected") }
        var body = [UInt8](repeating: 0, count: length)
        do {
            if length > 0 { try body.withUnsafeMutableBytes { try socket.readExactly(into: $0.baseAddress!, count: $0.count) } }
        } catch {
            close()
            throw .network("reading \(opcode) reply failed: \(error)")
        }
        return body
    }

    /// Fetches `pages` of `region` (count x 4 KiB) and returns where they are:
    /// over RDMA, the registered buffer the READs landed in (no further copy;
    /// valid until this link's next transfer), or `destination` itself when
    /// `inPlace` (see `PageStore.read`); over TCP, `destination`.
    /// The fault path: no allocation on success.
    func readPages(region: UInt64, remote: RemoteRegion?, pages: UnsafeBufferPointer<UInt64>,
                   into destination: UnsafeMutableRawPointer, inPlace: Bool = false) throws(LinkError) -> UnsafeRawPointer {
        if let rdma, let remote {
            do {
                if inPlace, try rdma.readInPlace(remote: remote, pages: pages, into: destination) {
                    counters.add(.bytesIn, UInt64(pages.count * 4096))
                    counters.add(.rdmaPagesIn, UInt64(pages.count))
                    counters.add(.rdmaPagesInPlace, UInt64(pages.count))
                    return UnsafeRawPointer(destination)
                }
                // (Could not be registered: into the connection's buffer, and copied.)
                try rdma.transfer(write: false, remote: remote, pages: pages)
                counters.add(.bytesIn, UInt64(pages.count * 4096))
                counters.add(.rdmaPagesIn, UInt64(pages.count))
                return UnsafeRawPointer(rdma.buffer)
            } catch {
                dropRDMA(error.description)
            }
        }
        try connect()
        writeBatchHeader(region: region, pages: pages)
        let id = try send(.readPages, payloadLength: PageBatchHeader.fixedSize(count: pages.count))
        // A few pages' reply usually comes within a round trip: poll for it
        // while it has been (`SpinPolicy`). A prefetch batch's takes longer.
        let watched = replyPolicy != nil && pages.count <= 4
        let sent = watched ? fm_now_ns() : 0
        var spun = false
        if watched, let limit = replyPolicy?.spinNanoseconds, limit > 0 { spun = socket?.spinUntilReadable(nanoseconds: limit) == true }
        let reply = try receiveHeader(expecting: .readPages, id: id)
        if watched { replyPolicy!.observe(waited: fm_now_ns() &- sent, slept: !spun) }
        guard let socket else { throw .network("not connected") }
        let expected = pages.count * ProtocolLimits.pageSize
        if reply.status == 0 && Int(reply.payloadLength) != expected {
            close()
            throw .network("READ_PAGES reply of \(reply.payloadLength) bytes, expected \(expected)")
        }
        if reply.status != 0 {
            throw .refused(Self.refusal(status: reply.status, body: try readBody(Int(reply.payloadLength), of: .readPages)))
        }
        do {
            try socket.readExactly(into: destination, count: expected)
        } catch {
            close()
            throw .network("reading READ_PAGES reply failed: \(error)")
        }
        counters.add(.bytesIn, UInt64(expected))
        return UnsafeRawPointer(destination)
    }

    /// Writes pages; `source(i)` gives the 4 KiB of the i-th page.
    func writePages(region: UInt64, remote: RemoteRegion?, pages: UnsafeBufferPointer<UInt64>,
                    source: (Int) -> UnsafeRawPointer) throws(LinkError) {
        if let pending = try startWritePages(region: region, remote: remote, pages: pages, source: source) {
            try finishWritePages(pending, count: pages.count)
        }
    }

    /// Starts a write: over RDMA it is done when this returns (nil); over TCP
    /// the request is sent and its id returned for `finishWritePages`, so one
    /// thread can have the same pages on their way to several servers at once.
    func startWritePages(region: UInt64, remote: RemoteRegion?, pages: UnsafeBufferPointer<UInt64>,
                         source: (Int) -> UnsafeRawPointer) throws(LinkError) -> UInt32? {
        if let rdma, let remote {
            for i in 0..<pages.count { (rdma.buffer + i * 4096).copyMemory(from: source(i), byteCount: 4096) }
            do {
                try rdma.transfer(write: true, remote: remote, pages: pages)
                counters.add(.bytesOut, UInt64(pages.count * 4096))
                counters.add(.rdmaPagesOut, UInt64(pages.count))
                return nil
            } catch {
                dropRDMA(error.description)
            }
        }
        try connect()
        let listLength = PageBatchHeader.fixedSize(count: pages.count)
        writeBatchHeader(region: region, pages: pages)
        let size = ProtocolLimits.pageSize
        for i in 0..<pages.count { (request + listLength + i * size).copyMemory(from: source(i), byteCount: size) }
        return try send(.writePages, payloadLength: listLength + pages.count * size)
    }

    /// Waits for the reply to a write `startWritePages` sent.
    func finishWritePages(_ id: UInt32, count: Int) throws(LinkError) {
        let reply = try receiveHeader(expecting: .writePages, id: id)
        let body = try readBody(Int(reply.payloadLength), of: .writePages)
        if reply.status != 0 { throw .refused(Self.refusal(status: reply.status, body: body)) }
        counters.add(.bytesOut, UInt64(count * ProtocolLimits.pageSize))
    }

    private func writeBatchHeader(region: UInt64, pages: UnsafeBufferPointer<UInt64>) {
        request.storeBytes(of: region.littleEndian, toByteOffset: 0, as: UInt64.self)
        request.storeBytes(of: UInt32(pages.count).littleEndian, toByteOffset: 8, as: UInt32.self)
        request.storeBytes(of: UInt32(0), toByteOffset: 12, as: UInt32.self)
        for (i, page) in pages.enumerated() {
            request.storeBytes(of: page.littleEndian, toByteOffset: 16 + 8 * i, as: UInt64.self)
        }
    }

    private func takeRequestID() -> UInt32 {
        defer { nextRequestID &+= 1 }
        return nextRequestID
    }

    private func receiveHeader(expecting opcode: Opcode, id: UInt32) throws(LinkError) -> FrameHeader {
        guard let socket else { throw .network("not connected") }
        let reply: FrameHeader
        do {
            try socket.readExactly(into: header, count: FrameHeader.size)
            reply = try FrameHeader.decode(header)
        } catch {
            close()
            throw .network("no reply to \(opcode): \(error)")
        }
        guard reply.requestID == id, reply.opcode == opcode.response || reply.status != 0 else {
            close()
            throw .network("reply out of order: got opcode 0x\(String(reply.opcode, radix: 16)) id \(reply.requestID), expected \(opcode) id \(id)")
        }
        return reply
    }

    private static func refusal(status: UInt16, body: [UInt8]) -> ProtocolError {
        let message = String(decoding: body, as: UTF8.self)
        guard let code = ErrorCode(rawValue: status) else { return ProtocolError(.internalError, "status \(status): \(message)") }
        return ProtocolError(code, message)
    }
}
