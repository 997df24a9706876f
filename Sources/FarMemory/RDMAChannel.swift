import CFarMemRDMA
import FarMemProtocol
import FarMemSystem

/// A region's server memory as RDMA_EXPOSE described it.
struct RemoteRegion: Sendable {
    let address: UInt64
    let rkey: UInt32
    let length: UInt64
}

/// One RDMA connection (RC queue pair) owned by one pager thread: page
/// fetches are RDMA READs and write-backs RDMA WRITEs, straight between a
/// registered local buffer and the server's registered region, with the
/// completion polled on the calling thread. The server's CPU is not involved.
final class RDMAChannel {
    private let connection: OpaquePointer
    let buffer: UnsafeMutableRawPointer
    let capacityPages: Int
    private let remoteAddresses: UnsafeMutablePointer<UInt64>
    private let localOffsets: UnsafeMutablePointer<UInt64>
    private let timeoutMilliseconds: Int32

    struct ConnectError: Error, CustomStringConvertible { let description: String }

    static var deviceCount: Int { Int(fm_rdma_device_count()) }

    /// `transferTimeoutSeconds`: how long a READ or WRITE may wait for its completion (default: `timeoutSeconds`).
    init(host: String, port: UInt16, ticket: [UInt8], capacityPages: Int, timeoutSeconds: Double,
         transferTimeoutSeconds: Double? = nil) throws(ConnectError) {
        var err: Int32 = 0
        var why = [CChar](repeating: 0, count: 256)
        let timeout = Int32(timeoutSeconds * 1000)
        guard let connection = ticket.withUnsafeBytes({ raw in
            fm_rdma_connect(host, port, raw.baseAddress, UInt8(raw.count), capacityPages * 4096, timeout, &err, &why, why.count)
        }) else {
            throw ConnectError(description: "RDMA connect to \(host):\(port) failed: \(stringFromCBuffer(why))")
        }
        self.connection = connection
        self.capacityPages = capacityPages
        buffer = fm_rdma_buffer(connection)
        remoteAddresses = .allocate(capacity: capacityPages)
        localOffsets = .allocate(capacity: capacityPages)
        for i in 0..<capacityPages { localOffsets[i] = UInt64(i * 4096) }
        timeoutMilliseconds = Int32((transferTimeoutSeconds ?? timeoutSeconds) * 1000)
    }

    deinit {
        fm_rdma_close(connection)
        remoteAddresses.deallocate()
        localOffsets.deallocate()
    }

    struct TransferError: Error, CustomStringConvertible { let description: String }

    /// READs `pages` of `remote` straight into `destination` (count x 4 KiB:
    /// a shared region's page cache), registered for the transfer only.
    /// Returns false, having sent nothing, if it could not be registered.
    func readInPlace(remote: RemoteRegion, pages: UnsafeBufferPointer<UInt64>,
                     into destination: UnsafeMutableRawPointer) throws(TransferError) -> Bool {
        precondition(pages.count <= capacityPages)
        for (i, page) in pages.enumerated() { remoteAddresses[i] = remote.address + page * 4096 }
        var status: Int32 = 0, registrationFailed: Int32 = 0
        let rc = fm_rdma_read_in_place(connection, UInt32(pages.count), remoteAddresses, localOffsets, destination,
                                       remote.rkey, timeoutMilliseconds, &status, &registrationFailed)
        if registrationFailed != 0 { return false }
        if rc == 0 { return true }
        if rc == -5 { throw TransferError(description: "RDMA READ failed: \(String(cString: fm_rdma_status_string(status)))") }
        throw TransferError(description: "RDMA READ failed: errno \(-rc)\(rc == -110 ? " (no completion in time: queue pair lost?)" : "")")
    }

    /// READs (or WRITEs) `pages` of `remote` into (from) buffer slots 0..<count, one doorbell.
    func transfer(write: Bool, remote: RemoteRegion, pages: UnsafeBufferPointer<UInt64>) throws(TransferError) {
        precondition(pages.count <= capacityPages)
        for (i, page) in pages.enumerated() { remoteAddresses[i] = remote.address + page * 4096 }
        var status: Int32 = 0
        let rc = fm_rdma_transfer(connection, write ? 1 : 0, UInt32(pages.count), remoteAddresses, localOffsets,
                                  4096, remote.rkey, timeoutMilliseconds, &status)
        if rc == 0 { return }
        if rc == -5 {   // EIO: a completion with an error status
            throw TransferError(description: "RDMA \(write ? "WRITE" : "READ") failed: \(String(cString: fm_rdma_status_string(status)))")
        }
        throw TransferError(description: "RDMA \(write ? "WRITE" : "READ") failed: errno \(-rc)\(rc == -110 ? " (no completion in time: queue pair lost?)" : "")")
    }
}
