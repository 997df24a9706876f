/// The 16-byte header in front of every frame (protocol/SPEC.md, "Frames").
/// All integers are little-endian.
public struct FrameHeader: Equatable, Sendable {
    public static let size = 16
    public static let magic: UInt16 = 0x4D46          // bytes "FM"
    public static let currentVersion: UInt8 = 1

    public var version: UInt8
    public var opcode: UInt8                         // bit 7 set: a response
    public var requestID: UInt32
    public var payloadLength: UInt32
    public var status: UInt16                        // 0 in requests and successful responses
    public var reserved: UInt16

    public init(version: UInt8 = FrameHeader.currentVersion, opcode: UInt8, requestID: UInt32,
                payloadLength: UInt32, status: UInt16 = 0, reserved: UInt16 = 0) {
        self.version = version
        self.opcode = opcode
        self.requestID = requestID
        self.payloadLength = payloadLength
        self.status = status
        self.reserved = reserved
    }

    public var isResponse: Bool { opcode & 0x80 != 0 }

    public func encode(into buffer: UnsafeMutableRawPointer) {
        buffer.storeBytes(of: FrameHeader.magic.littleEndian, toByteOffset: 0, as: UInt16.self)
        buffer.storeBytes(of: version, toByteOffset: 2, as: UInt8.self)
        buffer.storeBytes(of: opcode, toByteOffset: 3, as: UInt8.self)
        buffer.storeBytes(of: requestID.littleEndian, toByteOffset: 4, as: UInt32.self)
        buffer.storeBytes(of: payloadLength.littleEndian, toByteOffset: 8, as: UInt32.self)
        buffer.storeBytes(of: status.littleEndian, toByteOffset: 12, as: UInt16.self)
        buffer.storeBytes(of: reserved.littleEndian, toByteOffset: 14, as: UInt16.self)
    }

    /// Decodes and validates the fixed fields. A bad magic, version or length
    /// cannot be resynchronised, so the caller closes the connection.
    public static func decode(_ buffer: UnsafeRawPointer, maxPayload: Int = ProtocolLimits.maxPayload) throws(ProtocolError) -> FrameHeader {
        let magic = UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: 0, as: UInt16.self))
        guard magic == FrameHeader.magic else {
            throw ProtocolError(.malformedFrame, "bad magic 0x\(String(magic, radix: 16)) (expected 0x4d46, \"FM\")")
        }
        let header = FrameHeader(
            version: buffer.load(fromByteOffset: 2, as: UInt8.self),
            opcode: buffer.load(fromByteOffset: 3, as: UInt8.self),
            requestID: UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 4, as: UInt32.self)),
            payloadLength: UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: 8, as: UInt32.self)),
            status: UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: 12, as: UInt16.self)),
            reserved: UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: 14, as: UInt16.self)))
        guard header.version == FrameHeader.currentVersion else {
            throw ProtocolError(.unsupportedVersion, "frame version \(header.version); this peer speaks \(FrameHeader.currentVersion)")
        }
        guard Int(header.payloadLength) <= maxPayload else {
            throw ProtocolError(.tooLarge, "payload of \(header.payloadLength) bytes exceeds the limit of \(maxPayload)")
        }
        return header
    }
}

/// Sizes every peer must respect (SPEC.md, "Limits").
public enum ProtocolLimits {
    public static let pageSize = 4096
    public static let maxBatchPages = 256
    /// Largest payload: a full WRITE_PAGES batch plus room for its header fields.
    public static let maxPayload = 16 + maxBatchPages * 8 + maxBatchPages * pageSize
    public static let maxTokenLength = 256
    public static let maxErrorMessage = 1024
}
