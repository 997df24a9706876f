#if canImport(Glibc)
import Glibc
#endif

/// A POSIX error number, as swift-system's `Errno`: a typed value instead of a
/// global that the next call overwrites.
public struct Errno: Error, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(rawValue: Int32) { self.rawValue = rawValue }

    /// Builds from a shim return value of `-errno`.
    @inlinable public init(negated value: Int32) { self.rawValue = -value }

    /// The current thread's `errno`.
    public static var current: Errno { Errno(rawValue: errno) }

    public static let again = Errno(rawValue: EAGAIN)
    public static let exists = Errno(rawValue: EEXIST)
    public static let noEntry = Errno(rawValue: ENOENT)
    public static let noSpace = Errno(rawValue: ENOSPC)
    public static let interrupted = Errno(rawValue: EINTR)
    public static let permissionDenied = Errno(rawValue: EPERM)
    public static let accessDenied = Errno(rawValue: EACCES)
    public static let invalidArgument = Errno(rawValue: EINVAL)
    public static let badAddress = Errno(rawValue: EFAULT)
    public static let timedOut = Errno(rawValue: ETIMEDOUT)
    public static let connectionRefused = Errno(rawValue: ECONNREFUSED)
    public static let connectionReset = Errno(rawValue: ECONNRESET)
    public static let brokenPipe = Errno(rawValue: EPIPE)
    public static let wouldBlock = Errno(rawValue: EWOULDBLOCK)
    public static let outOfMemory = Errno(rawValue: ENOMEM)
    public static let notImplemented = Errno(rawValue: ENOSYS)
    public static let connectionAborted = Errno(rawValue: ECONNABORTED)
    public static let tooManyOpenFiles = Errno(rawValue: EMFILE)
    /// A userfaultfd whose process (its memory) is gone: exited or exec'd.
    public static let noSuchProcess = Errno(rawValue: ESRCH)

    public var description: String {
        guard let text = strerror(rawValue) else { return "errno \(rawValue)" }
        return "\(String(cString: text)) (errno \(rawValue))"
    }
}

/// Runs a shim call that returns `-errno` on failure, retrying EINTR.
@inlinable
public func checkedShim(_ body: () -> Int32) throws(Errno) -> Int32 {
    while true {
        let result = body()
        if result >= 0 { return result }
        if result == -EINTR { continue }
        throw Errno(negated: result)
    }
}

/// Runs a libc call that returns -1 and sets `errno`, retrying EINTR.
@inlinable
public func checkedLibc<T: BinaryInteger>(_ body: () -> T) throws(Errno) -> T {
    while true {
        let result = body()
        if result >= 0 { return result }
        let error = Errno.current
        if error == .interrupted { continue }
        throw error
    }
}
