import Foundation
import FarMemProtocol
import XCTest

/// The codec against protocol/vectors (bytes written by an independent Python
/// encoder from SPEC.md): every valid vector decodes to the expected message and
/// re-encodes to the same bytes; every invalid one is rejected with its error.
final class ProtocolVectorTests: XCTestCase {
    private func vector(_ name: String) throws -> [UInt8] {
        let url = BuiltProducts.repository.appendingPathComponent("protocol/vectors/\(name).bin")
        return Array(try Data(contentsOf: url))
    }

    private func split(_ bytes: [UInt8]) throws -> (FrameHeader, [UInt8]) {
        let header = try bytes.withUnsafeBytes { try FrameHeader.decode($0.baseAddress!) }
        XCTAssertEqual(Int(header.payloadLength), bytes.count - FrameHeader.size, "payload length field")
        return (header, Array(bytes[FrameHeader.size...]))
    }

    private func encodeFrame(_ opcode: UInt8, id: UInt32, status: UInt16 = 0, _ payload: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size)
        bytes.withUnsafeMutableBytes {
            FrameHeader(opcode: opcode, requestID: id, payloadLength: UInt32(payload.count), status: status).encode(into: $0.baseAddress!)
        }
        return bytes + payload
    }

    func testHelloRoundTrips() throws {
        let bytes = try vector("hello_request")
        let (header, payload) = try split(bytes)
        XCTAssertEqual(header.opcode, Opcode.hello.rawValue)
        let hello = try payload.withUnsafeBytes { try Hello.decode($0) }
        XCTAssertEqual(hello, Hello(sessionKey: Array(1...16), token: Array("secret".utf8)))
        XCTAssertEqual(encodeFrame(0x01, id: 1, hello.encode()), bytes)

        let replyBytes = try vector("hello_reply")
        let (replyHeader, replyPayload) = try split(replyBytes)
        XCTAssertTrue(replyHeader.isResponse)
        let reply = try replyPayload.withUnsafeBytes { try HelloReply.decode($0) }
        XCTAssertEqual(reply, HelloReply(version: 3, pageSize: 4096, maxBatchPages: 256,
                                         maxPayload: UInt32(ProtocolLimits.maxPayload), capacityPages: 262144, unreservedPages: 262000))
        XCTAssertEqual(encodeFrame(0x81, id: 1, reply.encode()), replyBytes)
    }

    func testRegionMessagesRoundTrip() throws {
        let create = try vector("create_region_request")
        let (_, createPayload) = try split(create)
        let spec = try createPayload.withUnsafeBytes { try RegionSpec.decode($0) }
        XCTAssertEqual(spec, RegionSpec(regionID: 7, pageCount: 65536))
        XCTAssertEqual(encodeFrame(0x02, id: 2, spec.encode()), create)
        XCTAssertEqual(encodeFrame(0x82, id: 2, []), try vector("create_region_reply"))
        // A version-1 connection takes only the 16-byte form.
        XCTAssertThrowsError(try split(try vector("create_region_request_v2")).1.withUnsafeBytes { try RegionSpec.decode($0, version: 1) })

        let createV2 = try vector("create_region_request_v2")
        let partial = try split(createV2).1.withUnsafeBytes { try RegionSpec.decode($0) }
        XCTAssertEqual(partial, RegionSpec(regionID: 8, pageCount: 65536, reservedPages: 21504))
        XCTAssertEqual(encodeFrame(0x02, id: 16, partial.encode()), createV2)
        let tooMuch = RegionSpec(regionID: 8, pageCount: 10, reservedPages: 11).encode()
        XCTAssertThrowsError(try tooMuch.withUnsafeBytes { try RegionSpec.decode($0) }) { error in
            XCTAssertEqual((error as? ProtocolError)?.code, .malformedFrame)
        }

        let reserve = try vector("reserve_request")
        let reservation = try split(reserve).1.withUnsafeBytes { try Reservation.decode($0) }
        XCTAssertEqual(reservation, Reservation(regionID: 8, reservedPages: 22016))
        XCTAssertEqual(encodeFrame(0x0A, id: 17, reservation.encode()), reserve)
        let reserveReply = try vector("reserve_reply")
        XCTAssertEqual(try split(reserveReply).1.withUnsafeBytes { try Reservation.decodeReply($0) }, 22016)
        XCTAssertEqual(encodeFrame(0x8A, id: 17, Reservation.encodeReply(reservedPages: 22016)), reserveReply)

        let fence = try vector("fence_request")
        let fenced = try split(fence).1.withUnsafeBytes { try Fence.decode($0) }
        XCTAssertEqual(fenced, Fence(link: 5, generation: 2))
        XCTAssertEqual(encodeFrame(Opcode.fence.rawValue, id: 18, fenced.encode()), fence)
        XCTAssertEqual(encodeFrame(Opcode.fence.response, id: 18, []), try vector("fence_reply"))
        let refusal = try split(try vector("error_fenced")).0
        XCTAssertEqual(ErrorCode(rawValue: refusal.status), .fenced)
        XCTAssertTrue(ErrorCode.fenced.closesConnection)

        let drop = try vector("drop_region_request")
        let (_, dropPayload) = try split(drop)
        XCTAssertEqual(try dropPayload.withUnsafeBytes { try RegionRef.decode($0) }, RegionRef(regionID: 7))
        XCTAssertEqual(encodeFrame(0x03, id: 3, RegionRef(regionID: 7).encode()), drop)

        let discard = try vector("discard_request")
        let (_, discardPayload) = try split(discard)
        let range = try discardPayload.withUnsafeBytes { try DiscardRange.decode($0) }
        XCTAssertEqual(range, DiscardRange(regionID: 7, firstPage: 10, pageCount: 20))
        XCTAssertEqual(encodeFrame(0x06, id: 6, range.encode()), discard)
    }

    func testPageBatchesRoundTrip() throws {
        let read = try vector("read_pages_request")
        let (_, readPayload) = try split(read)
        let (batch, offset) = try readPayload.withUnsafeBytes { try PageBatchHeader.decode($0, withData: false) }
        XCTAssertEqual(batch, PageBatchHeader(regionID: 7, pages: [0, 5, 1000]))
        XCTAssertEqual(offset, readPayload.count)
        XCTAssertEqual(encodeFrame(0x04, id: 4, batch.encode()), read)

        let (replyHeader, replyPayload) = try split(try vector("read_pages_reply"))
        XCTAssertEqual(replyHeader.opcode, Opcode.readPages.response)
        XCTAssertEqual(replyPayload, [UInt8](repeating: 0xAB, count: 4096))

        let write = try vector("write_pages_request")
        let (_, writePayload) = try split(write)
        let (writeBatch, dataOffset) = try writePayload.withUnsafeBytes { try PageBatchHeader.decode($0, withData: true) }
        XCTAssertEqual(writeBatch, PageBatchHeader(regionID: 7, pages: [3]))
        XCTAssertEqual(Array(writePayload[dataOffset...]), (0..<4096).map { UInt8($0 % 251) })
        XCTAssertEqual(encodeFrame(0x05, id: 5, writeBatch.encode() + (0..<4096).map { UInt8($0 % 251) }), write)
    }

    func testStatsAndErrorsRoundTrip() throws {
        XCTAssertEqual(encodeFrame(0x07, id: 8, []), try vector("stats_request"))
        let replyBytes = try vector("stats_reply")
        let (_, payload) = try split(replyBytes)
        let stats = try payload.withUnsafeBytes { try ServerStats.decode($0) }
        XCTAssertEqual(stats.capacityPages, 262144)
        XCTAssertEqual(stats.pagesWritten, 4000)
        XCTAssertEqual(encodeFrame(0x87, id: 8, stats.encode(version: 2)), replyBytes)
        XCTAssertNil(stats.tenant)
        let withTenant = try vector("stats_reply_v3")
        let tenantStats = try split(withTenant).1.withUnsafeBytes { try ServerStats.decode($0) }
        XCTAssertEqual(tenantStats.tenant, ServerStats.Tenant(name: "alpha", quotaPages: 131072, reservedPages: 65536, storedPages: 1000))
        XCTAssertEqual(encodeFrame(0x87, id: 20, tenantStats.encode(version: 3)), withTenant)
        // Version 3 without tenants: an empty name and nothing more.
        XCTAssertEqual(stats.encode(version: 3).count, 80 + 2)
        XCTAssertNil(try stats.encode(version: 3).withUnsafeBytes { try ServerStats.decode($0) }.tenant)

        let errorBytes = try vector("error_out_of_capacity")
        let (errorHeader, message) = try split(errorBytes)
        XCTAssertEqual(ErrorCode(rawValue: errorHeader.status), .outOfCapacity)
        XCTAssertEqual(String(decoding: message, as: UTF8.self), "server out of capacity")
    }

    func testInvalidVectorsAreRejected() throws {
        for (name, code) in [("bad_magic", ErrorCode.malformedFrame), ("bad_version", .unsupportedVersion), ("oversized", .tooLarge)] {
            let bytes = try vector(name)
            XCTAssertThrowsError(try bytes.withUnsafeBytes { try FrameHeader.decode($0.baseAddress!) }, name) { error in
                XCTAssertEqual((error as? ProtocolError)?.code, code, name)
            }
        }
        let (_, truncated) = try split(try vector("truncated_page_list"))
        XCTAssertThrowsError(try truncated.withUnsafeBytes { try PageBatchHeader.decode($0, withData: false) }) { error in
            XCTAssertEqual((error as? ProtocolError)?.code, .malformedFrame)
        }
    }

    func testManifestListsEveryVector() throws {
        let url = BuiltProducts.repository.appendingPathComponent("protocol/vectors/vectors.json")
        let manifest = try JSONSerialization.jsonObject(with: Data(contentsOf: url)) as? [String: Any]
        let entries = manifest?["vectors"] as? [[String: Any]] ?? []
        XCTAssertEqual(entries.count, 27)
        for entry in entries {
            let file = try XCTUnwrap(entry["file"] as? String)
            let data = try Data(contentsOf: BuiltProducts.repository.appendingPathComponent("protocol/vectors/\(file)"))
            XCTAssertEqual(data.count, entry["bytes"] as? Int, file)
        }
    }

    func testByteSizesParse() {
        XCTAssertEqual(parseByteSize("8GiB"), 8 << 30)
        XCTAssertEqual(parseByteSize("512MiB"), 512 << 20)
        XCTAssertEqual(parseByteSize("64m"), 64 << 20)
        XCTAssertEqual(parseByteSize("1.5 GiB"), 3 << 29)
        XCTAssertEqual(parseByteSize("4096"), 4096)
        XCTAssertEqual(parseByteSize("2GB"), 2_000_000_000)
        XCTAssertNil(parseByteSize("lots"))
        XCTAssertNil(parseByteSize("-5MiB"))
    }
}

extension ProtocolVectorTests {
    func testRDMAMessagesRoundTrip() throws {
        func load(_ name: String) throws -> [UInt8] {
            Array(try Data(contentsOf: BuiltProducts.repository.appendingPathComponent("protocol/vectors/\(name).bin")))
        }
        func payload(_ bytes: [UInt8]) throws -> (FrameHeader, [UInt8]) {
            let header = try bytes.withUnsafeBytes { try FrameHeader.decode($0.baseAddress!) }
            return (header, Array(bytes[FrameHeader.size...]))
        }
        func frame(_ opcode: UInt8, _ id: UInt32, _ body: [UInt8]) -> [UInt8] {
            var bytes = [UInt8](repeating: 0, count: FrameHeader.size)
            bytes.withUnsafeMutableBytes {
                FrameHeader(opcode: opcode, requestID: id, payloadLength: UInt32(body.count)).encode(into: $0.baseAddress!)
            }
            return bytes + body
        }
        XCTAssertEqual(frame(Opcode.rdmaAttach.rawValue, 14, []), try load("rdma_attach_request"))
        let (_, attachBody) = try payload(try load("rdma_attach_reply"))
        let attach = try attachBody.withUnsafeBytes { try RDMAAttachReply.decode($0) }
        XCTAssertEqual(attach, RDMAAttachReply(port: 7071, ticket: Array(0xA0...0xAF)))
        XCTAssertEqual(frame(0x88, 14, attach.encode()), try load("rdma_attach_reply"))
        XCTAssertEqual(frame(Opcode.rdmaExpose.rawValue, 15, RegionRef(regionID: 7).encode()), try load("rdma_expose_request"))
        let (_, exposeBody) = try payload(try load("rdma_expose_reply"))
        let expose = try exposeBody.withUnsafeBytes { try RDMAExposeReply.decode($0) }
        XCTAssertEqual(expose, RDMAExposeReply(address: 0x7F00_0000_0000, rkey: 0x1234, length: 65536 * 4096))
        XCTAssertEqual(frame(0x89, 15, expose.encode()), try load("rdma_expose_reply"))
    }

    func testTCPOnlyServerRefusesRDMAAttach() throws {
        let server = try ServerProcess(capacity: "4MiB", extra: ["--transport", "tcp"])
        defer { server.stop() }
        let client = try RawClient(server.endpoint)
        XCTAssertNil(try client.hello().error)
        let reply = try client.call(.rdmaAttach, [])
        XCTAssertEqual(reply.error, .rdmaUnavailable)
        XCTAssertNil(try client.call(.stats, []).error, "connection stays usable")
    }
}
