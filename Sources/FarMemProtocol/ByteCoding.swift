/// Little-endian append-only writer over a byte array (control messages and
/// test vectors; the page path writes straight into preallocated buffers).
public struct ByteWriter {
    public private(set) var bytes: [UInt8] = []
    public init(capacity: Int = 64) { bytes.reserveCapacity(capacity) }

    public mutating func u8(_ v: UInt8) { bytes.append(v) }
    public mutating func u16(_ v: UInt16) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    public mutating func raw<C: Collection>(_ v: C) where C.Element == UInt8 { bytes.append(contentsOf: v) }
}

/// Bounds-checked little-endian reader: every read past the end is a
/// MALFORMED_FRAME, never a crash.
public struct ByteReader {
    private let buffer: UnsafeRawBufferPointer
    public private(set) var offset = 0
    private let context: String

    public init(_ buffer: UnsafeRawBufferPointer, context: String) {
        self.buffer = buffer
        self.context = context
    }

    public var remaining: Int { buffer.count - offset }

    private mutating func take(_ n: Int) throws(ProtocolError) -> Int {
        guard n <= remaining else {
            throw ProtocolError(.malformedFrame, "\(context): payload truncated at byte \(offset) (needs \(n) more, has \(remaining))")
        }
        defer { offset += n }
        return offset
    }

    public mutating func u8() throws(ProtocolError) -> UInt8 { buffer[try take(1)] }
    public mutating func u16() throws(ProtocolError) -> UInt16 {
        UInt16(littleEndian: buffer.loadUnaligned(fromByteOffset: try take(2), as: UInt16.self))
    }
    public mutating func u32() throws(ProtocolError) -> UInt32 {
        UInt32(littleEndian: buffer.loadUnaligned(fromByteOffset: try take(4), as: UInt32.self))
    }
    public mutating func u64() throws(ProtocolError) -> UInt64 {
        UInt64(littleEndian: buffer.loadUnaligned(fromByteOffset: try take(8), as: UInt64.self))
    }
    public mutating func bytes(_ n: Int) throws(ProtocolError) -> UnsafeRawBufferPointer {
        let start = try take(n)
        return UnsafeRawBufferPointer(rebasing: buffer[start..<start + n])
    }

    /// Payloads have an exact size: trailing bytes are an error too.
    public func expectEnd() throws(ProtocolError) {
        guard remaining == 0 else {
            throw ProtocolError(.malformedFrame, "\(context): \(remaining) unexpected trailing bytes")
        }
    }
}
