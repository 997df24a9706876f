import FarMemProtocol
import FarMemSystem
import FarMemory
import Foundation
import XCTest

/// farmemd --keys-file: tenants with their own secrets and quotas, a real
/// server process, real clients, a real SIGHUP.
final class TenantTests: XCTestCase {
    private let alpha = "alpha-secret-0123456789", beta = "beta-secret-0123456789", gamma = "gamma-secret-0123456789"

    func testTenantsHaveTheirOwnKeysAndQuotasAndSIGHUPReloadsThemWithoutDroppingSessions() throws {
        let directory = FileManager.default.temporaryDirectory.appendingPathComponent("tenants-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: directory) }
        let keysFile = directory.appendingPathComponent("keys").path
        try "# name secret quota\nalpha \(alpha) 256KiB\nbeta \(beta) 1MiB\n".write(toFile: keysFile, atomically: false, encoding: .utf8)
        let server = try ServerProcess(capacity: "4MiB", extra: ["--keys-file", keysFile])
        defer { server.stop() }

        // A wrong, or missing, key is refused.
        XCTAssertEqual(try RawClient(server.endpoint).hello(token: "not-a-tenant-key-at-all").error, .authenticationFailed)
        XCTAssertEqual(try RawClient(server.endpoint).hello().error, .authenticationFailed)

        // alpha may hold 64 pages reserved, all its sessions together.
        let a = try RawClient(server.endpoint)
        XCTAssertNil(try a.hello(token: alpha).error)
        XCTAssertNil(try a.call(.createRegion, RegionSpec(regionID: 1, pageCount: 48).encode()).error)
        let over = try a.call(.createRegion, RegionSpec(regionID: 2, pageCount: 32).encode())
        XCTAssertEqual(over.error, .outOfCapacity)
        XCTAssertTrue(over.message.contains("tenant 'alpha'") && over.message.contains("quota of 256.0 KiB"), over.message)
        // The library says so too, on a session of its own.
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: 1 << 20, token: Array(alpha.utf8))
        configuration.transport = .tcp
        let memory = try FarMemory(configuration: configuration)
        XCTAssertThrowsError(try memory.allocate(bytes: 1 << 20)) { error in
            XCTAssertTrue("\(error)".contains("quota"), "\(error)")
        }
        memory.close()
        // beta is not affected by alpha's quota.
        let b = try RawClient(server.endpoint)
        XCTAssertNil(try b.hello(token: beta).error)
        XCTAssertNil(try b.call(.createRegion, RegionSpec(regionID: 1, pageCount: 200).encode()).error)
        XCTAssertNil(try b.call(.writePages, RawClient.writePayload(region: 1, pages: [5]) { _ in 0xBE }).error)
        // STATS tells each tenant its own use.
        let stats = try a.statsEventually { _ in true }
        XCTAssertEqual(stats.tenant, ServerStats.Tenant(name: "alpha", quotaPages: 64, reservedPages: 48, storedPages: 0))
        XCTAssertEqual(try b.statsEventually { _ in true }.tenant?.storedPages, 1)

        // Reload: alpha's quota grows, beta is revoked, gamma is new.
        try "alpha \(alpha) 1MiB\ngamma \(gamma) 64KiB\n".write(toFile: keysFile, atomically: false, encoding: .utf8)
        kill(server.process.processIdentifier, SIGHUP)
        _ = waitUntil("gamma's key works", seconds: 10) { (try? RawClient(server.endpoint).hello(token: self.gamma).error) == .some(nil) }
        XCTAssertEqual(try RawClient(server.endpoint).hello(token: beta).error, .authenticationFailed, "a revoked key is refused")
        // Sessions were not dropped: beta's open connection still reads its page, alpha can grow.
        let page = try b.call(.readPages, PageBatchHeader(regionID: 1, pages: [5]).encode())
        XCTAssertEqual(page.body.first, 0xBE, page.message)
        XCTAssertNil(try a.call(.createRegion, RegionSpec(regionID: 2, pageCount: 32).encode()).error)
        XCTAssertEqual(try a.statsEventually { _ in true }.tenant?.quotaPages, 256)

        // A file with a mistake is not taken: the keys in use stay.
        try "alpha \(alpha)\n".write(toFile: keysFile, atomically: false, encoding: .utf8)
        kill(server.process.processIdentifier, SIGHUP)
        usleep(300_000)
        XCTAssertNil(try RawClient(server.endpoint).hello(token: gamma).error)
        XCTAssertTrue(server.process.isRunning)
    }
}
