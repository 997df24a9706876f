import FarMemProtocol
import FarMemSystem
import Logging

/// The protocol state of one client connection (its session, the version
/// HELLO settled on, its fence) and the answer to each request. It does no
/// I/O: the event loop hands it whole frames in arrival order and sends what
/// it writes into the loop's reply buffer, so a client may pipeline as many
/// requests as it likes.
final class RequestHandler {
    private let context: ServerContext
    let logger: Logger
    private(set) var session: Session?
    /// The protocol version HELLO settled on.
    private var version = ProtocolVersion.oldest
    /// The link and generation this connection fenced (FENCE), if any.
    private var fence: Fence?
    /// Where the reply payload goes: the loop's buffer, shared by its
    /// connections, set by each `respond` (nil outside one).
    private var replyBuffer: UnsafeMutableRawPointer?
    private var reply: UnsafeMutableRawPointer { replyBuffer! }

    /// A reply ready to send: its payload is the first `length` bytes of the reply buffer.
    struct Reply {
        var opcode: UInt8
        var status: UInt16
        var length: Int
        /// The connection closes once this is sent.
        var closes: Bool
    }

    init(context: ServerContext, peer: String) {
        self.context = context
        var logger = context.logger
        logger[metadataKey: "peer"] = "\(peer)"
        self.logger = logger
    }

    /// The connection ended: the last connection of a session frees its regions.
    func close() {
        if let session { context.detach(session) }
        session = nil
    }

    /// A reply of `bytes` (header included) went to the socket.
    func countSent(_ bytes: Int) { context.metrics.bytesSent.add(UInt64(bytes)) }

    /// Answers one frame, writing the reply payload into `replyBuffer` (at
    /// least `ProtocolLimits.maxPayload` bytes).
    func respond(to frame: FrameHeader, body: UnsafeRawBufferPointer, replyBuffer: UnsafeMutableRawPointer) -> Reply {
        self.replyBuffer = replyBuffer
        defer { self.replyBuffer = nil }
        let started = monotonicNanoseconds()
        let metrics = context.metrics
        metrics.bytesReceived.add(UInt64(FrameHeader.size) + UInt64(frame.payloadLength))
        guard let opcode = Opcode(rawValue: frame.opcode) else {
            metrics.errors[Int(ErrorCode.unknownOpcode.rawValue)].add()
            return refusal(ProtocolError(.unknownOpcode, "unknown opcode 0x\(String(frame.opcode, radix: 16))"),
                           opcode: frame.opcode | 0x80, replyBuffer: replyBuffer)
        }
        do {
            let replyLength = try dispatch(opcode, body)
            metrics.request(opcode.rawValue, nanoseconds: monotonicNanoseconds() - started, error: nil)
            return Reply(opcode: opcode.response, status: 0, length: replyLength, closes: false)
        } catch {
            metrics.request(opcode.rawValue, nanoseconds: monotonicNanoseconds() - started, error: error.code)
            if error.code != .noSuchRegion && error.code != .pageOutOfRange {
                logger.info("request \(frame.requestID) \(opcode) refused: \(error)")
            }
            return refusal(error, opcode: opcode.response, replyBuffer: replyBuffer)
        }
    }

    /// An error reply: its message is the payload. Some errors end the connection.
    func refusal(_ error: ProtocolError, opcode: UInt8, replyBuffer: UnsafeMutableRawPointer) -> Reply {
        let message = Array(error.message.utf8.prefix(ProtocolLimits.maxErrorMessage))
        message.withUnsafeBytes { if let bytes = $0.baseAddress { replyBuffer.copyMemory(from: bytes, byteCount: $0.count) } }
        return Reply(opcode: opcode, status: error.code.rawValue, length: message.count, closes: error.code.closesConnection)
    }

    /// Runs a request; writes the reply payload into `reply` and returns its length.
    private func dispatch(_ opcode: Opcode, _ body: UnsafeRawBufferPointer) throws(ProtocolError) -> Int {
        if opcode == .hello { return try hello(body) }
        guard let session else {
            throw ProtocolError(.helloRequired, "\(opcode) before HELLO: the first request must be HELLO")
        }
        guard opcode.sinceVersion <= version else {
            throw ProtocolError(.unknownOpcode, "\(opcode) needs protocol version \(opcode.sinceVersion); this connection speaks \(version)")
        }
        switch opcode {
        case .hello:
            return 0
        case .createRegion:
            try session.createRegion(try RegionSpec.decode(body, version: version))
            return 0
        case .reserve:
            let reserved = try session.reserve(try Reservation.decode(body))
            return copyToReply(Reservation.encodeReply(reservedPages: UInt64(reserved)))
        case .dropRegion:
            try session.removeRegion(try RegionRef.decode(body).regionID)
            return 0
        case .readPages:
            let (batch, _) = try PageBatchHeader.decode(body, withData: false)
            try session.readPages(region: batch.regionID, pages: batch.pages, into: reply)
            context.pagesRead.add(UInt64(batch.pages.count), ordering: .relaxed)
            return batch.pages.count * ProtocolLimits.pageSize
        case .writePages:
            let (batch, offset) = try PageBatchHeader.decode(body, withData: true)
            try session.writePages(region: batch.regionID, pages: batch.pages, from: body.baseAddress! + offset, fence: fence)
            context.pagesWritten.add(UInt64(batch.pages.count), ordering: .relaxed)
            return 0
        case .discard:
            try session.discard(try DiscardRange.decode(body), fence: fence)
            return 0
        case .fence:
            guard fence == nil else { throw ProtocolError(.protocolState, "FENCE was already accepted on this connection") }
            let requested = try Fence.decode(body)
            try session.fence(requested)
            fence = requested
            return 0
        case .rdmaAttach:
            guard body.isEmpty else { throw ProtocolError(.malformedFrame, "RDMA_ATTACH takes no payload") }
            guard let rdma = context.rdma else {
                throw ProtocolError(.rdmaUnavailable, "this server serves TCP only (started with --transport tcp, or no RDMA device)")
            }
            return copyToReply(RDMAAttachReply(port: rdma.port, ticket: rdma.ticket(for: session)).encode())
        case .rdmaExpose:
            guard let rdma = context.rdma else { throw ProtocolError(.rdmaUnavailable, "this server serves TCP only") }
            return copyToReply(try rdma.expose(region: try RegionRef.decode(body).regionID, of: session).encode())
        case .stats:
            guard body.isEmpty else { throw ProtocolError(.malformedFrame, "STATS takes no payload") }
            var stats = context.stats()
            session.fill(&stats)
            return copyToReply(stats.encode(version: version))
        }
    }

    private func hello(_ body: UnsafeRawBufferPointer) throws(ProtocolError) -> Int {
        guard session == nil else { throw ProtocolError(.protocolState, "HELLO was already accepted on this connection") }
        let hello = try Hello.decode(body)
        let version = min(hello.maxVersion, ProtocolVersion.newest)
        guard hello.minVersion <= version, version >= ProtocolVersion.oldest else {
            throw ProtocolError(.unsupportedVersion, "client speaks versions \(hello.minVersion)...\(hello.maxVersion); "
                                + "server speaks \(ProtocolVersion.oldest)...\(ProtocolVersion.newest)")
        }
        guard hello.pageSize == UInt32(ProtocolLimits.pageSize) else {
            throw ProtocolError(.pageSizeMismatch, "client page size \(hello.pageSize); server uses \(ProtocolLimits.pageSize)")
        }
        var tenant: TenantAccount?
        if let tenants = context.tenants {
            guard let found = tenants.authenticate(hello.token) else {
                throw ProtocolError(.authenticationFailed, hello.token.isEmpty ? "this server needs a tenant key (the token)"
                                                                                : "unknown or revoked tenant key")
            }
            tenant = found
        } else if let token = context.configuration.token, !constantTimeEqual(token, hello.token) {
            throw ProtocolError(.authenticationFailed, "wrong or missing token")
        }
        guard hello.sessionKey.contains(where: { $0 != 0 }) else {
            throw ProtocolError(.malformedFrame, "HELLO: the session key must be 16 random bytes, not zeros")
        }
        guard let joined = context.sessions.attach(key: SessionKey(hello.sessionKey), tenant: tenant) else {
            throw ProtocolError(.authenticationFailed, "that session belongs to another tenant")
        }
        session = joined
        self.version = version
        let ledger = context.ledger
        return copyToReply(HelloReply(version: version, pageSize: UInt32(ProtocolLimits.pageSize),
                                      maxBatchPages: UInt32(ProtocolLimits.maxBatchPages),
                                      maxPayload: UInt32(ProtocolLimits.maxPayload),
                                      capacityPages: UInt64(ledger.capacityPages),
                                      unreservedPages: UInt64(ledger.unreservedPages)).encode())
    }

    private func copyToReply(_ bytes: [UInt8]) -> Int {
        bytes.withUnsafeBytes { reply.copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
        return bytes.count
    }
}

/// Compares secrets without an early exit, so timing does not leak the prefix.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
}
