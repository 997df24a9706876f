import ArgumentParser
import FarMemProtocol
import FarMemSystem
import FarMemory
import Foundation

/// `farmem stats`: each server's figures and state, read over the wire protocol.
struct StatsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "stats", abstract: "Show memory servers' statistics.")

    @Option(help: "The server, or a cluster: HOST:PORT[,HOST:PORT...].") var server = "127.0.0.1:7070"
    @Option(help: "File with the servers' shared token, or your tenant's secret on servers with a keys file (then your tenant's use is shown too).")
    var tokenFile: String?
    @Flag(help: "Print JSON instead of text.") var json = false

    func run() throws {
        let endpoints: [TCPSocket.Endpoint]
        switch FarMemoryConfiguration.servers(parsing: server) {
        case .success(let list): endpoints = list
        case .failure(let error): throw ValidationError("--server: \(error)")
        }
        let token = try tokenFile.map { path -> [UInt8] in
            guard let token = readTokenFile(path) else { throw ValidationError("cannot read \(path)") }
            return token
        } ?? []
        // One server down does not hide the others: each is asked on its own.
        let results = endpoints.map { endpoint in (endpoint, Result { try fetchServerStats(endpoint: endpoint, token: token) }) }
        if endpoints.count == 1, case .failure(let error) = results[0].1 { throw error }
        if json {
            let entries = results.map { endpoint, result -> String in
                switch result {
                case .success(let stats):
                    return """
                    {"server": "\(endpoint)", "state": "up", "capacity_pages": \(stats.capacityPages), \
                    "reserved_pages": \(stats.reservedPages), "stored_pages": \(stats.storedPages), "sessions": \(stats.sessions), \
                    "connections": \(stats.connections), "pages_read": \(stats.pagesRead), "pages_written": \(stats.pagesWritten)\
                    \(tenantJSON(stats.tenant))}
                    """
                case .failure(let error):
                    let reason = jsonEscaped(String(describing: error))
                    return #"{"server": "\#(endpoint)", "state": "down", "error": "\#(reason)"}"#
                }
            }
            print(endpoints.count == 1 ? entries[0] : "[" + entries.joined(separator: ", ") + "]")
            return
        }
        for (index, (endpoint, result)) in results.enumerated() {
            if endpoints.count > 1 { print("\(index == 0 ? "" : "\n")\(endpoint)") }
            switch result {
            case .success(let stats):
                print("""
                \(endpoints.count > 1 ? "state         up\n" : "")capacity      \(formatByteSize(Int(stats.capacityPages) * 4096)) (\(stats.capacityPages) pages)
                reserved      \(formatByteSize(Int(stats.reservedPages) * 4096))
                stored        \(formatByteSize(Int(stats.storedPages) * 4096))
                sessions      \(stats.sessions)
                connections   \(stats.connections)
                pages read    \(stats.pagesRead)
                pages written \(stats.pagesWritten)
                """)
                if let tenant = stats.tenant {
                    print("tenant        \(tenant.name): quota \(formatByteSize(Int(tenant.quotaPages) * 4096)), "
                          + "reserved \(formatByteSize(Int(tenant.reservedPages) * 4096)), stored \(formatByteSize(Int(tenant.storedPages) * 4096))")
                }
            case .failure(let error):
                print("state         down (\(error))")
            }
        }
    }
}

/// The asking tenant's figures as a JSON member (servers with a keys file), or nothing.
private func tenantJSON(_ tenant: ServerStats.Tenant?) -> String {
    guard let tenant else { return "" }
    return #", "tenant": {"name": "\#(jsonEscaped(tenant.name))", "quota_pages": \#(tenant.quotaPages), "#
        + #""reserved_pages": \#(tenant.reservedPages), "stored_pages": \#(tenant.storedPages)}"#
}

private func jsonEscaped(_ text: String) -> String {
    text.replacingOccurrences(of: "\\", with: "\\\\").replacingOccurrences(of: "\"", with: "\\\"")
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

