import FarMemProtocol
import FarMemSystem
import Logging

/// Serves one client connection: reads a frame, answers it, repeats. Requests
/// are answered in arrival order, so a client may pipeline as many as it likes.
/// A frame that cannot be trusted (bad magic, version or length, or a peer
/// that stalls mid-frame) ends this connection only; sessions and pages stay.
/// The socket stays its acceptor's: it is closed by whoever registered it.
final class ServerConnection: @unchecked Sendable {
    private let socket: TCPSocket
    private let context: ServerContext
    private let logger: Logger
    private var session: Session?
    /// The protocol version HELLO settled on.
    private var version = ProtocolVersion.oldest
    /// The link and generation this connection fenced (FENCE), if any.
    private var fence: Fence?
    /// A request's payload and a reply's, each big enough for a full batch.
    /// Mapped, not malloc'd: a connection that goes idle gives their pages
    /// back (`releaseBuffersIfIdle`), so only busy connections cost memory.
    private let payload: UnsafeMutableRawPointer
    private let reply: UnsafeMutableRawPointer
    private static let bufferLength = (ProtocolLimits.maxPayload + 4095) / 4096 * 4096
    /// Pages of the buffers were touched beyond the first since the last release.
    private var buffersTouched = false
    private let header = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size, alignment: 8)

    init(socket: TCPSocket, context: ServerContext, peer: String) {
        self.socket = socket
        self.context = context
        var logger = context.logger
        logger[metadataKey: "peer"] = "\(peer)"
        self.logger = logger
        payload = Self.mapBuffer()
        reply = Self.mapBuffer()
    }

    private static func mapBuffer() -> UnsafeMutableRawPointer {
        // NORESERVE anonymous memory: no page is committed until written.
        guard let address = try? MemoryMapping.anonymous(length: bufferLength, noReserve: true) else {
            fatalError("farmemd: cannot map a \(bufferLength)-byte connection buffer")
        }
        return UnsafeMutableRawPointer(bitPattern: address)!
    }

    deinit {
        MemoryMapping.unmap(UInt(bitPattern: payload), length: Self.bufferLength)
        MemoryMapping.unmap(UInt(bitPattern: reply), length: Self.bufferLength)
        header.deallocate()
    }

    /// A connection idle for a frame time-out gives its buffers' pages back
    /// (a busy one holds up to two full batches, about 2 MiB; an idle one a
    /// few KiB). Its next big request faults them in again.
    private func releaseBuffersIfIdle() {
        guard buffersTouched else { return }
        buffersTouched = false
        try? MemoryMapping.advise(UInt(bitPattern: payload), length: Self.bufferLength, .dontNeed)
        try? MemoryMapping.advise(UInt(bitPattern: reply), length: Self.bufferLength, .dontNeed)
    }

    func run() {
        defer {
            if let session { context.detach(session) }
        }
        while true {
            switch readFrame() {
            case .closed:
                return
            case .fatal(let requestID, let error):
                logger.warning("closing connection: \(error)")
                send(error: error, opcode: 0x80, requestID: requestID)
                return
            case .frame(let frame):
                if !handle(frame) { return }
            }
        }
    }

    private enum ReadResult {
        case frame(FrameHeader)
        case closed
        case fatal(requestID: UInt32, ProtocolError)
    }

    /// Reads one header and its payload. Idle time before a frame is fine;
    /// a frame that stops half-way for `frameTimeout` is a truncated frame.
    private func readFrame() -> ReadResult {
        var received = 0
        while received < FrameHeader.size {
            do {
                try socket.readExactly(into: header + received, count: 1)
                received += 1
                // Read the rest of the header in one go once the first byte is here.
                try socket.readExactly(into: header + received, count: FrameHeader.size - received)
                received = FrameHeader.size
            } catch let error as TCPSocket.ClosedByPeer {
                if received == 0 && error.bytesRead == 0 { return .closed }
                return .fatal(requestID: 0, ProtocolError(.malformedFrame, "connection closed mid-header"))
            } catch let error as Errno where error == .timedOut && received == 0 {
                if context.stopping.load(ordering: .relaxed) { return .closed }
                // Idle is fine once authenticated; a peer that never says HELLO
                // does not get to hold a thread and buffers.
                if session == nil {
                    return .fatal(requestID: 0, ProtocolError(.helloRequired, "no HELLO within \(context.configuration.frameTimeoutSeconds) s"))
                }
                releaseBuffersIfIdle()
                continue
            } catch {
                if received == 0 { return .closed }
                return .fatal(requestID: 0, ProtocolError(.malformedFrame, "truncated frame header (\(error))"))
            }
        }
        let requestID = UInt32(littleEndian: header.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        let frame: FrameHeader
        do { frame = try FrameHeader.decode(header) } catch { return .fatal(requestID: requestID, error) }
        if frame.reserved != 0 || frame.status != 0 || frame.isResponse {
            return .fatal(requestID: requestID, ProtocolError(.malformedFrame,
                "a request must have status 0, reserved 0 and bit 7 of the opcode clear"))
        }
        do {
            try socket.readExactly(into: payload, count: Int(frame.payloadLength))
        } catch {
            return .fatal(requestID: requestID, ProtocolError(.malformedFrame,
                "truncated frame: payload of \(frame.payloadLength) bytes did not arrive (\(error))"))
        }
        return .frame(frame)
    }

    /// Answers one frame. Returns false when the connection must close.
    private func handle(_ frame: FrameHeader) -> Bool {
        let started = monotonicNanoseconds()
        // A page batch fills the payload or the reply buffer (a refused READ_PAGES may have filled part of it).
        if frame.payloadLength > 4096 || frame.opcode == Opcode.readPages.rawValue { buffersTouched = true }
        let metrics = context.metrics
        metrics.bytesReceived.add(UInt64(FrameHeader.size) + UInt64(frame.payloadLength))
        let body = UnsafeRawBufferPointer(start: payload, count: Int(frame.payloadLength))
        guard let opcode = Opcode(rawValue: frame.opcode) else {
            metrics.errors[Int(ErrorCode.unknownOpcode.rawValue)].add()
            send(error: ProtocolError(.unknownOpcode, "unknown opcode 0x\(String(frame.opcode, radix: 16))"),
                 opcode: frame.opcode | 0x80, requestID: frame.requestID)
            return true
        }
        do {
            let replyLength = try dispatch(opcode, body)
            if replyLength > 4096 { buffersTouched = true }
            send(opcode: opcode.response, requestID: frame.requestID, status: 0,
                 body: UnsafeRawBufferPointer(start: reply, count: replyLength))
            metrics.request(opcode.rawValue, nanoseconds: monotonicNanoseconds() - started, error: nil)
            return true
        } catch {
            defer { metrics.request(opcode.rawValue, nanoseconds: monotonicNanoseconds() - started, error: error.code) }
            if error.code != .noSuchRegion && error.code != .pageOutOfRange {
                logger.info("request \(frame.requestID) \(opcode) refused: \(error)")
            }
            send(error: error, opcode: opcode.response, requestID: frame.requestID)
            return !error.code.closesConnection
        }
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

    private func send(error: ProtocolError, opcode: UInt8, requestID: UInt32) {
        let message = Array(error.message.utf8.prefix(ProtocolLimits.maxErrorMessage))
        message.withUnsafeBytes { send(opcode: opcode, requestID: requestID, status: error.code.rawValue, body: $0) }
    }

    private func send(opcode: UInt8, requestID: UInt32, status: UInt16, body: UnsafeRawBufferPointer) {
        FrameHeader(opcode: opcode, requestID: requestID, payloadLength: UInt32(body.count), status: status).encode(into: header)
        context.metrics.bytesSent.add(UInt64(FrameHeader.size + body.count))
        do {
            try socket.writeAll(UnsafeRawBufferPointer(start: header, count: FrameHeader.size), body)
        } catch {
            logger.debug("reply not sent: \(error)")
            socket.shutdown()
        }
    }
}

/// Compares secrets without an early exit, so timing does not leak the prefix.
func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
    guard a.count == b.count else { return false }
    var diff: UInt8 = 0
    for i in 0..<a.count { diff |= a[i] ^ b[i] }
    return diff == 0
}
