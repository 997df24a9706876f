import ArgumentParser
import FarMemProtocol
import FarMemSystem
import FarMemory
import Foundation

/// `farmem top`: a live view of one memory server or several, refreshed
/// every second: capacity, reserved and stored memory, sessions,
/// connections, page rates, and the round trip of a STATS request as a
/// latency probe. A server that stops answering shows as down and is tried
/// again at the next refresh.
struct TopCommand: ParsableCommand {
    static let configuration = CommandConfiguration(commandName: "top", abstract: "Watch memory servers live.")

    @Option(help: "The server, or a cluster: HOST:PORT[,HOST:PORT...].") var server = "127.0.0.1:7070"
    @Option(help: "File with the servers' shared token, if they have one.") var tokenFile: String?
    @Option(help: "Seconds between refreshes.") var interval = 1.0
    @Option(help: "Refreshes before exiting (0: until interrupted).") var count = 0

    func run() throws {
        let endpoints: [TCPSocket.Endpoint]
        switch FarMemoryConfiguration.servers(parsing: server) {
        case .success(let list): endpoints = list
        case .failure(let error): throw ValidationError("--server: \(error)")
        }
        guard interval >= 0.1, count >= 0 else { throw ValidationError("--interval must be at least 0.1 and --count at least 0") }
        let token = try tokenFile.map { path -> [UInt8] in
            guard let token = readTokenFile(path) else { throw ValidationError("cannot read \(path)") }
            return token
        } ?? []
        let probes = endpoints.map { StatsProbe(endpoint: $0, token: token) }
        let terminal = isatty(STDOUT_FILENO) != 0
        var previous: [(stats: ServerStats, at: Double)?] = Array(repeating: nil, count: endpoints.count)
        var refresh = 0
        while count == 0 || refresh < count {
            if refresh > 0 { sleepSeconds(interval) }
            refresh += 1
            var rows = [["server", "state", "capacity", "reserved", "stored", "sessions", "conns", "read pg/s", "written pg/s", "stats rtt"]]
            for (i, probe) in probes.enumerated() {
                let now = monotonicSeconds()
                switch probe.fetch() {
                case .success(let (stats, rtt)):
                    var readRate = "-", writeRate = "-"
                    if let (before, at) = previous[i], now > at {
                        let seconds = now - at
                        readRate = String(format: "%.0f", Double(stats.pagesRead &- before.pagesRead) / seconds)
                        writeRate = String(format: "%.0f", Double(stats.pagesWritten &- before.pagesWritten) / seconds)
                    }
                    previous[i] = (stats, now)
                    rows.append(["\(endpoints[i])", "up", formatByteSize(Int(stats.capacityPages) * 4096),
                                 formatByteSize(Int(stats.reservedPages) * 4096), formatByteSize(Int(stats.storedPages) * 4096),
                                 "\(stats.sessions)", "\(stats.connections)", readRate, writeRate,
                                 String(format: "%.0f us", rtt * 1e6)])
                case .failure(let error):
                    previous[i] = nil
                    rows.append(["\(endpoints[i])", "down: \(String(describing: error).prefix(50))", "", "", "", "", "", "", "", ""])
                }
            }
            let table = Self.format(rows)
            let screen = terminal
                ? "\u{1B}[H\u{1B}[2J" + "farmem top: \(endpoints.count) server\(endpoints.count == 1 ? "" : "s"), every \(interval) s (Ctrl-C quits)\n\n" + table
                : (refresh > 1 ? "\n" : "") + table
            // Written at once (not print's buffer): a pipe sees each refresh when it happens.
            FileHandle.standardOutput.write((screen + "\n").data(using: .utf8)!)
        }
    }

    static func format(_ rows: [[String]]) -> String {
        let widths = rows[0].indices.map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.map { row in
            row.enumerated().map { column, text in
                column < 2 ? text.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                           : String(repeating: " ", count: widths[column] - text.count) + text
            }.joined(separator: "  ")
        }.joined(separator: "\n")
    }
}

/// One connection to one server for `farmem top`, kept between refreshes
/// (its own throw-away session) and made again when it fails.
final class StatsProbe {
    let endpoint: TCPSocket.Endpoint
    private let token: [UInt8]
    private var socket: TCPSocket?

    init(endpoint: TCPSocket.Endpoint, token: [UInt8]) {
        self.endpoint = endpoint
        self.token = token
    }

    deinit { socket?.close() }

    /// The server's STATS and how long the request took.
    func fetch() -> Result<(ServerStats, Double), Error> {
        do {
            if socket == nil {
                let fresh = try TCPSocket.connect(to: endpoint, timeoutSeconds: 2)
                do {
                    try fresh.setTimeouts(seconds: 2)
                    var key: [UInt8] = (0..<16).map { _ in UInt8.random(in: 0...255) }
                    key[0] |= 1
                    _ = try roundTrip(fresh, .hello, Hello(sessionKey: key, token: token).encode())
                } catch {
                    fresh.close()   // refused HELLO (a wrong token, say): no descriptor left behind
                    throw error
                }
                socket = fresh
            }
            let started = monotonicSeconds()
            let reply = try roundTrip(socket!, .stats, [])
            let rtt = monotonicSeconds() - started
            return .success((try reply.withUnsafeBytes { try ServerStats.decode($0) }, rtt))
        } catch {
            socket?.close()
            socket = nil
            return .failure(error)
        }
    }
}
