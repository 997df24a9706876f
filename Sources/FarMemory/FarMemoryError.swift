import FarMemProtocol
import FarMemSystem

/// What the application sees when far memory cannot be had.
public enum FarMemoryError: Error, CustomStringConvertible, Sendable {
    /// userfaultfd is missing or not permitted; the text says what to change.
    case userfaultfdUnavailable(String)
    /// The kernel lacks a userfaultfd feature FarMem relies on.
    case kernelTooOld(String)
    /// A hugetlb region cannot get the 2 MiB pages its budget needs (`vm.nr_hugepages`).
    case hugePagesUnavailable(String)
    case serverUnreachable(String)
    /// The server refused: out of capacity, wrong token, protocol mismatch, ...
    case serverRefused(ProtocolError)
    case invalidArgument(String)
    /// The transport asked for cannot be used (RDMA required but not possible).
    case transportUnavailable(String)
    case closed
    case system(String, Errno)

    public var description: String {
        switch self {
        case .userfaultfdUnavailable(let text): return text
        case .kernelTooOld(let text): return text
        case .hugePagesUnavailable(let text): return text
        case .serverUnreachable(let text): return "memory server unreachable: \(text)"
        case .serverRefused(let error):
            if error.code == .outOfCapacity { return "memory server is out of capacity: \(error.message)" }
            return "memory server refused the request: \(error)"
        case .invalidArgument(let text): return "invalid argument: \(text)"
        case .transportUnavailable(let text): return text
        case .closed: return "this FarMemory instance is closed"
        case .system(let what, let errno): return "\(what): \(errno)"
        }
    }
}
