import FarMemProtocol
@testable import FarMemServer
import XCTest

/// The event loop's two pure pieces: where a frame ends in the bytes
/// received so far, and the bounded pool of frame buffers.
final class FrameSplitterTests: XCTestCase {
    private func frame(_ opcode: UInt8, id: UInt32, payload: Int, status: UInt16 = 0) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size + payload)
        bytes.withUnsafeMutableBytes {
            FrameHeader(opcode: opcode, requestID: id, payloadLength: UInt32(payload), status: status).encode(into: $0.baseAddress!)
        }
        return bytes
    }

    private func split(_ bytes: [UInt8]) -> FrameSplitter.Split {
        bytes.withUnsafeBytes { FrameSplitter.split($0) }
    }

    func testAFrameIsWholeOnlyWithItsWholePayload() {
        let read = frame(Opcode.readPages.rawValue, id: 7, payload: 24)
        XCTAssertEqual(split([]), .needs(16))
        XCTAssertEqual(split(Array(read.prefix(15))), .needs(16), "a header needs 16 bytes")
        XCTAssertEqual(split(Array(read.prefix(16))), .needs(40), "then its payload")
        XCTAssertEqual(split(Array(read.prefix(39))), .needs(40))
        guard case .complete(let header, let length) = split(read) else { return XCTFail("whole") }
        XCTAssertEqual(header.requestID, 7)
        XCTAssertEqual(length, 40)
        guard case .complete(_, let first) = split(read + frame(Opcode.stats.rawValue, id: 8, payload: 0)) else { return XCTFail() }
        XCTAssertEqual(first, 40, "pipelined: the first frame only")
    }

    func testAHeaderThatCannotBeTrustedIsInvalidWithItsRequestID() {
        var bad = frame(Opcode.stats.rawValue, id: 9, payload: 0)
        bad[0] = 0
        guard case .invalid(let id, let error) = split(bad) else { return XCTFail("bad magic") }
        XCTAssertEqual(id, 9)
        XCTAssertEqual(error.code, .malformedFrame)
        guard case .invalid(_, let response) = split(frame(0x80 | Opcode.stats.rawValue, id: 1, payload: 0)) else { return XCTFail() }
        XCTAssertEqual(response.code, .malformedFrame, "a response is not a request")
        guard case .invalid(_, let status) = split(frame(Opcode.stats.rawValue, id: 1, payload: 0, status: 3)) else { return XCTFail() }
        XCTAssertEqual(status.code, .malformedFrame)
        var huge = frame(Opcode.writePages.rawValue, id: 2, payload: 0)
        huge.withUnsafeMutableBytes { $0.storeBytes(of: UInt32(ProtocolLimits.maxPayload + 1).littleEndian, toByteOffset: 8, as: UInt32.self) }
        guard case .invalid(_, let tooLarge) = split(huge) else { return XCTFail("oversized") }
        XCTAssertEqual(tooLarge.code, .tooLarge, "refused before any payload is read")
    }

    func testThePoolLendsUpToItsLimitAndOnlyARepliesBufferGoesOver() {
        let gauges = BufferGauges()
        let pool = FrameBufferPool(limit: 2, gauges: gauges)
        let a = pool.take(), b = pool.take()
        XCTAssertNotNil(a)
        XCTAssertNotNil(b)
        XCTAssertTrue(pool.exhausted)
        XCTAssertNil(pool.take(), "a request still arriving waits")
        let c = pool.take(overLimit: true)
        XCTAssertNotNil(c, "a reply already built is kept")
        XCTAssertEqual(gauges.overdrafts.load(ordering: .relaxed), 1)
        XCTAssertEqual(gauges.inUse.load(ordering: .relaxed), 3)
        pool.give(a!, now: 100)
        pool.give(c!, now: 200)
        XCTAssertFalse(pool.exhausted)
        XCTAssertEqual(pool.take(), c, "the most recently used comes back first (its pages are warm)")
        pool.give(b!, now: 300)
        pool.trim(now: 1_000, idleNanoseconds: 750)
        XCTAssertEqual(pool.take(), b, "trimmed: the one idle since 100; kept: the one since 300")
        XCTAssertEqual(gauges.inUse.load(ordering: .relaxed), 2)
    }
}
