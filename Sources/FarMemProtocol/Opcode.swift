/// Request kinds. A response carries the request's opcode with bit 7 set.
public enum Opcode: UInt8, Sendable, CaseIterable {
    case hello = 0x01
    case createRegion = 0x02
    case dropRegion = 0x03
    case readPages = 0x04
    case writePages = 0x05
    case discard = 0x06
    case stats = 0x07

    public var response: UInt8 { rawValue | 0x80 }
}
