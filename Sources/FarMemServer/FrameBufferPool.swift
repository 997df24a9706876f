import FarMemSystem
import Synchronization

/// The buffers an event loop's connections keep a frame in when it cannot be
/// finished at once: the rest of a request still arriving, or a reply the
/// peer has not taken yet. A connection takes one only for that time and
/// gives it back as soon as the frame is done, so idle connections hold none
/// and the loop's total is bounded (`limit`, from `--buffer-memory`). One
/// pool per loop: taking and giving need no lock.
///
/// When every buffer is taken, the loop reads only frames that have arrived
/// whole and parks a connection whose frame has not (its bytes wait in the
/// kernel, TCP flow control slows its sender) until a buffer comes back. A
/// reply that does not go out at once may go over the limit (`overdrafts`):
/// it is built already, and it is at most one per connection.
final class FrameBufferPool {
    static let bufferLength = (FrameSplitter.maxFrameLength + 4095) / 4096 * 4096

    let limit: Int
    private let gauges: BufferGauges
    /// Mapped buffers not in use, with when each came back (pages still there).
    private var free: [(buffer: UnsafeMutableRawPointer, since: UInt64)] = []
    private(set) var inUse = 0

    init(limit: Int, gauges: BufferGauges) {
        self.limit = max(limit, 1)
        self.gauges = gauges
    }

    deinit {
        for entry in free { MemoryMapping.unmap(UInt(bitPattern: entry.buffer), length: Self.bufferLength) }
    }

    var exhausted: Bool { inUse >= limit }

    /// A buffer, or nil when `limit` are in use (unless `overLimit`).
    func take(overLimit: Bool = false) -> UnsafeMutableRawPointer? {
        if exhausted {
            guard overLimit else { return nil }
            gauges.overdrafts.add(1, ordering: .relaxed)
        }
        inUse += 1
        gauges.inUse.add(1, ordering: .relaxed)
        if let entry = free.popLast() { return entry.buffer }
        return Self.map()
    }

    func give(_ buffer: UnsafeMutableRawPointer, now: UInt64) {
        inUse -= 1
        gauges.inUse.subtract(1, ordering: .relaxed)
        free.append((buffer, now))
    }

    /// Unmaps buffers nobody has taken for `idleNanoseconds`: a burst of big
    /// frames leaves no memory behind once it is over.
    func trim(now: UInt64, idleNanoseconds: UInt64) {
        // The most recently given back are at the end; the oldest first.
        while let oldest = free.first, now - oldest.since > idleNanoseconds {
            MemoryMapping.unmap(UInt(bitPattern: oldest.buffer), length: Self.bufferLength)
            free.removeFirst()
        }
    }

    private static func map() -> UnsafeMutableRawPointer {
        // NORESERVE: only the pages a frame writes are committed. Out of
        // address space is the only failure, and nothing sensible is left then.
        guard let address = try? MemoryMapping.anonymous(length: bufferLength, noReserve: true) else {
            fatalError("farmemd: cannot map a \(bufferLength)-byte frame buffer")
        }
        // Transparent huge pages would commit 2 MiB for the first byte (THP is
        // "always" on many hosts, and neighbouring buffers merge into one VMA).
        try? MemoryMapping.advise(address, length: bufferLength, .noHugePage)
        return UnsafeMutableRawPointer(bitPattern: address)!
    }
}

/// The pools' figures, for `/metrics`: shared by every loop's pool.
final class BufferGauges: Sendable {
    let inUse = Atomic<Int>(0)
    let overdrafts = Atomic<Int>(0)
    /// Connections waiting for a buffer (parked) right now.
    let waiting = Atomic<Int>(0)
    /// The limits of all pools together.
    let limit = Atomic<Int>(0)
}
