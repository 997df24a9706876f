import FarMemProtocol
import FarMemSystem
import FarMemWorkloads
@testable import FarMemory
import Foundation
import Synchronization
import XCTest

/// Several farmemd processes, two copies of every page, real kills (issue 9).
final class ClusterTests: XCTestCase {
    private var servers: [ServerProcess] = []

    override func setUpWithError() throws { servers = try (0..<3).map { _ in try ServerProcess(capacity: "64MiB") } }
    override func tearDown() { servers.forEach { $0.stop() } }

    private func makeMemory(budget: Int = 2 << 20, requestTimeout: Double = 2) throws -> FarMemory {
        try FarMemory(configuration: FarMemoryConfiguration(servers: servers.map(\.endpoint), budgetBytes: budget,
                                                            requestTimeoutSeconds: requestTimeout))
    }

    /// Writes every page with `pattern` from `threads` threads, interleaved.
    private func fill(_ region: FarRegion, _ pattern: PagePattern, threads: Int = 3) {
        let base = UInt(bitPattern: region.baseAddress!), pages = region.pageCount
        let workers = (0..<threads).map { t in
            PosixThread.spawn(name: "fill-\(t)") {
                for page in stride(from: t, to: pages, by: threads) {
                    _ = pattern.write(page: page, at: UnsafeMutableRawPointer(bitPattern: base + UInt(page) * 4096)!)
                }
            }
        }
        workers.forEach { $0.join() }
    }

    private func mismatches(_ region: FarRegion, _ pattern: PagePattern, threads: Int = 3) -> [Int] {
        let base = UInt(bitPattern: region.baseAddress!), pages = region.pageCount
        let bad = Mutex<[Int]>([])
        let workers = (0..<threads).map { t in
            PosixThread.spawn(name: "check-\(t)") {
                var local: [Int] = []
                for page in stride(from: t, to: pages, by: threads)
                where !pattern.verify(page: page, at: UnsafeRawPointer(bitPattern: base + UInt(page) * 4096)!).ok {
                    local.append(page)
                }
                bad.withLock { $0 += local }
            }
        }
        workers.forEach { $0.join() }
        return bad.withLock { $0.sorted() }
    }

    func testPagesAreSpreadOverTheServersWithTwoCopiesEach() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        XCTAssertEqual(memory.configuration.replicas, 2, "two copies by default with two or more servers")
        let region = try memory.allocate(bytes: 16 << 20)   // 8 extents, 8x the budget
        let pattern = PagePattern(seed: 91)
        fill(region, pattern)
        XCTAssertEqual(mismatches(region, pattern), [])
        let perServer = try memory.serverStatisticsByServer()
        XCTAssertEqual(perServer.count, 3)
        let stored = perServer.map(\.stats.sessionStoredPages)
        // Every written-back page is on two servers; no server holds them all.
        XCTAssertEqual(stored.reduce(0, +), 2 * UInt64(region.pageCount), "\(stored)")
        for count in stored { XCTAssertLessThan(count, UInt64(region.pageCount), "\(stored)") }
    }

    func testKillingOneOfThreeServersMidRunLosesNoPage() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        let region = try memory.allocate(bytes: 16 << 20)
        let first = PagePattern(seed: 92), second = PagePattern(seed: 93)
        fill(region, first)
        // Readers are mid-run when the server dies.
        let stop = Atomic<Bool>(false)
        let base = UInt(bitPattern: region.baseAddress!), pages = region.pageCount
        let badReads = Atomic<Int>(0)
        let readers = (0..<2).map { r in
            PosixThread.spawn(name: "reader-\(r)") {
                var page = r
                while !stop.load(ordering: .relaxed) {
                    page = (page * 31 + 7) % pages
                    if !first.verify(page: page, at: UnsafeRawPointer(bitPattern: base + UInt(page) * 4096)!).ok {
                        badReads.add(1, ordering: .relaxed)
                    }
                }
            }
        }
        usleep(200_000)
        servers[1].kill()
        usleep(300_000)
        stop.store(true, ordering: .relaxed)
        readers.forEach { $0.join() }
        XCTAssertEqual(badReads.load(ordering: .relaxed), 0)
        XCTAssertEqual(mismatches(region, first), [], "every page still readable after the kill")
        fill(region, second)   // write-backs go to the surviving copies
        XCTAssertEqual(mismatches(region, second), [])
        let stats = memory.statistics
        XCTAssertEqual(stats.poisoned, 0, stats.description)
        XCTAssertEqual(stats.serversDown, 1, stats.description)
        XCTAssertTrue(stats.underReplicated)
    }

    func testAStoppedServerIsNeverReadAgainAfterItContinues() throws {
        let memory = try makeMemory(requestTimeout: 1)
        defer { memory.close() }
        let region = try memory.allocate(bytes: 16 << 20)
        let old = PagePattern(seed: 94), new = PagePattern(seed: 95)
        fill(region, old)
        // SIGSTOP: no RST, only time-outs tell. The client moves on and rewrites everything.
        servers[2].pause()
        fill(region, new)
        XCTAssertEqual(mismatches(region, new), [])
        XCTAssertEqual(memory.statistics.serversDown, 1, "the stopped server was marked down: \(memory.statistics)")
        // It continues, holding the old copies of the pages rewritten meanwhile: never served again.
        servers[2].resume()
        XCTAssertEqual(mismatches(region, new), [], "no stale page from the server that came back")
        XCTAssertEqual(memory.statistics.poisoned, 0)
    }

    func testAFullClusterIsAClearErrorAtAllocation() throws {
        let memory = try makeMemory()
        defer { memory.close() }
        XCTAssertThrowsError(try memory.allocate(bytes: 80 << 20)) { error in
            XCTAssertTrue("\(error)".contains("out of capacity"), "\(error)")
        }
        // Nothing is left reserved by the refused allocation.
        let region = try memory.allocate(bytes: 16 << 20)
        region.close()
        XCTAssertTrue(try memory.serverStatisticsByServer().allSatisfy { $0.stats.sessionReservedPages == 0 })
    }

    /// Two of three servers die: a page whose two copies were on them raises
    /// SIGBUS (in the probe, within a bounded time), and pages with a
    /// surviving copy are still served.
    func testLosingBothCopiesOfAPageIsSIGBUSNotAHangAndTheRestIsServed() throws {
        let list = servers.map(\.endpoint.description).joined(separator: ",")
        let probe = try FailureProbe(servers: list, mode: "read-lost-extent", watchdogSeconds: 60)
        XCTAssertTrue(probe.readyLine.hasPrefix("READY"), "probe said: \(probe.readyLine)")
        // Kill the two servers holding extent 0 of the probe's first region (id 1).
        let placement = Placement(servers: servers.map(\.endpoint.description), replicas: 2)
        let lost = placement.replicaSet(region: 1, extent: 0, among: placement.allServers)
        for server in lost { servers[server].kill() }
        // A surviving extent: one whose copies are not both on the killed servers.
        let survivor = (1..<8).first { extent in
            let copies = placement.replicaSet(region: 1, extent: extent, among: placement.allServers)
            return !copies.allSatisfy { lost.contains($0) }
        }!
        probe.go()
        probe.input.fileHandleForWriting.write("\(survivor * Placement.extentPages)\n".data(using: .utf8)!)
        let started = Date()
        let served = probe.nextLine()
        let log = probe.finish()
        XCTAssertEqual(served, "SURVIVOR OK\n", log.suffix(1500).description)
        XCTAssertLessThan(Date().timeIntervalSince(started), 30, "bounded, never a hang")
        XCTAssertEqual(probe.process.terminationReason, .uncaughtSignal)
        XCTAssertEqual(probe.process.terminationStatus, SIGBUS, "killed by SIGBUS, not by the watchdog")
    }
}
