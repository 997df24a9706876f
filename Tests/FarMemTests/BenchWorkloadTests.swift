@testable import FarMemWorkloads
import XCTest

/// The bench's workloads on plain local memory: each verifies what it did,
/// and a verification that could not fail would make every row "yes".
final class BenchWorkloadTests: XCTestCase {
    private func withRegion(pages: Int, _ body: (UnsafeMutableRawPointer) -> Void) {
        let base = UnsafeMutableRawPointer.allocate(byteCount: pages * 4096, alignment: 4096)
        base.initializeMemory(as: UInt8.self, repeating: 0, count: pages * 4096)   // fresh memory reads as zeros
        defer { base.deallocate() }
        body(base)
    }

    func testEveryWorkloadVerifiesOnLocalMemory() {
        for kind in BenchWorkload.Kind.allCases {
            let workload = BenchWorkload(kind: kind, pages: 256)
            withRegion(pages: 256) { base in
                workload.prepare(base)
                let result = workload.run(base, sequence: workload.accessSequence(), deadlineSeconds: 30)
                XCTAssertTrue(result.verified, "\(kind)")
                XCTAssertFalse(result.timedOut, "\(kind)")
            }
        }
    }

    func testUnmixUndoesTheMixAndTheTableIsFilledInAddressOrder() {
        var state: UInt64 = 42
        for _ in 0..<10_000 {
            let x = splitmix(&state)
            XCTAssertEqual(unmix64(mix64(x)), x)
        }
        let table = HashtableLayout(pages: 256, seed: 7)
        let homes = (0..<table.keys).map { table.home(table.key($0)) }
        // (The last few may wrap around to the start.)
        XCTAssertEqual(homes.indices.dropFirst().dropLast(4).filter { homes[$0] + 3 < homes[$0 - 1] }, [], "homes only go forward")
        XCTAssertGreaterThan(Set(homes).count, homes.count * 2 / 3, "mostly distinct: some collisions to probe, not many")
        XCTAssertLessThan(Set(homes).count, homes.count, "but some")
    }

    func testTheHashtableFindsEveryKeyAndCatchesAStaleEntry() {
        let workload = BenchWorkload(kind: .hashtable, pages: 64)
        let sequence = workload.accessSequence()
        XCTAssertEqual(sequence.count, 128)
        let puts = sequence.filter { $0 & 1 == 1 }.count
        XCTAssertLessThan(puts, 40, "about one in ten is a put")
        // Zipfian: the hottest key is asked far more often than a uniform draw would.
        let counts = Dictionary(sequence.map { ($0 >> 1, 1) }, uniquingKeysWith: +)
        XCTAssertGreaterThan(counts.values.max() ?? 0, 5)
        withRegion(pages: 64) { base in
            workload.prepare(base)
            let words = base.assumingMemoryBound(to: UInt64.self)
            let filled = stride(from: 0, to: 64 * 512, by: 8).filter { words[$0] != 0 }.count
            XCTAssertEqual(filled, 64 * 64 * 3 / 4, "three quarters of the entries hold a key")
            // An entry whose value changed behind the table's back (stale data) fails the run.
            let hottest = counts.max { $0.value < $1.value }!.key
            let key = workload.hashtable.key(hottest)
            let slot = stride(from: 0, to: 64 * 512, by: 8).first { words[$0] == key }!
            words[slot + 1] &+= 7
            XCTAssertFalse(workload.run(base, sequence: sequence, deadlineSeconds: 30).verified)
        }
    }
}
