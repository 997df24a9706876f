@testable import FarMemory
import XCTest

/// Rendezvous placement of extents on servers (pure logic).
final class PlacementTests: XCTestCase {
    private let five = (1...5).map { "10.0.0.\($0):7070" }

    func testAReplicaSetHasDistinctServersBestFirstAndIsStable() {
        let placement = Placement(servers: five, replicas: 2)
        for extent in 0..<200 {
            let set = placement.replicaSet(region: 7, extent: extent, among: placement.allServers)
            XCTAssertEqual(set.count, 2)
            XCTAssertNotEqual(set[0], set[1])
            XCTAssertEqual(set, Placement(servers: five, replicas: 2).replicaSet(region: 7, extent: extent, among: placement.allServers),
                           "the same answer from a fresh instance (no per-process seed)")
        }
    }

    func testExtentsSpreadEvenlyOverServers() {
        let placement = Placement(servers: five, replicas: 2)
        var copies = [Int](repeating: 0, count: 5)
        let extents = 5000
        for extent in 0..<extents {
            for server in placement.replicaSet(region: 1, extent: extent, among: placement.allServers) { copies[server] += 1 }
        }
        let fair = Double(extents * 2) / 5
        for count in copies { XCTAssertEqual(Double(count), fair, accuracy: fair * 0.1, "\(copies)") }
    }

    func testLosingAServerMovesOnlyItsCopies() {
        let placement = Placement(servers: five, replicas: 2)
        let all = placement.allServers, withoutThird = all & ~(1 << 2)
        for extent in 0..<1000 {
            let before = placement.replicaSet(region: 3, extent: extent, among: all)
            let after = placement.replicaSet(region: 3, extent: extent, among: withoutThird)
            XCTAssertFalse(after.contains(2))
            // Every surviving copy stays where it was; only the lost one gets a new home.
            for server in before where server != 2 { XCTAssertTrue(after.contains(server), "extent \(extent): \(before) -> \(after)") }
            if !before.contains(2) { XCTAssertEqual(before, after) }
        }
    }

    func testFewerCandidatesThanReplicasGivesWhatThereIs() {
        let placement = Placement(servers: five, replicas: 3)
        XCTAssertEqual(placement.replicaSet(region: 1, extent: 0, among: 0b1).count, 1)
        XCTAssertEqual(placement.replicaSet(region: 1, extent: 0, among: 0).count, 0)
        XCTAssertEqual(Placement(servers: ["a:1"], replicas: 2).replicas, 1, "one server: one copy")
        XCTAssertEqual(Placement.extent(of: 511), 0)
        XCTAssertEqual(Placement.extent(of: 512), 1)
    }

    /// What each server reserves for a region: the pages of the extents it
    /// is a replica of, the last extent counted by its real size.
    func testSharesAddUpToTheCopiesOfEveryPage() {
        let placement = Placement(servers: five, replicas: 2)
        let pages = 100 * 512 + 17
        let among = placement.allServers & ~(1 << 4)
        let shares = placement.shares(region: 9, pageCount: pages, among: among)
        XCTAssertEqual(shares.reduce(0, +), 2 * pages)
        XCTAssertEqual(shares[4], 0, "not a candidate")
        var expected = [Int](repeating: 0, count: 5)
        for extent in 0...100 {
            for server in placement.replicaSet(region: 9, extent: extent, among: among) { expected[server] += extent == 100 ? 17 : 512 }
        }
        XCTAssertEqual(shares, expected)
        XCTAssertEqual(Placement(servers: five, replicas: 3).shares(region: 9, pageCount: 10, among: 0b11), [10, 10, 0, 0, 0],
                       "fewer servers than copies: one copy on each")
    }
}
