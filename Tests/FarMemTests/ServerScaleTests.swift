import FarMemProtocol
import FarMemSystem
import Foundation
import XCTest

/// A real farmemd with many connections (issue 13): a few event-loop threads
/// serve them all, idle connections cost next to nothing, and the memory
/// for frames in flight is bounded by --buffer-memory, with connections past
/// it waiting their turn and losing nothing.
final class ServerScaleTests: XCTestCase {
    override func setUp() {
        // The test holds a socket per connection: more than a shell's usual 1024.
        raiseDescriptorLimit()
    }

    private func threads(of server: ServerProcess) throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(server.process.processIdentifier)/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("Threads:") })
        return try XCTUnwrap(Int(line.split(separator: "\t").last!.trimmingCharacters(in: .whitespaces)))
    }

    /// 1,000 connections at once: each stores and reads back its own page,
    /// all requests outstanding together. The server used to run a thread per
    /// connection (1,002 threads, about 18 KiB resident each when idle).
    func testAThousandConnectionsAreServedByAFewThreadsInLittleMemory() throws {
        let server = try ServerProcess(capacity: "64MiB", extra: ["--max-connections", "1100", "--event-loops", "2"])
        defer { server.stop() }
        let key = RawClient.randomKey()
        let warmUp = try RawClient(server.endpoint)
        XCTAssertNil(try warmUp.hello(key: key).error)
        let before = try server.residentKiB()
        let count = 1000
        var clients: [RawClient] = []
        for index in 0..<count {
            let client = try RawClient(server.endpoint)
            XCTAssertNil(try client.hello(key: key).error, "connection \(index)")
            clients.append(client)
        }
        let idleKiB = try server.residentKiB() - before
        let idleThreads = try threads(of: server)
        // Every connection's requests out at once, then every reply read.
        for (index, client) in clients.enumerated() {
            try client.send(.createRegion, RegionSpec(regionID: UInt64(index + 1), pageCount: 1).encode())
            try client.send(.writePages, RawClient.writePayload(region: UInt64(index + 1), pages: [0]) { _ in UInt8(truncatingIfNeeded: index) })
            try client.send(.readPages, PageBatchHeader(regionID: UInt64(index + 1), pages: [0]).encode())
        }
        for (index, client) in clients.enumerated() {
            XCTAssertNil(try client.receive().error, "create \(index)")
            XCTAssertNil(try client.receive().error, "write \(index)")
            let read = try client.receive()
            XCTAssertNil(read.error, "read \(index)")
            XCTAssertEqual(read.body, [UInt8](repeating: UInt8(truncatingIfNeeded: index), count: 4096), "connection \(index)'s page")
        }
        let busyKiB = try server.residentKiB() - before
        let stats = try warmUp.statsEventually { $0.connections == count + 1 }
        XCTAssertEqual(stats.connections, UInt64(count + 1))
        print("1000 connections: idle +\(idleKiB) KiB, after a request each +\(busyKiB) KiB, \(idleThreads) threads")
        XCTAssertLessThanOrEqual(idleThreads, 8, "a few event loops, not a thread per connection")
        XCTAssertLessThan(idleKiB, count * 4, "idle connections cost under 4 KiB each: \(idleKiB) KiB for \(count)")
        XCTAssertLessThan(busyKiB, count * 16, "and after a request each, under 16 KiB each: \(busyKiB) KiB for \(count)")
        withExtendedLifetime(clients) {}
    }

    /// With room for one frame in flight (--buffer-memory 1MiB, one loop),
    /// eight clients each send a full 1 MiB batch but its last byte. One holds
    /// the buffer; the others wait, unread, in the kernel: the server's memory
    /// stays about one frame, not eight. The holder never finishes; the frame
    /// time-out cuts it off, and every other batch is then stored whole.
    func testConnectionsPastTheBufferMemoryWaitTheirTurnAndLoseNothing() throws {
        let server = try ServerProcess(capacity: "64MiB", extra: ["--buffer-memory", "1MiB", "--event-loops", "1",
                                                                  "--frame-timeout", "1"])
        defer { server.stop() }
        let key = RawClient.randomKey()
        let observer = try RawClient(server.endpoint)
        XCTAssertNil(try observer.hello(key: key).error)
        let pages = [UInt64](0..<UInt64(ProtocolLimits.maxBatchPages))
        let clients = try (0..<8).map { index -> RawClient in
            let client = try RawClient(server.endpoint)
            XCTAssertNil(try client.hello(key: key).error)
            XCTAssertNil(try client.call(.createRegion, RegionSpec(regionID: UInt64(index + 1), pageCount: 256).encode()).error)
            return client
        }
        let frames = (0..<8).map { index in
            RawClient.frame(Opcode.writePages.rawValue, id: 100, RawClient.writePayload(region: UInt64(index + 1), pages: pages) {
                UInt8(truncatingIfNeeded: index * 31 + $0)
            })
        }
        let before = try server.residentKiB()
        // Each sender on its own thread: a client the server does not read blocks in send.
        // Each frame's last byte goes after the rest, from the same thread, when told.
        let sockets = clients.map(\.socket)
        let finish = (0..<8).map { _ in DispatchSemaphore(value: 0) }
        let senders = (0..<8).map { index in
            Thread {
                let bytes = frames[index]
                try? bytes.withUnsafeBytes { try sockets[index].writeAll($0.baseAddress!, count: $0.count - 1) }
                finish[index].wait()
                try? bytes.withUnsafeBytes { try sockets[index].writeAll($0.baseAddress! + $0.count - 1, count: 1) }
            }
        }
        for sender in senders { sender.start() }
        usleep(500_000)
        let waiting = try server.residentKiB() - before
        XCTAssertLessThan(waiting, 3 * 1024, "about one frame held, not eight: \(waiting) KiB")
        // All but client 0 finish their frames; whoever holds the buffer, each gets it in turn.
        for index in 1..<8 { finish[index].signal() }
        defer { finish[0].signal() }
        var stored = 0
        for index in 1..<8 {
            try clients[index].socket.setTimeouts(seconds: 10)   // it may wait for the others' frames first
            let reply = try clients[index].receive()
            XCTAssertNil(reply.error, "client \(index): \(reply.message)")
            stored += 1
        }
        XCTAssertEqual(stored, 7)
        try clients[0].socket.setTimeouts(seconds: 10)
        let cutOff = try clients[0].receive()
        XCTAssertEqual(cutOff.error, .malformedFrame, "the stalled frame is cut off: \(cutOff.message)")
        XCTAssertTrue(clients[0].isClosedByServer())
        for index in 1..<8 {
            let read = try clients[index].call(.readPages, PageBatchHeader(regionID: UInt64(index + 1), pages: [0, 255]).encode())
            XCTAssertEqual(Array(read.body.prefix(4096)), [UInt8](repeating: UInt8(truncatingIfNeeded: index * 31), count: 4096))
            XCTAssertEqual(Array(read.body.suffix(4096)), [UInt8](repeating: UInt8(truncatingIfNeeded: index * 31 + 255), count: 4096))
        }
        withExtendedLifetime((observer, senders)) {}
    }
}
