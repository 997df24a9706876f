/// RDMA_ATTACH reply: where the server's RDMA-CM listener is, and the ticket
/// an RDMA connection presents (as connection private data) to join the
/// session. The session was authenticated by HELLO on this TCP connection;
/// the ticket only names it, so no memory is exposed before authentication.
public struct RDMAAttachReply: Equatable, Sendable {
    public var port: UInt16
    public var ticket: [UInt8]   // 16 bytes
    public init(port: UInt16, ticket: [UInt8]) { self.port = port; self.ticket = ticket }

    public func encode() -> [UInt8] {
        var w = ByteWriter(); w.u16(port); w.u16(0); w.raw(ticket); return w.bytes
    }
    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> RDMAAttachReply {
        var r = ByteReader(payload, context: "RDMA_ATTACH reply")
        let port = try r.u16()
        _ = try r.u16()
        let reply = RDMAAttachReply(port: port, ticket: Array(try r.bytes(16)))
        try r.expectEnd()
        return reply
    }
}

/// RDMA_EXPOSE reply: a region's server memory for one-sided READ/WRITE.
/// The rkey belongs to the session's own protection domain: another client's
/// queue pairs cannot use it.
public struct RDMAExposeReply: Equatable, Sendable {
    public var address: UInt64
    public var rkey: UInt32
    public var length: UInt64
    public init(address: UInt64, rkey: UInt32, length: UInt64) { self.address = address; self.rkey = rkey; self.length = length }

    public func encode() -> [UInt8] {
        var w = ByteWriter(); w.u64(address); w.u32(rkey); w.u32(0); w.u64(length); return w.bytes
    }
    public static func decode(_ payload: UnsafeRawBufferPointer) throws(ProtocolError) -> RDMAExposeReply {
        var r = ByteReader(payload, context: "RDMA_EXPOSE reply")
        let address = try r.u64(), rkey = try r.u32()
        _ = try r.u32()
        let reply = RDMAExposeReply(address: address, rkey: rkey, length: try r.u64())
        try r.expectEnd()
        return reply
    }
}
