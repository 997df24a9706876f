import CFarMemSys

/// An eventfd used to wake a thread blocked in poll(): cheaper than a pipe and
/// safe to signal from any thread.
public struct EventNotifier: Sendable {
    public let descriptor: FileDescriptor

    public init() throws(Errno) {
        descriptor = FileDescriptor(rawValue: try checkedShim { fm_eventfd() })
    }

    public func signal() { _ = fm_eventfd_signal(descriptor.rawValue) }
    public func drain() { _ = fm_eventfd_drain(descriptor.rawValue) }
    public func close() { descriptor.close() }
}
