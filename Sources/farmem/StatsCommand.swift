import ArgumentParser
import FarMemProtocol
import FarMemSystem

/// `farmem stats`: a server's figures, read over the wire protocol.
struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stats", abstract: "Show a memory server's statistics.")

    @Option(help: "The server, HOST:PORT.") var server = "127.0.0.1:7070"
    @Option(help: "File with the server's shared token, if it has one.") var tokenFile: String?
    @Flag(help: "Print JSON instead of text.") var json = false

    func run() throws {
        guard let endpoint = TCPSocket.Endpoint(parsing: server) else { throw ValidationError("--server must be HOST:PORT") }
        let token = try tokenFile.map { path -> [UInt8] in
            guard let token = readTokenFile(path) else { throw ValidationError("cannot read \(path)") }
            return token
        } ?? []
        let stats = try fetchServerStats(endpoint: endpoint, token: token)
        if json {
            print("""
            {"capacity_pages": \(stats.capacityPages), "reserved_pages": \(stats.reservedPages), \
            "stored_pages": \(stats.storedPages), "sessions": \(stats.sessions), "connections": \(stats.connections), \
            "pages_read": \(stats.pagesRead), "pages_written": \(stats.pagesWritten)}
            """)
        } else {
            print("""
            capacity      \(formatByteSize(Int(stats.capacityPages) * 4096)) (\(stats.capacityPages) pages)
            reserved      \(formatByteSize(Int(stats.reservedPages) * 4096))
            stored        \(formatByteSize(Int(stats.storedPages) * 4096))
            sessions      \(stats.sessions)
            connections   \(stats.connections)
            pages read    \(stats.pagesRead)
            pages written \(stats.pagesWritten)
            """)
        }
    }
}

/// One HELLO + STATS exchange on a fresh connection (a throw-away session).
func fetchServerStats(endpoint: TCPSocket.Endpoint, token: [UInt8]) throws -> ServerStats {
    let socket = try TCPSocket.connect(to: endpoint, timeoutSeconds: 5)
    defer { socket.close() }
    var key: [UInt8] = (0..<16).map { _ in UInt8.random(in: 0...255) }
    key[0] |= 1
    _ = try roundTrip(socket, .hello, Hello(sessionKey: key, token: token).encode())
    let reply = try roundTrip(socket, .stats, [])
    return try reply.withUnsafeBytes { try ServerStats.decode($0) }
}

func roundTrip(_ socket: TCPSocket, _ opcode: Opcode, _ payload: [UInt8]) throws -> [UInt8] {
    var frame = [UInt8](repeating: 0, count: FrameHeader.size)
    frame.withUnsafeMutableBytes { FrameHeader(opcode: opcode.rawValue, requestID: 1, payloadLength: UInt32(payload.count)).encode(into: $0.baseAddress!) }
    frame += payload
    try frame.withUnsafeBytes { try socket.writeAll($0.baseAddress!, count: $0.count) }
    var header = [UInt8](repeating: 0, count: FrameHeader.size)
    try header.withUnsafeMutableBytes { try socket.readExactly(into: $0.baseAddress!, count: FrameHeader.size) }
    let decoded = try header.withUnsafeBytes { try FrameHeader.decode($0.baseAddress!) }
    var body = [UInt8](repeating: 0, count: Int(decoded.payloadLength))
    if !body.isEmpty { try body.withUnsafeMutableBytes { try socket.readExactly(into: $0.baseAddress!, count: $0.count) } }
    if decoded.status != 0 {
        throw ProtocolError(ErrorCode(rawValue: decoded.status) ?? .internalError, String(decoding: body, as: UTF8.self))
    }
    return body
}

