import CFarMemSys

/// An epoll instance (epoll(7)): the readiness queue of one event loop.
/// Each registered descriptor carries a caller-chosen 64-bit token, handed
/// back when it is ready, so a loop finds its connection without a lookup by fd.
public struct Epoll: Sendable {
    public let descriptor: FileDescriptor

    /// What a descriptor is watched for, and what it turned out to be.
    public struct Events: OptionSet, Sendable {
        public let rawValue: UInt32
        public init(rawValue: UInt32) { self.rawValue = rawValue }

        public static let readable = Events(rawValue: 0x001)       // EPOLLIN
        public static let writable = Events(rawValue: 0x004)       // EPOLLOUT
        public static let error = Events(rawValue: 0x008)          // EPOLLERR (always reported)
        public static let hangUp = Events(rawValue: 0x010)         // EPOLLHUP (always reported)
        public static let peerClosed = Events(rawValue: 0x2000)    // EPOLLRDHUP
        /// Wake only one of the loops waiting on a shared descriptor (a listener).
        public static let exclusive = Events(rawValue: 1 << 28)    // EPOLLEXCLUSIVE
        /// Report a change once, not for as long as the state holds.
        public static let edgeTriggered = Events(rawValue: 1 << 31) // EPOLLET
    }

    private enum Operation: Int32 {
        case add = 1, remove = 2, modify = 3   // EPOLL_CTL_*
    }

    public init() throws(Errno) {
        descriptor = FileDescriptor(rawValue: try checkedShim { fm_epoll_create() })
    }

    public func add(_ fd: FileDescriptor, for events: Events, token: UInt64) throws(Errno) {
        _ = try checkedShim { fm_epoll_control(descriptor.rawValue, Operation.add.rawValue, fd.rawValue, events.rawValue, token) }
    }

    public func modify(_ fd: FileDescriptor, for events: Events, token: UInt64) throws(Errno) {
        _ = try checkedShim { fm_epoll_control(descriptor.rawValue, Operation.modify.rawValue, fd.rawValue, events.rawValue, token) }
    }

    public func remove(_ fd: FileDescriptor) {
        _ = fm_epoll_control(descriptor.rawValue, Operation.remove.rawValue, fd.rawValue, 0, 0)
    }

    /// Room for the descriptors one `wait` reports, allocated once per loop.
    public struct ReadyList: ~Copyable {
        public static let capacity = 64
        let tokens = UnsafeMutablePointer<UInt64>.allocate(capacity: ReadyList.capacity)
        let events = UnsafeMutablePointer<UInt32>.allocate(capacity: ReadyList.capacity)
        public private(set) var count = 0

        public init() {}
        deinit {
            tokens.deallocate()
            events.deallocate()
        }

        public func token(_ index: Int) -> UInt64 { tokens[index] }
        public func events(_ index: Int) -> Events { Events(rawValue: events[index]) }

        mutating func setCount(_ n: Int) { count = n }
    }

    /// Waits up to `timeoutMilliseconds` (-1: forever) and fills `ready`.
    /// A signal interrupting the wait reports nothing ready.
    public func wait(into ready: inout ReadyList, timeoutMilliseconds: Int32) throws(Errno) {
        let n = try checkedShim {
            fm_epoll_wait(descriptor.rawValue, ready.tokens, ready.events, Int32(ReadyList.capacity), timeoutMilliseconds)
        }
        ready.setCount(Int(n))
    }

    public func close() { descriptor.close() }
}
