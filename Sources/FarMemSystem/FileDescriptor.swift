#if canImport(Glibc)
import Glibc
#endif

/// An owned-by-convention file descriptor number (like swift-system's
/// `FileDescriptor`): a type so that a socket, a userfaultfd and an eventfd
/// cannot be mixed up with plain integers.
public struct FileDescriptor: Hashable, Sendable {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    public func close() { _ = Glibc.close(rawValue) }
}
