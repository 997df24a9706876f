import FarMemSystem
import XCTest

/// The socket layer on a real loopback connection. FarMemory is a library: it
/// must never raise SIGPIPE in the application it is linked into, and farmemd
/// must not die of one when a client vanishes. If a write here raised SIGPIPE,
/// the test process itself would die (XCTest leaves SIGPIPE at its default).
final class SocketTests: XCTestCase {
    private func connectedPair() throws -> (client: TCPSocket, server: TCPSocket, listener: TCPSocket) {
        let listener = try TCPSocket.listen(on: TCPSocket.Endpoint(host: "127.0.0.1", port: 0))
        let client = try TCPSocket.connect(to: TCPSocket.Endpoint(host: "127.0.0.1", port: listener.localPort), timeoutSeconds: 5)
        let server = try listener.accept()
        return (client, server, listener)
    }

    private func writeBoth(_ socket: TCPSocket) -> Errno? {
        let header = [UInt8](repeating: 1, count: 16), body = [UInt8](repeating: 2, count: 4096)
        do {
            try header.withUnsafeBytes { h in try body.withUnsafeBytes { b in try socket.writeAll(h, b) } }
            return nil
        } catch {
            return error as? Errno ?? Errno(rawValue: EIO)
        }
    }

    func testHeaderAndBodyWriteAfterOwnShutdownFailsWithEPIPE() throws {
        let (client, server, listener) = try connectedPair()
        defer { client.close(); server.close(); listener.close() }
        XCTAssertNil(writeBoth(server), "a live connection takes the write")
        server.shutdown()
        XCTAssertEqual(writeBoth(server), .brokenPipe)
    }

    func testHeaderAndBodyWritesToAResetPeerFailWithAnErrorNotASignal() throws {
        let (client, server, listener) = try connectedPair()
        defer { server.close(); listener.close() }
        // Close with SO_LINGER 0: the peer answers with RST, as a killed host's stack would.
        var linger = Glibc.linger(l_onoff: 1, l_linger: 0)
        setsockopt(client.descriptor.rawValue, SOL_SOCKET, SO_LINGER, &linger, socklen_t(MemoryLayout<Glibc.linger>.size))
        client.close()
        var errors: [Errno] = []
        for _ in 0..<200 where errors.count < 2 {   // the first error is ECONNRESET, the next EPIPE
            if let error = writeBoth(server) { errors.append(error) } else { usleep(1_000) }
        }
        XCTAssertEqual(errors.count, 2, "writes to a reset peer fail")
        XCTAssertTrue(errors.allSatisfy { $0 == .connectionReset || $0 == .brokenPipe }, "\(errors)")
    }
}
