import CFarMemSys

/// A page fault a userfaultfd reports: a thread touched a missing page, or
/// wrote to a write-protected one. The thread waits until it is resolved or woken.
public struct PageFault: Sendable, Equatable {
    /// The faulting address (not page aligned).
    public var address: UInt
    /// The access was a write (UFFD_PAGEFAULT_FLAG_WRITE).
    public var isWrite: Bool
    /// The page is mapped but write-protected (UFFD_PAGEFAULT_FLAG_WP).
    public var isWriteProtect: Bool
    /// The faulting thread (UFFD_FEATURE_THREAD_ID), 0 if not asked for.
    public var thread: UInt32
    /// Which userfaultfd it came from, for a monitor that reads several (a
    /// forked child's, from UFFD_EVENT_FORK): 0 for its own. Set by the monitor.
    public var origin: UInt32

    public init(address: UInt, isWrite: Bool = false, isWriteProtect: Bool = false, thread: UInt32 = 0, origin: UInt32 = 0) {
        self.address = address
        self.isWrite = isWrite
        self.isWriteProtect = isWriteProtect
        self.thread = thread
        self.origin = origin
    }

    /// The address of the 4 KiB page it falls in.
    @inline(__always) public var page: UInt { address & ~UInt(4095) }
}

/// One message read from a userfaultfd (struct uffd_msg), decoded.
public enum UserfaultfdEvent: Sendable, Equatable {
    case pageFault(PageFault)
    /// MADV_DONTNEED or MADV_REMOVE of [start, end) (UFFD_EVENT_REMOVE). Sent
    /// before the pages go; the madvising thread waits until it is read.
    case remove(start: UInt, end: UInt)
    /// munmap of [start, end) (UFFD_EVENT_UNMAP), sent once it is done.
    case unmap(start: UInt, end: UInt)
    /// mremap moved `length` bytes from `from` to `to` (UFFD_EVENT_REMAP).
    case remap(from: UInt, to: UInt, length: UInt)
    /// fork (UFFD_EVENT_FORK): the child's userfaultfd.
    case fork(child: FileDescriptor)
    /// An event this code does not know (a newer kernel's).
    case unknown(UInt8)

    /// A fault, not one of the events about the address space.
    public var isPageFault: Bool {
        if case .pageFault = self { return true }
        return false
    }

    init(_ message: fm_uffd_msg) {
        switch message.event {
        case UInt8(FM_UFFD_EVENT_PAGEFAULT):
            self = .pageFault(PageFault(address: UInt(message.address),
                                        isWrite: message.flags & FM_UFFD_PAGEFAULT_FLAG_WRITE != 0,
                                        isWriteProtect: message.flags & FM_UFFD_PAGEFAULT_FLAG_WP != 0,
                                        thread: message.thread_id))
        case UInt8(FM_UFFD_EVENT_REMOVE): self = .remove(start: UInt(message.address), end: UInt(message.arg1))
        case UInt8(FM_UFFD_EVENT_UNMAP): self = .unmap(start: UInt(message.address), end: UInt(message.arg1))
        case UInt8(FM_UFFD_EVENT_REMAP):
            self = .remap(from: UInt(message.address), to: UInt(message.arg1), length: UInt(message.arg2))
        case UInt8(FM_UFFD_EVENT_FORK): self = .fork(child: FileDescriptor(rawValue: Int32(truncatingIfNeeded: message.arg1)))
        default: self = .unknown(message.event)
        }
    }
}

/// Where `Userfaultfd.read` puts messages: allocated once, so reading and
/// decoding allocate nothing. Owned by one thread.
public final class UserfaultfdMessages: @unchecked Sendable {
    /// What one read returns at most.
    public static let capacity = 64
    /// How many this buffer holds (reads at an offset fill a larger one).
    public let capacity: Int
    let raw: UnsafeMutablePointer<fm_uffd_msg>
    public init(capacity: Int = UserfaultfdMessages.capacity) {
        self.capacity = capacity
        raw = .allocate(capacity: capacity)
    }
    deinit { raw.deallocate() }

    /// The i-th message of the last read.
    @inline(__always) public subscript(i: Int) -> UserfaultfdEvent { UserfaultfdEvent(raw[i]) }

    /// Copies message `i` to slot `j` of `other` (no allocation).
    public func copy(_ i: Int, to other: UserfaultfdMessages, at j: Int) { other.raw[j] = raw[i] }
}
