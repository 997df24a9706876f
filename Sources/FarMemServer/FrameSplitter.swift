import FarMemProtocol

/// Finds where the next request frame ends in the bytes received so far on a
/// connection. Pure: the event loop hands it whatever it holds, and it says
/// whether a whole frame is there, how many bytes one still needs, or that
/// the stream cannot be trusted (a bad header cannot be resynchronised).
enum FrameSplitter {
    enum Split: Equatable {
        /// A whole frame: its header, and header plus payload in bytes.
        case complete(FrameHeader, length: Int)
        /// Not yet: the frame (or its header, while fewer than 16 bytes are
        /// here) is this many bytes long in total.
        case needs(Int)
        /// The connection must close after answering this error.
        case invalid(requestID: UInt32, ProtocolError)
    }

    static func split(_ bytes: UnsafeRawBufferPointer) -> Split {
        guard bytes.count >= FrameHeader.size else { return .needs(FrameHeader.size) }
        let base = bytes.baseAddress!
        let requestID = UInt32(littleEndian: base.loadUnaligned(fromByteOffset: 4, as: UInt32.self))
        let header: FrameHeader
        do { header = try FrameHeader.decode(base) } catch { return .invalid(requestID: requestID, error) }
        if header.reserved != 0 || header.status != 0 || header.isResponse {
            return .invalid(requestID: requestID, ProtocolError(.malformedFrame,
                "a request must have status 0, reserved 0 and bit 7 of the opcode clear"))
        }
        let length = FrameHeader.size + Int(header.payloadLength)
        return bytes.count >= length ? .complete(header, length: length) : .needs(length)
    }

    /// The longest frame a peer may send: a header and the largest payload.
    static let maxFrameLength = FrameHeader.size + ProtocolLimits.maxPayload
}
