import Foundation
import FarMemProtocol
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Synchronization
import XCTest

/// Where `swift build` put the executables: next to the test bundle.
enum BuiltProducts {
    static var directory: URL {
        var url = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath()
        while url.pathComponents.count > 1 {
            if FileManager.default.fileExists(atPath: url.appendingPathComponent("farmemd").path) { return url }
            url.deleteLastPathComponent()
        }
        // `swift test` may run the bundle through a runner: fall back to the package's .build.
        return repository.appendingPathComponent(".build/debug")
    }
    static func path(_ name: String) -> String { directory.appendingPathComponent(name).path }
    static var repository: URL {
        URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }
}

/// A real `farmemd` process on a free loopback port, stopped when the test ends.
final class ServerProcess {
    let process = Process()
    let endpoint: TCPSocket.Endpoint
    private let directory: URL

    /// `port` 0 picks a free one; a fixed one restarts a server where it was.
    init(capacity: String = "256MiB", token: String? = nil, host: String = "127.0.0.1", port: UInt16 = 0,
         extra: [String] = []) throws {
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("farmemd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        let portFile = directory.appendingPathComponent("port").path
        // --die-with-parent: a test process that crashes takes its servers with it
        // (a SIGSTOPped one included), so nothing holds the test run's output open.
        var arguments = ["--listen", "\(host):\(port)", "--capacity", capacity, "--port-file", portFile, "--log-level", "warning",
                         "--die-with-parent"]
        if let token {
            let tokenPath = directory.appendingPathComponent("token").path
            try (token + "\n").write(toFile: tokenPath, atomically: true, encoding: .utf8)
            arguments += ["--token-file", tokenPath]
        }
        process.executableURL = URL(fileURLWithPath: BuiltProducts.path("farmemd"))
        process.arguments = arguments + extra
        // farmemd's warnings go to the test's own stderr: a pipe nobody reads
        // would block the server once 64 KiB of log piled up.
        try process.run()
        let deadline = Date().addingTimeInterval(60)
        var port: UInt16?
        while port == nil, Date() < deadline, process.isRunning {
            if let text = try? String(contentsOfFile: portFile, encoding: .utf8), text.hasSuffix("\n") {
                port = UInt16(text.trimmingCharacters(in: .whitespacesAndNewlines))
            } else {
                usleep(20_000)
            }
        }
        guard let port else {
            process.terminate()
            throw XCTSkip("farmemd did not start (is it built? \(BuiltProducts.path("farmemd")))")
        }
        endpoint = TCPSocket.Endpoint(host: host, port: port)
    }

    var isRunning: Bool { process.isRunning }

    /// The server process's resident memory (VmRSS), in KiB.
    func residentKiB() throws -> Int {
        let status = try String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)
        let line = try XCTUnwrap(status.split(separator: "\n").first { $0.hasPrefix("VmRSS:") })
        return try XCTUnwrap(Int(line.split(separator: " ", omittingEmptySubsequences: true)[1]))
    }

    /// SIGKILL: the server dies with no goodbye, as a crashed host would.
    func kill() {
        if process.isRunning { Foundation.kill(process.processIdentifier, SIGKILL) }
        process.waitUntilExit()
    }

    /// SIGSTOP: the server hangs mid-request, as a host in a long stall would;
    /// requests already sent wait (write-backs stay in flight) until `resume`.
    /// Returns once every thread of the server is stopped: on a loaded
    /// machine a thread that is not scheduled yet would otherwise still answer
    /// a request sent right after the signal.
    func pause() {
        let pid = process.processIdentifier
        Foundation.kill(pid, SIGSTOP)
        let deadline = Date().addingTimeInterval(5)
        while Date() < deadline {
            let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
            let stopped = tasks.allSatisfy { task in
                // The state follows the command name in parentheses: "T" or "t" once stopped.
                guard let stat = try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/stat", encoding: .utf8),
                      let close = stat.lastIndex(of: ")") else { return true }
                let state = stat[stat.index(close, offsetBy: 2)]
                return state == "T" || state == "t"
            }
            if stopped { return }
            usleep(1_000)
        }
    }
    func resume() { Foundation.kill(process.processIdentifier, SIGCONT) }

    func stop() {
        if process.isRunning {
            resume()
            process.terminate()
        }
        process.waitUntilExit()
        try? FileManager.default.removeItem(at: directory)
    }

    /// SIGTERM, then farmemd's exit status: 0 when it shut down cleanly
    /// (disconnecting every client), a signal number if it crashed doing so.
    func stopCleanly() -> Int32 {
        stop()
        return process.terminationReason == .exit ? process.terminationStatus : 128 + process.terminationStatus
    }

    deinit { stop() }
}

/// A raw protocol client for the server tests: frames built by hand.
final class RawClient {
    let socket: TCPSocket
    private var nextID: UInt32 = 1

    init(_ endpoint: TCPSocket.Endpoint) throws {
        socket = try TCPSocket.connect(to: endpoint, timeoutSeconds: 5)
    }
    deinit { socket.close() }

    static func randomKey() -> [UInt8] { (0..<16).map { _ in UInt8.random(in: 1...255) } }

    func sendRaw(_ bytes: [UInt8]) throws {
        try bytes.withUnsafeBytes { try socket.writeAll($0.baseAddress!, count: $0.count) }
    }

    static func frame(_ opcode: UInt8, id: UInt32, _ payload: [UInt8]) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: FrameHeader.size)
        bytes.withUnsafeMutableBytes {
            FrameHeader(opcode: opcode, requestID: id, payloadLength: UInt32(payload.count)).encode(into: $0.baseAddress!)
        }
        return bytes + payload
    }

    @discardableResult
    func send(_ opcode: Opcode, _ payload: [UInt8]) throws -> UInt32 {
        let id = nextID
        nextID += 1
        try sendRaw(Self.frame(opcode.rawValue, id: id, payload))
        return id
    }

    struct Reply {
        var header: FrameHeader
        var body: [UInt8]
        var error: ErrorCode? { header.status == 0 ? nil : ErrorCode(rawValue: header.status) }
        var message: String { String(decoding: body, as: UTF8.self) }
    }

    func receive() throws -> Reply {
        var header = [UInt8](repeating: 0, count: FrameHeader.size)
        try header.withUnsafeMutableBytes { try socket.readExactly(into: $0.baseAddress!, count: FrameHeader.size) }
        let decoded = try header.withUnsafeBytes { try FrameHeader.decode($0.baseAddress!) }
        var body = [UInt8](repeating: 0, count: Int(decoded.payloadLength))
        if !body.isEmpty { try body.withUnsafeMutableBytes { try socket.readExactly(into: $0.baseAddress!, count: $0.count) } }
        return Reply(header: decoded, body: body)
    }

    func call(_ opcode: Opcode, _ payload: [UInt8]) throws -> Reply {
        try send(opcode, payload)
        return try receive()
    }

    func hello(key: [UInt8] = RawClient.randomKey(), token: String = "", maxVersion: UInt16 = ProtocolVersion.newest) throws -> Reply {
        try call(.hello, Hello(maxVersion: maxVersion, sessionKey: key, token: Array(token.utf8)).encode())
    }

    /// True when the server has closed this connection (EOF within the time-out).
    func isClosedByServer() -> Bool {
        var byte: UInt8 = 0
        try? socket.setTimeouts(seconds: 3)
        do {
            try socket.readExactly(into: &byte, count: 1)
        } catch is TCPSocket.ClosedByPeer {
            return true
        } catch let error as Errno where error == .timedOut {
            return false   // still open
        } catch {
            return true    // ECONNRESET and the like: closed
        }
        return false
    }

    static func writePayload(region: UInt64, pages: [UInt64], fill: (Int) -> UInt8) -> [UInt8] {
        var payload = PageBatchHeader(regionID: region, pages: pages).encode()
        for i in 0..<pages.count { payload += [UInt8](repeating: fill(i), count: 4096) }
        return payload
    }
}

extension RawClient {
    /// Polls STATS (bounded: about 5 s) until `done` holds; returns the last figures.
    func statsEventually(_ done: (ServerStats) -> Bool) throws -> ServerStats {
        var stats = ServerStats()
        for _ in 0..<100 {
            stats = try call(.stats, []).body.withUnsafeBytes { try ServerStats.decode($0) }
            if done(stats) { break }
            usleep(50_000)
        }
        return stats
    }
}

/// Tests/FailureProbe run as a process: it fills a region through the server,
/// says READY, and acts when told (see its header). A watchdog kills it if it
/// hangs, so a hang fails the test instead of the suite.
struct FailureProbe {
    let process = Process()
    let errors = Pipe()
    let input = Pipe()
    private let output = Pipe()
    let readyLine: String

    /// `backtrace`: with the Swift runtime's crash handling as it comes
    /// (SWIFT_BACKTRACE unset: swift-backtrace runs on a crash).
    init(port: UInt16, mode: String, host: String? = nil, watchdogSeconds: Double = 120, backtrace: Bool = false) throws {
        try self.init(arguments: [String(port), mode] + (host.map { [$0] } ?? []), watchdogSeconds: watchdogSeconds,
                      backtrace: backtrace)
    }

    /// A probe paging through a cluster ("HOST:PORT,HOST:PORT,...").
    init(servers: String, mode: String, watchdogSeconds: Double = 120) throws {
        try self.init(arguments: [servers, mode], watchdogSeconds: watchdogSeconds)
    }

    private init(arguments: [String], watchdogSeconds: Double, backtrace: Bool = false) throws {
        process.executableURL = URL(fileURLWithPath: BuiltProducts.path("farmem-failure-probe"))
        process.arguments = arguments
        // A crash must end the process at once, not start the Swift backtracer.
        var environment = ProcessInfo.processInfo.environment
        environment["SWIFT_BACKTRACE"] = backtrace ? nil : "enable=no"
        process.environment = environment
        process.standardOutput = output
        process.standardError = errors
        process.standardInput = input
        try process.run()
        let pid = process.processIdentifier, running = process
        // Its children too (a swift-backtrace it started would keep the
        // stderr pipe open, and `finish` waiting, after it died).
        DispatchQueue.global().asyncAfter(deadline: .now() + watchdogSeconds) { if running.isRunning { killTree(pid) } }
        readyLine = Self.readLine(output)
    }

    private static func readLine(_ pipe: Pipe) -> String {
        var line = ""
        while !line.hasSuffix("\n") {
            let byte = pipe.fileHandleForReading.readData(ofLength: 1)
            if byte.isEmpty { break }
            line += String(decoding: byte, as: UTF8.self)
        }
        return line
    }

    /// Lets the probe go on without waiting for it.
    func go() { input.fileHandleForWriting.write("go\n".data(using: .utf8)!) }

    /// The probe's next line on standard output ("" once it has exited).
    func nextLine() -> String { Self.readLine(output) }

    /// Lets the probe go on, waits for it, and returns its log (standard error).
    func proceed() -> String {
        go()
        return finish()
    }

    /// Waits for the probe and returns its log (standard error).
    func finish() -> String {
        process.waitUntilExit()
        return String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
    }
}

/// One GET /metrics from a metrics endpoint: the samples without labels, and
/// with them, as "name{labels}" -> value (comments skipped; a plain parser
/// for figures a test reads; MetricsTests checks the format with Prometheus' own).
func scrapeMetrics(host: String = "127.0.0.1", port: UInt16) throws -> [String: Double] {
    let socket = try TCPSocket.connect(to: TCPSocket.Endpoint(host: host, port: port), timeoutSeconds: 5)
    defer { socket.close() }
    try Array("GET /metrics HTTP/1.1\r\n\r\n".utf8).withUnsafeBytes { try socket.writeAll($0.baseAddress!, count: $0.count) }
    var reply: [UInt8] = []
    var byte: UInt8 = 0
    while (try? socket.readExactly(into: &byte, count: 1)) != nil { reply.append(byte) }
    var samples: [String: Double] = [:]
    for line in String(decoding: reply, as: UTF8.self).split(separator: "\n") where !line.hasPrefix("#") {
        let parts = line.split(separator: " ")
        if parts.count == 2, let value = Double(parts[1]) { samples[String(parts[0])] = value }
    }
    return samples
}

/// SIGKILLs a process and, first, its descendants (from /proc/PID/task/*/children).
func killTree(_ pid: pid_t) {
    let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
    for task in tasks {
        let children = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/children", encoding: .utf8)) ?? ""
        for child in children.split(separator: " ").compactMap({ pid_t($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) {
            killTree(child)
        }
    }
    kill(pid, SIGKILL)
}

/// Polls `done` every 50 ms for up to `seconds`; on time-out the test fails,
/// saying what was awaited and `context()` (the statistics, say).
func waitUntil(_ what: String, seconds: Double, context: () -> String = { "" }, _ done: () -> Bool) -> Bool {
    let deadline = Date().addingTimeInterval(seconds)
    while !done(), Date() < deadline { usleep(50_000) }
    if !done() { XCTFail("not within \(Int(seconds)) s: \(what): \(context())") }
    return done()
}

extension FarRegion {
    /// Writes every page with `pattern` from `threads` threads, pages
    /// interleaved so the threads fault side by side.
    func write(_ pattern: PagePattern, threads: Int = 1) {
        let base = UInt(bitPattern: baseAddress!)
        let pages = pageCount
        let workers = (0..<threads).map { t in
            PosixThread.spawn(name: "fill-\(t)") {
                for page in stride(from: t, to: pages, by: threads) {
                    _ = pattern.write(page: page, at: UnsafeMutableRawPointer(bitPattern: base + UInt(page) * 4096)!)
                }
            }
        }
        workers.forEach { $0.join() }
    }

    /// Pages (of `pages`, default all) whose content is not `pattern`'s, read from `threads` threads.
    func mismatches(_ pattern: PagePattern, pages: [Int]? = nil, threads: Int = 1) -> [Int] {
        let base = UInt(bitPattern: baseAddress!)
        let list = pages ?? Array(0..<pageCount)
        let bad = Mutex<[Int]>([])
        let workers = (0..<threads).map { t in
            PosixThread.spawn(name: "check-\(t)") {
                var local: [Int] = []
                for i in stride(from: t, to: list.count, by: threads)
                where !pattern.verify(page: list[i], at: UnsafeRawPointer(bitPattern: base + UInt(list[i]) * 4096)!).ok {
                    local.append(list[i])
                }
                bad.withLock { $0 += local }
            }
        }
        workers.forEach { $0.join() }
        return bad.withLock { $0.sorted() }
    }
}
