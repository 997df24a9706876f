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

    public var response: UInt8 { rawValue | 0x80 }
}
