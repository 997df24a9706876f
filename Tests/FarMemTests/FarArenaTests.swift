import CFarMemArena
import XCTest

/// The far arena's bookkeeping (Sources/CFarMemArena), which the preload
/// library runs inside malloc: runs, regions, blocks, and byte counts.
final class FarArenaTests: XCTestCase {
    private func runs(_ list: fm_run_list_t) -> [[UInt64]] {
        (0..<list.count).map { [list.runs[$0].start, list.runs[$0].count] }
    }

    func testFreeRunsMergeWithBothNeighboursAndBlocksStayApart() {
        var free = fm_run_list_t()
        defer { fm_runs_release_memory(&free) }
        XCTAssertEqual(fm_runs_insert(&free, 10, 5, true), 0)
        XCTAssertEqual(fm_runs_insert(&free, 20, 5, true), 0)
        XCTAssertEqual(runs(free), [[10, 5], [20, 5]])
        XCTAssertEqual(fm_runs_insert(&free, 15, 5, true), 0)
        XCTAssertEqual(runs(free), [[10, 15]], "the middle run joins both neighbours")
        var blocks = fm_run_list_t()
        defer { fm_runs_release_memory(&blocks) }
        fm_runs_insert(&blocks, 0, 4, false)
        fm_runs_insert(&blocks, 4, 4, false)
        XCTAssertEqual(runs(blocks), [[0, 4], [4, 4]], "adjacent blocks are two blocks")
        XCTAssertEqual(fm_runs_find(&blocks, 5), 1)
        XCTAssertEqual(fm_runs_find(&blocks, 8), -1)
    }

    func testTakeIsFirstFitHonoursAddressAlignmentAndSplitsARun() {
        var free = fm_run_list_t()
        defer { fm_runs_release_memory(&free) }
        fm_runs_insert(&free, 3, 100, true)
        var start: UInt64 = 0
        // Page 0 of the list is page 1000 of the address space: 16-page alignment means (start + 1000) % 16 == 0.
        XCTAssertEqual(fm_runs_take(&free, 8, 16, 1000, &start), 0)
        XCTAssertEqual((start + 1000) % 16, 0)
        XCTAssertEqual(start, 8)
        XCTAssertEqual(runs(free), [[3, 5], [16, 87]], "the run split around the block")
        XCTAssertEqual(fm_runs_take(&free, 200, 1, 0, &start), -1, "nothing holds 200 pages")
        XCTAssertEqual(fm_runs_take_at(&free, 20, 10), 0)
        XCTAssertEqual(runs(free), [[3, 5], [16, 4], [30, 73]])
        XCTAssertEqual(fm_runs_take_at(&free, 18, 4), -1, "pages 20 and 21 are taken")
    }

    func testManyRunsGrowTheListBeyondItsFirstCapacity() {
        var blocks = fm_run_list_t()
        defer { fm_runs_release_memory(&blocks) }
        for i in stride(from: 999, through: 0, by: -1) { XCTAssertEqual(fm_runs_insert(&blocks, UInt64(i) * 2, 1, false), 0) }
        XCTAssertEqual(blocks.count, 1000)
        XCTAssertTrue((1..<1000).allSatisfy { blocks.runs[$0 - 1].start < blocks.runs[$0].start }, "sorted")
    }

    func testArenaCarvesBlocksFreesPartsAndReturnsAnEmptiedDedicatedRegion() {
        var arena = fm_arena_t()
        let shared: UInt = 0x7000_0000_0000, dedicated: UInt = 0x6000_0000_0000
        XCTAssertEqual(fm_arena_add_region(&arena, shared, 1024, nil, false), 0)
        XCTAssertEqual(fm_arena_add_region(&arena, dedicated, 512, nil, true), 0)
        XCTAssertEqual(arena.low, dedicated)
        XCTAssertEqual(arena.high, shared + 1024 * 4096)
        let a = fm_arena_allocate(&arena, 256, 1), b = fm_arena_allocate(&arena, 256, 1)
        XCTAssertEqual(a, shared, "shared regions only: the dedicated one is not carved")
        XCTAssertEqual(b, shared + 256 * 4096)
        XCTAssertEqual(fm_arena_block_pages(&arena, a), 256)
        XCTAssertEqual(fm_arena_block_pages(&arena, a + 4096), 0, "not a block start")
        XCTAssertEqual(fm_arena_grow_in_place(&arena, a, 256, 300), -1, "b follows a")
        XCTAssertEqual(fm_arena_grow_in_place(&arena, b, 256, 700), 0)
        XCTAssertEqual(fm_arena_allocate(&arena, 100, 1), 0, "the shared region is full")

        // munmap of a block's middle: two pieces stay, the middle is dropped.
        final class Drops { var runs: [[UInt]] = [] }
        let dropped = Drops()
        let drop: fm_arena_release_fn = { address, bytes, context in
            Unmanaged<Drops>.fromOpaque(context!).takeUnretainedValue().runs.append([address, UInt(bytes)])
        }
        XCTAssertEqual(fm_arena_release(&arena, a + 100 * 4096, 50, drop, Unmanaged.passUnretained(dropped).toOpaque()), -1)
        XCTAssertEqual(dropped.runs, [[a + 100 * 4096, 50 * 4096]])
        XCTAssertEqual(fm_arena_block_pages(&arena, a), 100)
        XCTAssertEqual(fm_arena_block_pages(&arena, a + 150 * 4096), 106)
        XCTAssertEqual(fm_arena_allocate(&arena, 50, 1), a + 100 * 4096, "the hole is reused")

        let index = fm_arena_find(&arena, dedicated + 4096)
        XCTAssertEqual(fm_arena_allocate_dedicated(&arena, Int(index)), dedicated)
        XCTAssertEqual(fm_arena_release(&arena, dedicated, 512, nil, nil), index, "emptied: back to the server")
        fm_arena_remove_region(&arena, Int(index))
        XCTAssertEqual(fm_arena_find(&arena, dedicated), -1)
        XCTAssertEqual(arena.low, shared)
        while arena.count > 0 { fm_arena_remove_region(&arena, 0) }
    }

    func testADedicatedRegionThatGrewIsFoundAtItsNewPlaceWithItsBlockAndTail() {
        var arena = fm_arena_t()
        defer { while arena.count > 0 { fm_arena_remove_region(&arena, 0) } }
        let low: UInt = 0x5000_0000_0000, middle: UInt = 0x6000_0000_0000, high: UInt = 0x7000_0000_0000
        XCTAssertEqual(fm_arena_add_region(&arena, middle, 512, nil, true), 0)
        XCTAssertEqual(fm_arena_add_region(&arena, high, 1024, nil, false), 0)
        XCTAssertEqual(fm_arena_allocate_dedicated(&arena, 0), middle)
        XCTAssertEqual(fm_arena_regrow_dedicated(&arena, 1, high, 2048, 2048), -1, "a shared region is not regrown")
        // Shrunk to 100 pages, then grown (moved below the others) to 3,000 pages of which the block takes 2,000.
        XCTAssertEqual(fm_arena_release(&arena, middle + 100 * 4096, 412, nil, nil), -1)
        XCTAssertEqual(fm_arena_regrow_dedicated(&arena, 0, low, 3000, 2000), 0)
        XCTAssertEqual(fm_arena_find(&arena, middle), -1, "nothing at the old place")
        XCTAssertEqual(fm_arena_find(&arena, low + 2999 * 4096), 0, "kept in order by base")
        XCTAssertEqual(fm_arena_find(&arena, high), 1)
        XCTAssertEqual(arena.low, low)
        XCTAssertEqual(fm_arena_block_pages(&arena, low), 2000)
        XCTAssertEqual(arena.regions[0].free_pages, 1000)
        XCTAssertEqual(fm_arena_grow_in_place(&arena, low, 2000, 3000), 0, "its free tail is usable")
        XCTAssertEqual(fm_arena_regrow_dedicated(&arena, 0, low, 3000, 10), -1, "the block never shrinks here")
        XCTAssertEqual(fm_arena_release(&arena, low, 3000, nil, nil), 0, "emptied: back to the server")
    }

    func testByteCountsAcceptUnitsAndRefuseNonsense() {
        var bytes: UInt64 = 0
        for (text, expected) in [("4096", 4096), ("64KiB", 65536), ("256MiB", 256 << 20), ("2G", 2 << 30), ("1mb", 1 << 20), ("3TiB", 3 << 40)] as [(String, UInt64)] {
            XCTAssertEqual(fm_parse_bytes(text, &bytes), 0, text)
            XCTAssertEqual(bytes, expected, text)
        }
        for text in ["", "MiB", "12 MiB", "-5", "1.5GiB", "99999999999999999999", "20000000TiB", "7 lots"] {
            XCTAssertEqual(fm_parse_bytes(text, &bytes), -1, text)
        }
    }
}
