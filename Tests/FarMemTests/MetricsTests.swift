import FarMemProtocol
import FarMemSystem
import FarMemWorkloads
import FarMemory
import Foundation
import XCTest

/// farmemd --metrics-listen: a real server process, real requests, then a
/// scrape over HTTP checked by the Prometheus project's own Python parser
/// (Debian's python3-prometheus-client), not by a parser of ours.
final class MetricsTests: XCTestCase {
    private var server: ServerProcess!
    private var metricsPort: UInt16 = 0

    override func setUpWithError() throws {
        let portFile = FileManager.default.temporaryDirectory.appendingPathComponent("metrics-\(UUID().uuidString)").path
        server = try ServerProcess(capacity: "4MiB", extra: ["--metrics-listen", "127.0.0.1:0", "--metrics-port-file", portFile])
        defer { try? FileManager.default.removeItem(atPath: portFile) }
        metricsPort = try XCTUnwrap(UInt16(try String(contentsOfFile: portFile, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)))
    }
    override func tearDown() { server.stop() }

    /// One HTTP request; returns the status line and the body.
    private func get(_ request: String) throws -> (status: String, body: String) {
        let socket = try TCPSocket.connect(to: TCPSocket.Endpoint(host: "127.0.0.1", port: metricsPort), timeoutSeconds: 5)
        defer { socket.close() }
        try Array(request.utf8).withUnsafeBytes { try socket.writeAll($0.baseAddress!, count: $0.count) }
        var reply: [UInt8] = []
        var byte: UInt8 = 0
        while true {
            do { try socket.readExactly(into: &byte, count: 1) } catch { break }   // closed after the reply
            reply.append(byte)
        }
        let text = String(decoding: reply, as: UTF8.self)
        let parts = text.components(separatedBy: "\r\n\r\n")
        return (parts[0].components(separatedBy: "\r\n")[0], parts.dropFirst().joined(separator: "\r\n\r\n"))
    }

    /// Parses the exposition with prometheus_client; returns "name{labels}" -> value.
    private func parse(_ exposition: String) throws -> [String: Double] {
        let python = "/usr/bin/python3"
        guard FileManager.default.isExecutableFile(atPath: python) else { throw XCTSkip("no /usr/bin/python3") }
        let script = """
        import json, sys
        from prometheus_client.parser import text_string_to_metric_families
        out = {}
        for family in text_string_to_metric_families(sys.stdin.read()):
            for s in family.samples:
                labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
                out[s.name + ("{" + labels + "}" if labels else "")] = s.value
        print(json.dumps(out))
        """
        let process = Process()
        process.executableURL = URL(fileURLWithPath: python)
        process.arguments = ["-c", script]
        let input = Pipe(), output = Pipe(), errors = Pipe()
        process.standardInput = input
        process.standardOutput = output
        process.standardError = errors
        try process.run()
        input.fileHandleForWriting.write(exposition.data(using: .utf8)!)
        try input.fileHandleForWriting.close()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        let problems = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        if problems.contains("No module named") { throw XCTSkip("python3-prometheus-client is not installed (make deps installs it)") }
        XCTAssertEqual(process.terminationStatus, 0, "the Prometheus parser refused the exposition: \(problems)")
        return try JSONDecoder().decode([String: Double].self, from: data)
    }

    /// One scrape of `port` (the library's endpoint, say).
    private func scrape(port: UInt16) throws -> String {
        let saved = metricsPort
        metricsPort = port
        defer { metricsPort = saved }
        let (status, body) = try get("GET /metrics HTTP/1.1\r\n\r\n")
        XCTAssertEqual(status, "HTTP/1.1 200 OK")
        return body
    }

    /// The library's own `/metrics` (`metricsListen`; FARMEM_METRICS from C):
    /// a region four times the budget, written and read back, then scraped.
    func testTheLibraryServesItsStatisticsForPrometheus() throws {
        var configuration = FarMemoryConfiguration(server: server.endpoint, budgetBytes: 1 << 20)
        configuration.metricsListen = TCPSocket.Endpoint(host: "127.0.0.1", port: 0)
        let memory = try FarMemory(configuration: configuration)
        defer { memory.close() }
        let port = try XCTUnwrap(memory.metricsPort)
        let region = try memory.allocate(bytes: 4 << 20)
        let pattern = PagePattern(seed: 8)
        for page in 0..<region.pageCount { _ = pattern.write(page: page, at: region.baseAddress! + page * 4096) }
        let bad = (0..<region.pageCount).filter { !pattern.verify(page: $0, at: region.baseAddress! + $0 * 4096).ok }
        XCTAssertEqual(bad, [])
        let stats = memory.statistics
        let samples = try parse(try scrape(port: port))
        XCTAssertEqual(samples["farmem_budget_bytes"], Double(1 << 20))
        XCTAssertGreaterThanOrEqual(samples["farmem_faults_total"] ?? 0, Double(stats.faults))
        XCTAssertGreaterThanOrEqual(samples["farmem_evictions_total"] ?? 0, Double(stats.evictions))
        XCTAssertGreaterThan(samples["farmem_write_backs_total"] ?? 0, 0)
        XCTAssertGreaterThan(samples["farmem_fault_service_seconds_count"] ?? 0, 0)
        XCTAssertEqual(samples["farmem_fault_service_seconds_count"], samples["farmem_fault_service_seconds_bucket{le=\"+Inf\"}"])
        let buckets = samples.filter { $0.key.hasPrefix("farmem_fault_service_seconds_bucket{") }.sorted { bound($0.key) < bound($1.key) }.map(\.value)
        XCTAssertEqual(buckets, buckets.sorted(), "cumulative")
        memory.close()
        XCTAssertThrowsError(try scrape(port: port), "closed with the FarMemory")
    }

    /// A bucket sample's `le`, +Inf last.
    private func bound(_ key: String) -> Double {
        guard let start = key.range(of: "le=\"")?.upperBound, let end = key[start...].firstIndex(of: "\"") else { return .nan }
        let text = key[start..<end]
        return text == "+Inf" ? .infinity : Double(text) ?? .nan
    }

    func testMetricsCountRequestsErrorsAndCapacityAndParseAsPrometheusText() throws {
        let client = try RawClient(server.endpoint)
        XCTAssertNil(try client.hello().error)
        XCTAssertNil(try client.call(.createRegion, RegionSpec(regionID: 1, pageCount: 100, reservedPages: 10).encode()).error)
        for page in 0..<3 { XCTAssertNil(try client.call(.writePages, RawClient.writePayload(region: 1, pages: [UInt64(page)]) { _ in 1 }).error) }
        XCTAssertNil(try client.call(.readPages, PageBatchHeader(regionID: 1, pages: [0, 1]).encode()).error)
        XCTAssertEqual(try client.call(.readPages, PageBatchHeader(regionID: 9, pages: [0]).encode()).error, .noSuchRegion)

        // A request is counted once its reply is sent, which the client may
        // see first: scrape until the last one is in (bounded, 5 s).
        var samples: [String: Double] = [:]
        for _ in 0..<100 {
            let (status, body) = try get("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
            XCTAssertEqual(status, "HTTP/1.1 200 OK")
            samples = try parse(body)
            if samples["farmemd_request_errors_total{code=\"NO_SUCH_REGION\"}"] == 1 { break }
            usleep(50_000)
        }
        XCTAssertEqual(samples["farmemd_capacity_bytes"], 4 * 1024 * 1024)
        XCTAssertEqual(samples["farmemd_reserved_bytes"], 10 * 4096)
        XCTAssertEqual(samples["farmemd_stored_bytes"], 3 * 4096)
        XCTAssertEqual(samples["farmemd_sessions"], 1)
        XCTAssertEqual(samples["farmemd_requests_total{request=\"write_pages\"}"], 3)
        XCTAssertEqual(samples["farmemd_requests_total{request=\"read_pages\"}"], 2)
        XCTAssertEqual(samples["farmemd_request_errors_total{code=\"NO_SUCH_REGION\"}"], 1)
        XCTAssertEqual(samples["farmemd_pages_written_total"], 3)
        XCTAssertEqual(samples["farmemd_request_duration_seconds_count{request=\"write_pages\"}"], 3)
        XCTAssertEqual(samples["farmemd_request_duration_seconds_bucket{le=\"+Inf\",request=\"write_pages\"}"], 3)
        XCTAssertGreaterThan(samples["farmemd_request_duration_seconds_sum{request=\"write_pages\"}"] ?? 0, 0)
        XCTAssertGreaterThanOrEqual(samples["farmemd_connections_accepted_total"] ?? 0, 1)
        // Buckets never decrease, and the +Inf one is the count.
        let writeBuckets = samples.filter { $0.key.hasPrefix("farmemd_request_duration_seconds_bucket{") && $0.key.hasSuffix("request=\"write_pages\"}") }
        let ordered = writeBuckets.sorted { bound($0.key) < bound($1.key) }.map(\.value)
        XCTAssertEqual(ordered, ordered.sorted(), "cumulative: \(writeBuckets)")
        XCTAssertEqual(ordered.count, 14)

        XCTAssertEqual(try get("GET /other HTTP/1.1\r\n\r\n").status, "HTTP/1.1 404 Not Found")
        XCTAssertEqual(try get("POST /metrics HTTP/1.1\r\n\r\n").status, "HTTP/1.1 405 Method Not Allowed")
        XCTAssertEqual(try get("nonsense\r\n\r\n").status, "HTTP/1.1 400 Bad Request")
        // The page server is unaffected by scrapes.
        XCTAssertNil(try client.call(.stats, []).error)
    }

    /// `farmem top` against a live server and a dead address: two refreshes,
    /// the live one up with its page rate between them, the dead one down.
    func testFarmemTopShowsEachServerLiveAndADeadOneAsDown() throws {
        let dead = try TCPSocket.listen(on: TCPSocket.Endpoint(host: "127.0.0.1", port: 0))
        let deadPort = dead.localPort
        dead.close()   // nothing listens there now
        let top = Process()
        top.executableURL = URL(fileURLWithPath: BuiltProducts.path("farmem"))
        top.arguments = ["top", "--server", "\(server.endpoint),127.0.0.1:\(deadPort)", "--count", "2", "--interval", "3"]
        let output = Pipe()
        top.standardOutput = output
        try top.run()
        // The first refresh is out (each is written at once)...
        var first = Data()
        while !String(decoding: first, as: UTF8.self).contains("down: ") {
            let chunk = output.fileHandleForReading.availableData
            if chunk.isEmpty { break }
            first += chunk
        }
        // ...then pages are written, which the second refresh shows as a rate.
        let client = try RawClient(server.endpoint)
        XCTAssertNil(try client.hello().error)
        XCTAssertNil(try client.call(.createRegion, RegionSpec(regionID: 1, pageCount: 64).encode()).error)
        for page in 0..<32 { XCTAssertNil(try client.call(.writePages, RawClient.writePayload(region: 1, pages: [UInt64(page)]) { _ in 1 }).error) }
        let text = String(decoding: first + output.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        top.waitUntilExit()
        XCTAssertEqual(top.terminationStatus, 0, text)
        let refreshes = text.components(separatedBy: "\n\n")
        XCTAssertEqual(refreshes.count, 2, text)
        let live = refreshes.last?.split(separator: "\n").first { $0.hasPrefix("\(server.endpoint)") }.map(String.init) ?? ""
        XCTAssertTrue(live.contains(" up "), live)
        let columns = live.split(separator: " ", omittingEmptySubsequences: true)
        // server, state, capacity (2 words), reserved (2), stored (2), sessions, conns, read, written, rtt (2)
        XCTAssertGreaterThan(Double(columns[columns.count - 3]) ?? 0, 0, "a write rate: \(live)")
        XCTAssertTrue(text.contains("127.0.0.1:\(deadPort)  down: "), text)
    }
}
