/// Error codes carried in a response's status field (SPEC.md, "Errors").
public enum ErrorCode: UInt16, Sendable, CaseIterable {
    case malformedFrame = 1
    case unsupportedVersion = 2
    case helloRequired = 3
    case authenticationFailed = 4
    case unknownOpcode = 5
    case noSuchRegion = 6
    case regionExists = 7
    case pageOutOfRange = 8
    case outOfCapacity = 9
    case tooLarge = 10
    case protocolState = 11
    case internalError = 12
    case pageSizeMismatch = 13
    case rdmaUnavailable = 14
    /// A write or discard on a connection the client has since replaced (FENCE).
    case fenced = 15

    /// A refused HELLO ends the connection: the peer may not go on. (A damaged
    /// frame header ends it too, whatever its code, since the stream cannot be
    /// resynchronised; a bad payload in an intact frame does not.)
    public var closesConnection: Bool {
        switch self {
        case .unsupportedVersion, .authenticationFailed, .pageSizeMismatch, .fenced: return true
        default: return false
        }
    }

    public var name: String {
        switch self {
        case .malformedFrame: return "MALFORMED_FRAME"
        case .unsupportedVersion: return "UNSUPPORTED_VERSION"
        case .helloRequired: return "HELLO_REQUIRED"
        case .authenticationFailed: return "AUTHENTICATION_FAILED"
        case .unknownOpcode: return "UNKNOWN_OPCODE"
        case .noSuchRegion: return "NO_SUCH_REGION"
        case .regionExists: return "REGION_EXISTS"
        case .pageOutOfRange: return "PAGE_OUT_OF_RANGE"
        case .outOfCapacity: return "OUT_OF_CAPACITY"
        case .tooLarge: return "TOO_LARGE"
        case .protocolState: return "PROTOCOL_STATE"
        case .internalError: return "INTERNAL_ERROR"
        case .pageSizeMismatch: return "PAGE_SIZE_MISMATCH"
        case .rdmaUnavailable: return "RDMA_UNAVAILABLE"
        case .fenced: return "FENCED"
        }
    }
}

/// A protocol-level failure: sent by a server as an error response, or found
/// by a decoder.
public struct ProtocolError: Error, Equatable, Sendable, CustomStringConvertible {
    public let code: ErrorCode
    public let message: String
    public init(_ code: ErrorCode, _ message: String) { self.code = code; self.message = message }
    public var description: String { "\(code.name): \(message)" }
}
