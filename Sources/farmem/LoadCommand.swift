import ArgumentParser
import FarMemProtocol
import FarMemSystem
import Foundation
import Synchronization

/// `farmem load`: many client connections against one memory server, to see
/// what the server does with them (request latency and rate at a given
/// number of connections, or, with `--idle`, what idle connections cost it).
/// Each connection keeps one request outstanding (a closed loop): a page read
/// or a page write, alternately. Latency is from the request's send to its
/// whole reply, so at many connections it includes the wait for the server's
/// turn, which is what a client sees.
struct LoadCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "load",
        abstract: "Drive a memory server with many connections and report request latency.",
        discussion: "Traffic goes only to the server named. Connections share one session, each with a region of its own.")

    @Option(help: "The server, HOST:PORT.") var server = "127.0.0.1:7070"
    @Option(help: "File with the server's token or your tenant's secret.") var tokenFile: String?
    @Option(help: "Connections to open.") var connections = 64
    @Option(help: "Seconds to run (after one second of warm-up, not measured).") var seconds = 5.0
    @Option(help: "Client threads driving the connections.") var threads = 2
    @Option(help: "Pages per request.") var pages = 1
    @Flag(help: "Open the connections, say HELLO, hold them for --seconds without requests, and close.") var idle = false
    @Flag(help: "Print JSON instead of text.") var json = false

    func validate() throws {
        guard (1...100_000).contains(connections) else { throw ValidationError("--connections must be 1...100000") }
        guard seconds > 0, seconds <= 3600 else { throw ValidationError("--seconds must be in (0, 3600]") }
        guard (1...64).contains(threads) else { throw ValidationError("--threads must be 1...64") }
        guard (1...ProtocolLimits.maxBatchPages).contains(pages) else { throw ValidationError("--pages must be 1...\(ProtocolLimits.maxBatchPages)") }
    }

    func run() throws {
        guard let endpoint = TCPSocket.Endpoint(parsing: server) else { throw ValidationError("--server must be HOST:PORT") }
        let token = try tokenFile.map { path -> [UInt8] in
            guard let token = readTokenFile(path) else { throw ValidationError("cannot read \(path)") }
            return token
        } ?? []
        let limit = raiseDescriptorLimit()
        guard limit > connections + 16 else {
            throw ValidationError("the descriptor limit is \(limit); \(connections) connections need more (ulimit -n)")
        }
        var sessionKey: [UInt8] = (0..<16).map { _ in UInt8.random(in: 0...255) }
        sessionKey[0] |= 1
        var opened: [LoadConnection] = []
        defer { for connection in opened { connection.socket.close() } }
        for index in 0..<connections {
            do {
                opened.append(try LoadConnection(endpoint: endpoint, token: token, sessionKey: sessionKey,
                                                 region: UInt64(index + 1), pages: pages, createsRegion: !idle))
            } catch {
                throw ValidationError("connection \(index + 1) of \(connections) failed: \(error)")
            }
        }
        if idle {
            if !json { print("\(connections) connections open and idle for \(seconds) s") }
            fflush(nil)   // the line is out before the wait (a script waits for it)
            sleepSeconds(seconds)
            if json { print(#"{"connections": \#(connections), "idle_seconds": \#(seconds)}"#) }
            return
        }
        let report = try LoadRun(connections: opened, threads: min(threads, connections), seconds: seconds).run()
        if json {
            print(#"{"connections": \#(connections), "pages": \#(pages), "requests": \#(report.requests), "#
                  + #""per_second": \#(Int(report.perSecond)), "p50_us": \#(report.p50Microseconds), "#
                  + #""p99_us": \#(report.p99Microseconds), "errors": \#(report.errors)}"#)
        } else {
            print("connections \(connections), \(pages) page(s) a request: \(report.requests) requests in \(seconds) s, "
                  + "\(Int(report.perSecond))/s, p50 \(report.p50Microseconds) us, p99 \(report.p99Microseconds) us, errors \(report.errors)")
        }
        if report.errors > 0 { throw ExitCode(1) }
    }
}

/// One connection of the load: its socket and its two requests, built once.
final class LoadConnection: @unchecked Sendable {   // each used by one thread at a time
    let socket: TCPSocket
    let readFrame: [UInt8]
    let writeFrame: [UInt8]
    var nextIsWrite = false
    var sentAt: UInt64 = 0

    init(endpoint: TCPSocket.Endpoint, token: [UInt8], sessionKey: [UInt8], region: UInt64, pages: Int, createsRegion: Bool) throws {
        socket = try TCPSocket.connect(to: endpoint, timeoutSeconds: 10)
        do {
            _ = try roundTrip(socket, .hello, Hello(sessionKey: sessionKey, token: token).encode())
            if createsRegion {
                _ = try roundTrip(socket, .createRegion, RegionSpec(regionID: region, pageCount: UInt64(pages)).encode())
            }
        } catch {
            socket.close()
            throw error
        }
        let batch = PageBatchHeader(regionID: region, pages: (0..<UInt64(pages)).map { $0 })
        readFrame = Self.frame(.readPages, batch.encode())
        writeFrame = Self.frame(.writePages, batch.encode() + [UInt8](repeating: UInt8(truncatingIfNeeded: region), count: pages * ProtocolLimits.pageSize))
        if createsRegion {   // so that reads have data to return
            let reply = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size + ProtocolLimits.maxPayload, alignment: 8)
            defer { reply.deallocate() }
            try writeFrame.withUnsafeBytes { try socket.writeAll($0.baseAddress!, count: $0.count) }
            _ = try receiveReply(into: reply)
        }
    }

    private static func frame(_ opcode: Opcode, _ payload: [UInt8]) -> [UInt8] {
        var frame = [UInt8](repeating: 0, count: FrameHeader.size)
        frame.withUnsafeMutableBytes {
            FrameHeader(opcode: opcode.rawValue, requestID: 1, payloadLength: UInt32(payload.count)).encode(into: $0.baseAddress!)
        }
        return frame + payload
    }

    func sendNext(now: UInt64) throws {
        let frame = nextIsWrite ? writeFrame : readFrame
        nextIsWrite.toggle()
        sentAt = now
        try frame.withUnsafeBytes { try socket.writeAll($0.baseAddress!, count: $0.count) }
    }

    /// Reads one whole reply; true if it reports success.
    func receiveReply(into buffer: UnsafeMutableRawPointer) throws -> Bool {
        try socket.readExactly(into: buffer, count: FrameHeader.size)
        let header = try FrameHeader.decode(buffer)
        if header.payloadLength > 0 { try socket.readExactly(into: buffer + FrameHeader.size, count: Int(header.payloadLength)) }
        return header.status == 0
    }
}

/// The closed loop: each thread drives its share of the connections.
struct LoadRun {
    let connections: [LoadConnection]
    let threads: Int
    let seconds: Double

    struct Report {
        var requests = 0
        var errors = 0
        var perSecond = 0.0
        var p50Microseconds = 0
        var p99Microseconds = 0
    }

    func run() throws -> Report {
        let warmUp: UInt64 = 1_000_000_000
        let start = monotonicNanoseconds()
        let measureFrom = start + warmUp
        let end = measureFrom + UInt64(seconds * 1e9)
        final class Results: Sendable { let list = Mutex<[(latencies: [UInt32], errors: Int, failure: String?)]>([]) }
        let results = Results()
        let workers = (0..<threads).map { index in
            let share = stride(from: index, to: connections.count, by: threads).map { connections[$0] }
            return PosixThread.spawn(name: "farmem-load") {
                let result = Self.drive(share, measureFrom: measureFrom, end: end)
                results.list.withLock { $0.append(result) }
            }
        }
        for worker in workers { worker.join() }
        let all = results.list.withLock { $0 }
        if let failure = all.compactMap(\.failure).first { throw ValidationError("load failed: \(failure)") }
        var latencies = all.flatMap(\.latencies)
        latencies.sort()
        var report = Report()
        report.requests = latencies.count
        report.errors = all.reduce(0) { $0 + $1.errors }
        report.perSecond = Double(latencies.count) / seconds
        if !latencies.isEmpty {
            report.p50Microseconds = Int(latencies[latencies.count / 2]) / 1000
            report.p99Microseconds = Int(latencies[min(latencies.count - 1, latencies.count * 99 / 100)]) / 1000
        }
        return report
    }

    /// One thread: an epoll set of its connections, each with one request out.
    private static func drive(_ share: [LoadConnection], measureFrom: UInt64, end: UInt64)
        -> (latencies: [UInt32], errors: Int, failure: String?) {
        var latencies: [UInt32] = []
        latencies.reserveCapacity(1 << 20)
        var errors = 0
        let buffer = UnsafeMutableRawPointer.allocate(byteCount: FrameHeader.size + ProtocolLimits.maxPayload, alignment: 8)
        defer { buffer.deallocate() }
        do {
            let epoll = try Epoll()
            defer { epoll.close() }
            for (index, connection) in share.enumerated() {
                try epoll.add(connection.socket.descriptor, for: .readable, token: UInt64(index))
                try connection.sendNext(now: monotonicNanoseconds())
            }
            var outstanding = share.count
            var ready = Epoll.ReadyList()
            // Past the end no new request goes out; the last replies are awaited (at most 10 s).
            while outstanding > 0 && monotonicNanoseconds() < end + 10_000_000_000 {
                try epoll.wait(into: &ready, timeoutMilliseconds: 100)
                for i in 0..<ready.count {
                    let connection = share[Int(ready.token(i))]
                    if !(try connection.receiveReply(into: buffer)) { errors += 1 }
                    let now = monotonicNanoseconds()
                    if connection.sentAt >= measureFrom && now <= end && latencies.count < (1 << 24) {
                        latencies.append(UInt32(min(now - connection.sentAt, UInt64(UInt32.max))))
                    }
                    if now < end {
                        try connection.sendNext(now: now)
                    } else {
                        outstanding -= 1
                    }
                }
            }
            return (latencies, errors, outstanding > 0 ? "\(outstanding) replies did not arrive" : nil)
        } catch {
            return (latencies, errors, "\(error)")
        }
    }
}
