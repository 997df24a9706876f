import FarMemProtocol
import Synchronization

/// What the server counts for `/metrics`, beside the figures STATS already
/// reports: requests and their service time by kind, errors by code, bytes.
/// Every counter is an atomic made once: counting a request allocates
/// nothing and takes no lock.
final class ServerMetrics: Sendable {
    final class Counter: Sendable {
        let value = Atomic<UInt64>(0)
        @inline(__always) func add(_ n: UInt64 = 1) { value.add(n, ordering: .relaxed) }
        var current: UInt64 { value.load(ordering: .relaxed) }
    }

    /// Service time of one request, from its frame read to its reply sent.
    final class Histogram: Sendable {
        /// Upper bounds in seconds (Prometheus `le`), then +Inf.
        static let bounds: [Double] = [10e-6, 25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3, 1]
        private static let boundsNanoseconds = bounds.map { UInt64($0 * 1e9) }
        let buckets = (0...bounds.count).map { _ in Counter() }   // the last: above every bound
        let sumNanoseconds = Counter()

        func record(nanoseconds: UInt64) {
            var bucket = Self.boundsNanoseconds.count
            for (i, bound) in Self.boundsNanoseconds.enumerated() where nanoseconds <= bound { bucket = i; break }
            buckets[bucket].add()
            sumNanoseconds.add(nanoseconds)
        }
    }

    /// By opcode (raw value 0...255; only known opcodes are shown).
    let requests = (0..<256).map { _ in Counter() }
    let latency = (0..<256).map { _ in Histogram() }
    /// By error code (raw value).
    let errors = (0..<32).map { _ in Counter() }
    let bytesReceived = Counter()
    let bytesSent = Counter()
    let connectionsAccepted = Counter()
    let connectionsRefused = Counter()

    func request(_ opcode: UInt8, nanoseconds: UInt64, error: ErrorCode?) {
        requests[Int(opcode)].add()
        latency[Int(opcode)].record(nanoseconds: nanoseconds)
        if let error { errors[Int(min(error.rawValue, 31))].add() }
    }
}
