#if canImport(Glibc)
import Glibc
#endif
import CFarMemSys

/// Non-blocking I/O for event loops: each call does what the kernel can do
/// now and says so, instead of waiting (the server's connections).
extension TCPSocket {
    /// What a non-blocking receive or send did.
    public enum Transfer: Equatable, Sendable {
        /// This many bytes moved (more than zero).
        case moved(Int)
        /// Nothing can move now; wait for readiness.
        case wouldBlock
        /// The peer closed its side (receive only).
        case closed
        case failed(Errno)
    }

    public func setNonBlocking() throws(Errno) {
        _ = try checkedShim { fm_set_nonblocking(descriptor.rawValue) }
    }

    /// Accepts one pending connection, already non-blocking; nil when none is pending.
    public func acceptNonBlocking() throws(Errno) -> TCPSocket? {
        let fd = fm_accept_nonblocking(descriptor.rawValue)
        if fd >= 0 {
            let socket = TCPSocket(descriptor: FileDescriptor(rawValue: fd))
            try? socket.setNoDelay()
            return socket
        }
        let error = Errno(negated: fd)
        // A connection reset before it was accepted is gone; try the next.
        if error == .again || error == .interrupted || error == .connectionAborted { return nil }
        throw error
    }

    /// Receives up to `count` bytes; with `peek`, copies them but leaves them
    /// queued (MSG_PEEK), for `discard` to take once they are used.
    public func receiveSome(into buffer: UnsafeMutableRawPointer, count: Int, peek: Bool = false) -> Transfer {
        let flags = Int32(MSG_DONTWAIT) | (peek ? Int32(MSG_PEEK) : 0)
        while true {
            let n = recv(descriptor.rawValue, buffer, count, flags)
            if n > 0 { return .moved(n) }
            if n == 0 { return .closed }
            let error = Errno.current
            if error == .interrupted { continue }
            return error == .again ? .wouldBlock : .failed(error)
        }
    }

    /// Bytes received and not yet read (FIONREAD).
    public func queuedBytes() -> Int { Int(max(fm_queued_bytes(descriptor.rawValue), 0)) }

    /// Drops `count` queued bytes already looked at with `peek`. On TCP,
    /// MSG_TRUNC discards them without copying; other stream sockets (a
    /// socket pair) ignore the flag and copy them into `scratch`, which must
    /// hold `count` bytes.
    public func discard(_ count: Int, scratch: UnsafeMutableRawPointer) {
        var left = count
        while left > 0 {
            let n = recv(descriptor.rawValue, scratch, left, Int32(MSG_DONTWAIT) | Int32(MSG_TRUNC))
            if n > 0 { left -= n; continue }
            if n < 0 && Errno.current == .interrupted { continue }
            return   // cannot happen for bytes already seen; the next read reports any error
        }
    }

    /// Sends as much of `first` then `second` as the socket takes now, in one
    /// sendmsg (MSG_NOSIGNAL: a gone peer is EPIPE, not SIGPIPE).
    public func sendSome(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) -> Transfer {
        var vectors = (
            iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count)
        )
        let fd = descriptor.rawValue
        while true {
            let n = withUnsafeMutablePointer(to: &vectors) {
                $0.withMemoryRebound(to: iovec.self, capacity: 2) { iov in
                    var message = msghdr()
                    message.msg_iov = first.isEmpty ? iov + 1 : iov
                    message.msg_iovlen = (first.isEmpty ? 0 : 1) + (second.isEmpty ? 0 : 1)
                    return sendmsg(fd, &message, Int32(MSG_NOSIGNAL | MSG_DONTWAIT))
                }
            }
            if n > 0 { return .moved(n) }
            if n == 0 { return .wouldBlock }
            let error = Errno.current
            if error == .interrupted { continue }
            return error == .again ? .wouldBlock : .failed(error)
        }
    }
}
