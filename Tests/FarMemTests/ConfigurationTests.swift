import FarMemSystem
import FarMemory
import XCTest

/// Server lists and replica defaults (pure logic).
final class ConfigurationTests: XCTestCase {
    func testServerListsParseAndBadEntriesAreNamed() throws {
        let list = try FarMemoryConfiguration.servers(parsing: "h1:7070, h2:7071 ,[::1]:7072").get()
        XCTAssertEqual(list.map(\.description), ["h1:7070", "h2:7071", "[::1]:7072"])
        for bad in ["h1:7070,h2", "h1:7070,,h2:7071", "h1:7070,h1:7070", ""] {
            guard case .failure(let error) = FarMemoryConfiguration.servers(parsing: bad) else { return XCTFail("'\(bad)' accepted") }
            XCTAssertTrue("\(error)".contains("invalid argument"), "\(error)")
        }
    }

    func testTwoCopiesByDefaultWithSeveralServersAndNeverMoreCopiesThanServers() {
        let a = TCPSocket.Endpoint(host: "a", port: 1), b = TCPSocket.Endpoint(host: "b", port: 1)
        XCTAssertEqual(FarMemoryConfiguration(server: a, budgetBytes: 1 << 20).replicas, 1)
        XCTAssertEqual(FarMemoryConfiguration(servers: [a, b], budgetBytes: 1 << 20).replicas, 2)
        XCTAssertEqual(FarMemoryConfiguration(servers: [a, b], replicas: 3, budgetBytes: 1 << 20).replicas, 2)
        XCTAssertEqual(FarMemoryConfiguration(servers: [a, b], replicas: 1, budgetBytes: 1 << 20).replicas, 1)
    }
}
