import FarMemSystem
import FarMemWorkloads
import FarMemory
import Foundation
import Synchronization
import XCTest

/// Faults, write-protect faults, application MADV_DONTNEED and eviction all at
/// once, checked against a model. Each thread owns every third page (so its
/// model needs no lock) and runs a bounded, seeded random mix of operations.
final class PagerStressTests: XCTestCase {
    func testRandomMixOfWritesReadsAndDiscardsAgreesWithTheModel() throws {
        let server = try ServerProcess(capacity: "64MiB")
        defer { server.stop() }
        // FARMEM_STRESS_OPERATIONS and FARMEM_STRESS_HANDLERS make longer or sharded runs by hand.
        let environment = ProcessInfo.processInfo.environment
        let operations = environment["FARMEM_STRESS_OPERATIONS"].flatMap { Int($0) } ?? 6000
        let handlers = environment["FARMEM_STRESS_HANDLERS"].flatMap { Int($0) } ?? 1
        let memory = try FarMemory(configuration: FarMemoryConfiguration(server: server.endpoint, budgetBytes: 1 << 20,
                                                                         handlerThreads: handlers))
        defer { memory.close() }
        let region = try memory.allocate(bytes: 5 << 20)   // 5x the budget
        let base = UInt(bitPattern: region.baseAddress!)
        let pages = region.pageCount
        let threads = 3
        let failures = Mutex<[String]>([])

        let workers = (0..<threads).map { t in
            PosixThread.spawn(name: "stress-\(t)") {
                // version[i] for page t + i*threads: 0 = zeros (never written, or discarded)
                var version = [UInt64](repeating: 0, count: (pages - t + threads - 1) / threads)
                var state: UInt64 = 0x5EED + UInt64(t)
                func next() -> UInt64 {
                    state &+= 0x9E37_79B9_7F4A_7C15
                    var z = state
                    z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
                    return z ^ (z >> 27)
                }
                func pointer(_ i: Int) -> UnsafeMutablePointer<UInt64> {
                    UnsafeMutablePointer<UInt64>(bitPattern: base + UInt((t + i * threads) * 4096))!
                }
                func check(_ i: Int, _ what: String) {
                    let words = pointer(i)
                    let v = version[i]
                    // A page of version v holds v ^ word index in every word; version 0 is all zeros.
                    for w in [0, 1, 255, 511] where words[w] != (v == 0 ? 0 : v ^ UInt64(w)) {
                        failures.withLock { $0.append("thread \(t) page \(t + i * threads) word \(w) after \(what): got \(words[w]), want version \(v)") }
                        return
                    }
                }
                for op in 0..<operations {
                    let i = Int(next() % UInt64(version.count))
                    switch next() % 10 {
                    case 0..<4:   // write a new version of the whole page
                        let v = (UInt64(op) << 8) | UInt64(t) | 1 << 60
                        let words = pointer(i)
                        for w in 0..<512 { words[w] = v ^ UInt64(w) }
                        version[i] = v
                    case 4..<8:   // read and check
                        check(i, "read")
                    case 8:       // read, then modify in place (a write-protect fault on a clean page)
                        check(i, "read before modify")
                        if version[i] != 0 {
                            let v = version[i] &+ 2
                            let words = pointer(i)
                            for w in 0..<512 { words[w] = v ^ UInt64(w) }
                            version[i] = v
                        }
                    default:      // the application drops the page: it must read as zeros
                        _ = madvise(UnsafeMutableRawPointer(pointer(i)), 4096, MADV_DONTNEED)
                        version[i] = 0
                        check(i, "MADV_DONTNEED")
                    }
                }
                for i in version.indices { check(i, "the final pass") }
            }
        }
        workers.forEach { $0.join() }
        let found = failures.withLock { $0 }
        XCTAssertEqual(found.count, 0, found.prefix(5).joined(separator: "\n"))
        let stats = memory.statistics
        XCTAssertGreaterThan(stats.evictions, UInt64(pages), stats.description)
        XCTAssertGreaterThan(stats.writeProtectFaults, 0, stats.description)
        XCTAssertGreaterThan(stats.discards, 0, stats.description)
        XCTAssertEqual(stats.poisoned, 0)
        XCTAssertLessThanOrEqual(stats.residentPages + stats.stagedPages, 256)
    }
}
