#if canImport(Glibc)
import Glibc
#endif
import CFarMemSys

/// A blocking TCP socket. Blocking I/O with time-outs keeps each server
/// connection and each client worker a simple sequential loop.
public struct TCPSocket: Sendable {
    public let descriptor: FileDescriptor

    public init(descriptor: FileDescriptor) { self.descriptor = descriptor }

    /// "HOST:PORT", "[v6]:PORT" or ":PORT".
    public struct Endpoint: Sendable, Hashable, CustomStringConvertible {
        public var host: String
        public var port: UInt16
        public init(host: String, port: UInt16) { self.host = host; self.port = port }

        public init?(parsing text: String) {
            guard let colon = text.lastIndex(of: ":"), let port = UInt16(text[text.index(after: colon)...]) else { return nil }
            var host = String(text[..<colon])
            if host.hasPrefix("["), host.hasSuffix("]") { host = String(host.dropFirst().dropLast()) }
            self.host = host.isEmpty ? "0.0.0.0" : host
            self.port = port
        }

        public var description: String { host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)" }
    }

    public struct ResolveError: Error, CustomStringConvertible {
        public let endpoint: Endpoint
        public let message: String
        public var description: String { "cannot resolve \(endpoint): \(message)" }
    }

    private static func resolve(_ endpoint: Endpoint, passive: Bool) throws -> (family: Int32, address: [UInt8]) {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        hints.ai_flags = passive ? AI_PASSIVE : 0
        var result: UnsafeMutablePointer<addrinfo>?
        let rc = getaddrinfo(endpoint.host, String(endpoint.port), &hints, &result)
        guard rc == 0, let info = result else {
            throw ResolveError(endpoint: endpoint, message: String(cString: gai_strerror(rc)))
        }
        defer { freeaddrinfo(result) }
        let bytes = UnsafeRawBufferPointer(start: info.pointee.ai_addr, count: Int(info.pointee.ai_addrlen))
        return (info.pointee.ai_family, Array(bytes))
    }

    /// Connects with a time-out on the connect itself and on every later read and write.
    public static func connect(to endpoint: Endpoint, timeoutSeconds: Double) throws -> TCPSocket {
        let (family, address) = try resolve(endpoint, passive: false)
        let fd = try checkedLibc { socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let connection = TCPSocket(descriptor: FileDescriptor(rawValue: fd))
        do {
            try connection.setTimeouts(seconds: timeoutSeconds)
            try address.withUnsafeBytes { raw in
                _ = try checkedLibc {
                    Glibc.connect(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count))
                }
            }
            try connection.setNoDelay()
            return connection
        } catch {
            connection.close()
            throw error
        }
    }

    /// Binds and listens; port 0 picks a free port (see `localPort`).
    public static func listen(on endpoint: Endpoint, backlog: Int32 = 128) throws -> TCPSocket {
        let (family, address) = try resolve(endpoint, passive: true)
        let fd = try checkedLibc { socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0) }
        let listener = TCPSocket(descriptor: FileDescriptor(rawValue: fd))
        do {
            var one: Int32 = 1
            _ = setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            try address.withUnsafeBytes { raw in
                _ = try checkedLibc { bind(fd, raw.baseAddress!.assumingMemoryBound(to: sockaddr.self), socklen_t(raw.count)) }
            }
            _ = try checkedLibc { Glibc.listen(fd, backlog) }
            return listener
        } catch {
            listener.close()
            throw error
        }
    }

    public var localPort: UInt16 {
        var storage = sockaddr_storage()
        var length = socklen_t(MemoryLayout<sockaddr_storage>.size)
        _ = withUnsafeMutablePointer(to: &storage) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(descriptor.rawValue, $0, &length) }
        }
        return withUnsafeBytes(of: storage) { raw in
            // sin_port and sin6_port sit at the same offset, in network order.
            UInt16(raw[2]) << 8 | UInt16(raw[3])
        }
    }

    public func accept() throws(Errno) -> TCPSocket {
        let fd = try checkedShim { fm_accept(descriptor.rawValue) }
        let socket = TCPSocket(descriptor: FileDescriptor(rawValue: fd))
        try? socket.setNoDelay()
        return socket
    }

    public func setNoDelay() throws(Errno) {
        var one: Int32 = 1
        _ = try checkedLibc { setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size)) }
    }

    /// TCP keepalive: after `idleSeconds` of silence, probe every `intervalSeconds`;
    /// after `probes` unanswered probes the connection fails (reads return an error).
    public func setKeepAlive(idleSeconds: Int32, intervalSeconds: Int32, probes: Int32) throws(Errno) {
        var on: Int32 = 1, idle = idleSeconds, interval = intervalSeconds, count = probes
        let size = socklen_t(MemoryLayout<Int32>.size)
        _ = try checkedLibc { setsockopt(descriptor.rawValue, SOL_SOCKET, SO_KEEPALIVE, &on, size) }
        _ = try checkedLibc { setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), TCP_KEEPIDLE, &idle, size) }
        _ = try checkedLibc { setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), TCP_KEEPINTVL, &interval, size) }
        _ = try checkedLibc { setsockopt(descriptor.rawValue, Int32(IPPROTO_TCP), TCP_KEEPCNT, &count, size) }
    }

    /// SO_RCVTIMEO and SO_SNDTIMEO; 0 means block forever.
    public func setTimeouts(seconds: Double) throws(Errno) {
        var tv = timeval(tv_sec: Int(seconds), tv_usec: Int((seconds - Double(Int(seconds))) * 1_000_000))
        let size = socklen_t(MemoryLayout<timeval>.size)
        _ = try checkedLibc { setsockopt(descriptor.rawValue, SOL_SOCKET, SO_RCVTIMEO, &tv, size) }
        _ = try checkedLibc { setsockopt(descriptor.rawValue, SOL_SOCKET, SO_SNDTIMEO, &tv, size) }
    }

    /// Error for a peer that closed the connection mid-read.
    public struct ClosedByPeer: Error, CustomStringConvertible {
        public let bytesRead: Int
        public var description: String { bytesRead == 0 ? "connection closed by peer" : "connection closed by peer mid-frame" }
    }

    /// Polls (MSG_PEEK | MSG_DONTWAIT, no sleep) until a byte is there to
    /// read or `nanoseconds` have passed: a reply expected within a wake-up's
    /// cost is taken without one. Returns whether data (or an error, or the
    /// end) is waiting; the next read then does not block.
    @discardableResult
    public func spinUntilReadable(nanoseconds: UInt64) -> Bool {
        var byte: UInt8 = 0
        let deadline = fm_now_ns() &+ nanoseconds
        repeat {
            let n = recv(descriptor.rawValue, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT))
            if n != -1 || (errno != EAGAIN && errno != EINTR) { return true }
        } while fm_now_ns() < deadline
        return false
    }

    /// Reads exactly `count` bytes. Throws `ClosedByPeer` on EOF, `Errno` on
    /// errors (EAGAIN here means the receive time-out expired).
    public func readExactly(into buffer: UnsafeMutableRawPointer, count: Int) throws {
        var done = 0
        while done < count {
            let n = recv(descriptor.rawValue, buffer + done, count - done, 0)
            if n > 0 { done += n; continue }
            if n == 0 { throw ClosedByPeer(bytesRead: done) }
            let error = Errno.current
            if error == .interrupted { continue }
            throw error == .again ? Errno.timedOut : error
        }
    }

    /// Writes all bytes of each buffer, in order, with as few syscalls as the kernel allows.
    public func writeAll(_ buffer: UnsafeRawPointer, count: Int) throws(Errno) {
        var done = 0
        while done < count {
            let n = send(descriptor.rawValue, buffer + done, count - done, Int32(MSG_NOSIGNAL))
            if n >= 0 { done += n; continue }
            let error = Errno.current
            if error == .interrupted { continue }
            throw error == .again ? Errno.timedOut : error
        }
    }

    /// Writes two buffers (a header and a payload) with one sendmsg where possible.
    /// sendmsg, not writev: writev to a peer that has gone raises SIGPIPE, which
    /// would kill farmemd or the application linked with FarMemory (a library must
    /// not change the process's signal dispositions), while MSG_NOSIGNAL gives EPIPE.
    public func writeAll(_ first: UnsafeRawBufferPointer, _ second: UnsafeRawBufferPointer) throws(Errno) {
        // A tuple, not an array: no allocation on the fault path.
        var vectors = (
            iovec(iov_base: UnsafeMutableRawPointer(mutating: first.baseAddress), iov_len: first.count),
            iovec(iov_base: UnsafeMutableRawPointer(mutating: second.baseAddress), iov_len: second.count)
        )
        let total = first.count + second.count
        let fd = descriptor.rawValue
        let n = withUnsafeMutablePointer(to: &vectors) {
            $0.withMemoryRebound(to: iovec.self, capacity: 2) { iov in
                var message = msghdr()
                message.msg_iov = iov
                message.msg_iovlen = second.count > 0 ? 2 : 1
                return sendmsg(fd, &message, Int32(MSG_NOSIGNAL))
            }
        }
        if n == total { return }
        // Rare: a short or interrupted sendmsg. Finish with plain sends.
        let sent = max(n, 0)
        if n < 0, Errno.current != .interrupted, Errno.current != .again { throw Errno.current }
        if sent < first.count {
            try writeAll(first.baseAddress! + sent, count: first.count - sent)
            if second.count > 0 { try writeAll(second.baseAddress!, count: second.count) }
        } else if second.count > 0 {
            let offset = sent - first.count
            try writeAll(second.baseAddress! + offset, count: second.count - offset)
        }
    }

    /// Stops both directions (wakes a thread blocked in recv on this socket).
    public func shutdown() { _ = Glibc.shutdown(descriptor.rawValue, Int32(SHUT_RDWR)) }
    public func close() { descriptor.close() }
}
