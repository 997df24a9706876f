/// Request kinds. A response carries the request's opcode with bit 7 set.
public enum Opcode: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case createRegion = 0x02
    case dropRegion = 0x03
    case readPages = 0x04
    case writePages = 0x05
    case discard = 0x06
    case stats = 0x07
    /// Optional (RDMA servers): a ticket that lets RDMA connections join this session.
    case rdmaAttach = 0x08
    /// Optional (RDMA servers): register a region for one-sided access by this session.
    case rdmaExpose = 0x09
    /// Version 2: set a region's reservation (grow or shrink).
    case reserve = 0x0A
    /// Version 3: names this connection's link and generation, so that a
    /// connection the client replaced can no longer change pages.
    case fence = 0x0B

    public var response: UInt8 { rawValue | 0x80 }

    /// The protocol version that introduced the request.
    public var sinceVersion: UInt16 {
        switch self {
        case .reserve: return 2
        case .fence: return 3
        default: return 1
        }
    }
}

/// The protocol versions this code speaks (HELLO negotiates one; the frame
/// header's version byte is the frame format, 1 in both).
public enum ProtocolVersion {
    public static let oldest: UInt16 = 1
    /// 2 added partial reservations: CREATE_REGION's `reserved_pages` and RESERVE.
    /// 3 added FENCE.
    public static let newest: UInt16 = 3
}
