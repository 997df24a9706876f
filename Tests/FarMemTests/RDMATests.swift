import FarMemProtocol
import FarMemSystem
import FarMemWorkloads
import Foundation
import XCTest
@testable import FarMemory

/// The RDMA transport, for real, over Soft-RoCE. These run inside the QEMU
/// guest that `make test-rdma` boots (deploy/rdma-vm), which sets
/// FARMEM_RDMA_ADDRESS to the rxe device's address; elsewhere they skip.
final class RDMATests: XCTestCase {
    private var address: String!

    override func setUpWithError() throws {
        guard let address = ProcessInfo.processInfo.environment["FARMEM_RDMA_ADDRESS"], !address.isEmpty else {
            throw XCTSkip("no RDMA device here: run `make test-rdma` (FARMEM_RDMA_ADDRESS unset)")
        }
        self.address = address
    }

    /// Writes every page of `region` with `pattern`.
    private func writeAll(_ region: FarRegion, _ pattern: PagePattern) {
        for page in 0..<region.pageCount { _ = pattern.write(page: page, at: region.baseAddress! + page * 4096) }
    }

    private func verifyAll(_ region: FarRegion, _ pattern: PagePattern) -> Int {
        (0..<region.pageCount).filter { !pattern.verify(page: $0, at: region.baseAddress! + $0 * 4096).ok }.count
    }

    func testRegionFourTimesTheBudgetIsPagedOverRDMAWithEveryByteVerified() throws {
        let server = try ServerProcess(capacity: "64MiB", host: address, extra: ["--transport", "rdma"])
        defer { server.stop() }
        let memory = try FarMemory(configuration: FarMemoryConfiguration(
            server: server.endpoint, budgetBytes: 1 << 20, requestTimeoutSeconds: 10, transport: .rdma))
        defer { memory.close() }
        XCTAssertTrue(memory.usesRDMA)
        let region = try memory.allocate(bytes: 4 << 20)
        let pattern = PagePattern(seed: 11)
        writeAll(region, pattern)
        XCTAssertEqual(verifyAll(region, pattern), 0)
        XCTAssertEqual(verifyAll(region, pattern), 0)
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.evictions, UInt64(region.pageCount), stats.description)
        XCTAssertGreaterThan(stats.rdmaPagesIn, UInt64(region.pageCount), "fetches were RDMA READs: \(stats)")
        XCTAssertGreaterThan(stats.rdmaPagesOut, 0, "write-backs were RDMA WRITEs: \(stats)")
        // Grown (the new part is a region of its own, exposed for RDMA too) and
        // paged again: old pages kept, new ones over RDMA as well.
        let pages = region.pageCount
        try region.grow(to: 8 << 20)
        XCTAssertEqual((0..<pages).filter { !pattern.verify(page: $0, at: region.baseAddress! + $0 * 4096).ok }, [])
        let second = PagePattern(seed: 12)
        writeAll(region, second)
        XCTAssertEqual(verifyAll(region, second), 0)
        // One-sided: the server's own counters saw no page move over TCP.
        let server_ = try memory.serverStatistics()
        XCTAssertEqual(server_.pagesRead, 0)
        XCTAssertEqual(server_.pagesWritten, 0)
    }

    func testAMemfdRegionFourTimesTheBudgetIsPagedOverRDMA() throws {
        try pageSharedRegionOverRDMA(kind: .memfd, budget: 1 << 20, regionBytes: 4 << 20, capacity: "64MiB", seed: 13)
    }

    /// A fault fetches a whole 2 MiB huge page by RDMA READs (two of 256 pages).
    func testAHugetlbRegionFourTimesTheBudgetIsPagedOverRDMA() throws {
        let pool = try HugePagePool(free: 16)
        defer { pool.restore() }
        try pageSharedRegionOverRDMA(kind: .hugetlb, budget: 8 << 20, regionBytes: 32 << 20, capacity: "96MiB", seed: 15)
    }

    /// A memfd or hugetlb region written twice and read back over RDMA, by
    /// four threads at once and by one, every page verified.
    private func pageSharedRegionOverRDMA(kind: RegionKind, budget: Int, regionBytes: Int, capacity: String, seed: UInt64) throws {
        let server = try ServerProcess(capacity: capacity, host: address, extra: ["--transport", "rdma"])
        defer { server.stop() }
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: budget, requestTimeoutSeconds: 10, transport: .rdma)
        configuration.verifiesPages = true
        let memory = try FarMemory(configuration: configuration)
        defer { memory.close() }
        let region = try memory.allocate(bytes: regionBytes, kind: kind)
        // Four threads write, one reads in order (its fetches are contiguous:
        // READ in place); then the other way round (strided, copied).
        let first = PagePattern(seed: seed), second = PagePattern(seed: seed + 1)
        region.write(first, threads: 4)
        XCTAssertEqual(verifyAll(region, first), 0)
        writeAll(region, second)
        XCTAssertEqual(region.mismatches(second, threads: 4), [])
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.rdmaPagesIn, UInt64(region.pageCount), "fetches were RDMA READs: \(stats)")
        XCTAssertGreaterThan(stats.rdmaPagesInPlace, UInt64(region.pageCount) / 4, "READ straight into the page cache: \(stats)")
        XCTAssertGreaterThan(stats.rdmaPagesOut, 0, "write-backs were RDMA WRITEs: \(stats)")
        XCTAssertEqual(stats.verificationFailures, 0)
        XCTAssertEqual(stats.poisoned, 0)
    }

    func testAutoFallsBackToTCPAndRequiredRDMAIsAClearError() throws {
        let server = try ServerProcess(capacity: "64MiB", host: address, extra: ["--transport", "tcp"])
        defer { server.stop() }
        let memory = try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: 1 << 20, transport: .auto))
        XCTAssertFalse(memory.usesRDMA, "a TCP-only server: auto falls back")
        let region = try memory.allocate(bytes: 2 << 20)
        let pattern = PagePattern(seed: 12)
        writeAll(region, pattern)
        XCTAssertEqual(verifyAll(region, pattern), 0)
        memory.close()
        XCTAssertThrowsError(try FarMemory(configuration: FarMemoryConfiguration(
            server: server.endpoint, budgetBytes: 1 << 20, transport: .rdma))) { error in
            guard case .transportUnavailable(let text) = error as? FarMemoryError else { return XCTFail("\(error)") }
            XCTAssertTrue(text.contains("RDMA"), text)
        }
    }

    /// Raw attach for the isolation tests: HELLO, a region, RDMA_ATTACH, an RDMA connection.
    private func attach(_ server: ServerProcess, writeByte: UInt8?) throws -> (RawClient, RDMAChannel, RDMAExposeReply?) {
        let client = try RawClient(server.endpoint)
        XCTAssertNil(try client.hello().error)
        let attachReply = try client.call(.rdmaAttach, [])
        XCTAssertNil(attachReply.error, attachReply.message)
        let ticket = try attachReply.body.withUnsafeBytes { try RDMAAttachReply.decode($0) }
        let channel = try RDMAChannel(host: address, port: ticket.port, ticket: ticket.ticket, capacityPages: 4, timeoutSeconds: 10)
        guard let writeByte else { return (client, channel, nil) }
        XCTAssertNil(try client.call(.createRegion, RegionSpec(regionID: 1, pageCount: 4).encode()).error)
        XCTAssertNil(try client.call(.writePages, RawClient.writePayload(region: 1, pages: [2]) { _ in writeByte }).error)
        let expose = try client.call(.rdmaExpose, RegionRef(regionID: 1).encode())
        XCTAssertNil(expose.error, expose.message)
        return (client, channel, try expose.body.withUnsafeBytes { try RDMAExposeReply.decode($0) })
    }

    func testAClientCannotUseAnotherClientsKeyOrATicketItWasNotGiven() throws {
        let server = try ServerProcess(capacity: "16MiB", host: address, extra: ["--transport", "rdma"])
        defer { server.stop() }
        let (alice, aliceChannel, exposed) = try attach(server, writeByte: 0x7E)
        let region = try XCTUnwrap(exposed)
        let remote = RemoteRegion(address: region.address, rkey: region.rkey, length: region.length)
        var page: UInt64 = 2
        try withUnsafePointer(to: &page) { try aliceChannel.transfer(write: false, remote: remote, pages: UnsafeBufferPointer(start: $0, count: 1)) }
        XCTAssertEqual(aliceChannel.buffer.load(as: UInt8.self), 0x7E, "the owner reads its page one-sided")

        // Mallory learns Alice's address and rkey but has her own protection domain.
        let (mallory, malloryChannel, _) = try attach(server, writeByte: nil)
        XCTAssertThrowsError(try withUnsafePointer(to: &page) {
            try malloryChannel.transfer(write: true, remote: remote, pages: UnsafeBufferPointer(start: $0, count: 1))
        }, "another session's rkey must not work")
        try withUnsafePointer(to: &page) { try aliceChannel.transfer(write: false, remote: remote, pages: UnsafeBufferPointer(start: $0, count: 1)) }
        XCTAssertEqual(aliceChannel.buffer.load(as: UInt8.self), 0x7E, "Alice's page is intact")
        _ = (alice, mallory)

        // A made-up ticket is rejected before any memory is reachable.
        let ticketReply = try alice.call(.rdmaAttach, [])
        let port = try ticketReply.body.withUnsafeBytes { try RDMAAttachReply.decode($0) }.port
        XCTAssertThrowsError(try RDMAChannel(host: address, port: port, ticket: RawClient.randomKey(), capacityPages: 1, timeoutSeconds: 10))
        // Shutting down with RDMA connections still open is clean (no double drop).
        XCTAssertEqual(server.stopCleanly(), 0)
    }

    func testSessionEndDropsItsRDMAConnectionsAndFreesPinnedMemory() throws {
        let portFile = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: portFile) }
        let server = try ServerProcess(capacity: "16MiB", host: address, extra: ["--transport", "rdma", "--metrics-listen",
                                                                                "127.0.0.1:0", "--metrics-port-file", portFile])
        defer { server.stop() }
        let metricsPort = try XCTUnwrap(UInt16(try String(contentsOfFile: portFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
        let (client, channel, exposed) = try attach(server, writeByte: 0x11)
        XCTAssertNotNil(exposed)
        _ = channel
        // /metrics shows the queue pair and the pinned registration.
        var samples: [String: Double] = [:]
        _ = waitUntil("the queue pair shows in /metrics", seconds: 10, context: { "\(samples)" }) {
            samples = (try? scrapeMetrics(port: metricsPort)) ?? [:]
            return samples["farmemd_rdma_connections"] == 1
        }
        XCTAssertEqual(samples["farmemd_rdma_registrations"], 1, "\(samples)")
        XCTAssertGreaterThan(samples["farmemd_rdma_registered_bytes"] ?? 0, 0, "\(samples)")
        client.socket.shutdown()   // the session's only TCP connection goes
        let observer = try RawClient(server.endpoint)
        XCTAssertNil(try observer.hello().error)
        let stats = try observer.statsEventually { $0.reservedPages == 0 && $0.sessions == 1 }
        XCTAssertEqual(stats.reservedPages, 0, "the pinned region was freed with its session")
        XCTAssertEqual(stats.sessions, 1, "only the observer's session is left")
        _ = waitUntil("the queue pair and the registration are gone from /metrics", seconds: 10, context: { "\(samples)" }) {
            samples = (try? scrapeMetrics(port: metricsPort)) ?? [:]
            return samples["farmemd_rdma_connections"] == 0 && samples["farmemd_rdma_registered_bytes"] == 0
        }
    }

    func testLostServerOverRDMAIsSIGBUSNotAHang() throws {
        let server = try ServerProcess(capacity: "64MiB", host: address, extra: ["--transport", "rdma"])
        defer { server.stop() }
        let probe = try FailureProbe(port: server.endpoint.port, mode: "read-evicted", host: address)
        XCTAssertTrue(probe.readyLine.hasPrefix("READY") && probe.readyLine.contains("rdma=true"), "probe said: \(probe.readyLine)")
        server.kill()   // its queue pairs die with it
        let log = probe.proceed()
        XCTAssertEqual(probe.process.terminationReason, .uncaughtSignal)
        XCTAssertEqual(probe.process.terminationStatus, SIGBUS, "a clear failure (SIGBUS), not the watchdog's SIGKILL")

        XCTAssertTrue(log.contains("falls back to TCP") || log.contains("could not be fetched"), log)
    }

    /// Issue 9 over RDMA: three servers, two copies, write-backs are one-sided
    /// WRITEs to each copy and fetches one-sided READs; a server killed mid-run
    /// (its queue pairs die with it) costs no page.
    func testThreeServersWithTwoCopiesOverRDMALoseNoPageWhenOneDies() throws {
        let servers = try (0..<3).map { _ in try ServerProcess(capacity: "64MiB", host: address, extra: ["--transport", "rdma"]) }
        defer { servers.forEach { $0.stop() } }
        let memory = try FarMemory(configuration: FarMemoryConfiguration(
            servers: servers.map(\.endpoint), budgetBytes: 1 << 20, requestTimeoutSeconds: 10,
            failoverTimeoutSeconds: 5, transport: .rdma))   // software-emulated guest: slow completions
        defer { memory.close() }
        XCTAssertTrue(memory.usesRDMA)
        let region = try memory.allocate(bytes: 8 << 20)
        let pattern = PagePattern(seed: 13)
        writeAll(region, pattern)
        XCTAssertEqual(verifyAll(region, pattern), 0)
        var stats = memory.statistics
        XCTAssertGreaterThan(stats.rdmaPagesOut, UInt64(region.pageCount), "two copies, each an RDMA WRITE: \(stats)")
        XCTAssertGreaterThan(stats.rdmaPagesIn, 0, stats.description)
        let perServer = try memory.serverStatisticsByServer()
        XCTAssertTrue(perServer.allSatisfy { $0.stats.pagesRead == 0 && $0.stats.pagesWritten == 0 }, "one-sided: \(perServer)")
        servers[1].kill()
        XCTAssertEqual(verifyAll(region, pattern), 0, "every page from a surviving copy")
        let rewrite = PagePattern(seed: 14)
        writeAll(region, rewrite)
        XCTAssertEqual(verifyAll(region, rewrite), 0)
        stats = memory.statistics
        XCTAssertEqual(stats.poisoned, 0, stats.description)
        XCTAssertEqual(stats.serversDown, 1, stats.description)
    }

    /// A server killed and restarted on its address rejoins over RDMA: the
    /// region the repair creates there is exposed in its new session and its
    /// pages move one-sided (its TCP page counters stay at zero), shown by
    /// rewriting everything and then killing a second server, so that some
    /// extents' only copy left is on the rejoined one.
    func testARejoinedServerIsServedOverRDMA() throws {
        var servers = try (0..<3).map { _ in try ServerProcess(capacity: "64MiB", host: address, extra: ["--transport", "rdma"]) }
        defer { servers.forEach { $0.stop() } }
        let memory = try FarMemory(configuration: FarMemoryConfiguration(
            servers: servers.map(\.endpoint), budgetBytes: 1 << 20, requestTimeoutSeconds: 10,
            failoverTimeoutSeconds: 5, transport: .rdma))
        defer { memory.close() }
        let region = try memory.allocate(bytes: 16 << 20)
        let pattern = PagePattern(seed: 21)
        writeAll(region, pattern)
        func waitUntil(_ what: String, _ done: () -> Bool) -> Bool {
            FarMemTests.waitUntil(what, seconds: 60, context: { "\(memory.statistics)" }, done)
        }
        let port = servers[0].endpoint.port
        servers[0].kill()
        XCTAssertEqual(verifyAll(region, pattern), 0, "from the other copies")
        // Reads alone may never go to the dead server (each extent is read from
        // its first copy); write-backs go to every copy, so they notice it.
        let during = PagePattern(seed: 23)
        writeAll(region, during)
        XCTAssertEqual(verifyAll(region, during), 0)
        guard waitUntil("repaired", { memory.statistics.serversDown == 1 && memory.statistics.underReplicatedExtents == 0 }) else { return }
        servers[0] = try ServerProcess(capacity: "64MiB", host: address, port: port, extra: ["--transport", "rdma"])
        guard waitUntil("rejoined and moved back", {
            let s = memory.statistics
            return s.serverRejoins == 1 && s.serversDown == 0 && s.underReplicatedExtents == 0 && s.misplacedExtents == 0
        }) else { return }
        XCTAssertGreaterThan(memory.statistics.extentsMoved, 0)
        let before = try XCTUnwrap(try memory.serverStatisticsByServer().first { $0.server == servers[0].endpoint }).stats
        let rewrite = PagePattern(seed: 22)
        writeAll(region, rewrite)
        // A server that shares an extent with the rejoined one: once it is gone,
        // that extent is read from the rejoined server only.
        let placement = Placement(servers: servers.map { "\($0.endpoint)" }, replicas: 2)
        let shared = try XCTUnwrap((0..<(region.pageCount / Placement.extentPages)).lazy
            .map { placement.replicaSet(region: 1, extent: $0, among: placement.allServers) }
            .first { $0.contains(0) })
        let other = shared[0] == 0 ? shared[1] : shared[0]
        let rdmaIn = memory.statistics.rdmaPagesIn
        servers[other].kill()
        XCTAssertEqual(verifyAll(region, rewrite), 0, "every page, some of them only on the rejoined server")
        let after = try XCTUnwrap(try memory.serverStatisticsByServer().first { $0.server == servers[0].endpoint }).stats
        XCTAssertEqual(after.pagesRead, before.pagesRead, "no page read from the rejoined server over TCP")
        XCTAssertEqual(after.pagesWritten, before.pagesWritten, "no page written to it over TCP")
        XCTAssertGreaterThan(memory.statistics.rdmaPagesIn, rdmaIn)
        XCTAssertEqual(memory.statistics.poisoned, 0)
    }
}
