@testable import FarMemServer
import XCTest

/// The keys file's format (pure logic): what it accepts, and a clear,
/// line-numbered refusal for each kind of mistake.
final class TenantKeysTests: XCTestCase {
    func testParsesTenantsCommentsAndBlankLines() throws {
        let keys = try TenantKeys.parse("""
            # name   secret                 quota
            alpha    aaaaaaaaaaaaaaaa1      1GiB   # the first

            beta\tbbbbbbbbbbbbbbbb2\t64MiB\r
            """)
        XCTAssertEqual(keys.keys, [TenantKey(name: "alpha", secret: Array("aaaaaaaaaaaaaaaa1".utf8), quotaPages: 262_144),
                                   TenantKey(name: "beta", secret: Array("bbbbbbbbbbbbbbbb2".utf8), quotaPages: 16_384)])
        XCTAssertEqual(try TenantKeys.parse("").keys, [])
    }

    func testEachMistakeIsRefusedWithItsLine() {
        func refusal(_ text: String) -> TenantKeys.ParseError? {
            do { _ = try TenantKeys.parse(text); return nil } catch { return error }
        }
        let good = "alpha aaaaaaaaaaaaaaaa1 1GiB\n"
        XCTAssertEqual(refusal(good + "beta bbbbbbbbbbbbbbbb2")?.line, 2, "two fields")
        XCTAssertTrue(refusal(good + "alpha cccccccccccccccc3 1GiB")?.reason.contains("twice") ?? false)
        XCTAssertTrue(refusal(good + "beta aaaaaaaaaaaaaaaa1 1GiB")?.reason.contains("another tenant") ?? false)
        XCTAssertTrue(refusal("alpha short 1GiB")?.reason.contains("16 to 256") ?? false)
        XCTAssertTrue(refusal("alpha aaaaaaaaaaaaaaaa1 lots")?.reason.contains("quota 'lots'") ?? false)
        XCTAssertTrue(refusal("alpha aaaaaaaaaaaaaaaa1 100")?.reason.contains("at least 4096") ?? false)
        XCTAssertTrue(refusal("al\"pha aaaaaaaaaaaaaaaa1 1GiB")?.reason.contains("tenant name") ?? false, "names go into metrics labels")
        XCTAssertEqual(refusal("\n\nalpha aaaaaaaaaaaaaaaa1")?.description, "line 3: expected 'name secret quota', got 2 fields")
    }
}
