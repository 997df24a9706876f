// The far arena's bookkeeping, as pure logic: which pages of which far region
// are allocated, and which are free. libfarmem-preload carves the program's
// big allocations out of a few far regions with it (one server round trip per
// region, not per allocation). No locking and no system call here except the
// metadata's own memory, which comes straight from the mmap system call: this
// code runs inside malloc, so it must never call malloc.
#ifndef FARMEM_ARENA_H
#define FARMEM_ARENA_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/// A run of pages [start, start + count), in pages from a region's base.
typedef struct {
    uint64_t start;
    uint64_t count;
} fm_run_t;

/// Runs sorted by start, never overlapping. A free list merges neighbours; a
/// list of allocated blocks keeps each block apart.
typedef struct {
    fm_run_t *runs;
    size_t count;
    size_t capacity;
} fm_run_list_t;

/// Adds [start, start + count), which overlaps no run. With `merge`, joins
/// the runs it touches. 0, or -1 if the list's memory could not grow.
int fm_runs_insert(fm_run_list_t *list, uint64_t start, uint64_t count, bool merge);
/// Takes the first `count` pages whose address is a multiple of `align`
/// pages, the list's page 0 being page `base_page` of the address space
/// (first fit). 0 with *start set, or -1 if no run has room.
int fm_runs_take(fm_run_list_t *list, uint64_t count, uint64_t align, uint64_t base_page, uint64_t *start);
/// Takes exactly [start, start + count) if one run holds all of it. 0 or -1.
int fm_runs_take_at(fm_run_list_t *list, uint64_t start, uint64_t count);
/// The index of the run holding `page`, or -1.
long fm_runs_find(const fm_run_list_t *list, uint64_t page);
void fm_runs_release_memory(fm_run_list_t *list);

/// One far region the arena carves from.
typedef struct {
    uintptr_t base;
    uint64_t pages;
    /// The library's handle (farmem_region_t *).
    void *handle;
    /// A region made for one big allocation: returned to the server when freed.
    bool dedicated;
    fm_run_list_t free;
    fm_run_list_t blocks;
    uint64_t free_pages;
} fm_far_region_t;

/// The far regions, sorted by base.
typedef struct {
    fm_far_region_t *regions;
    size_t count;
    size_t capacity;
    /// Every far address lies in [low, high): a cheap first test for free().
    uintptr_t low, high;
} fm_arena_t;

/// Adds a region whose pages are all free. 0, or -1 if the table could not grow.
int fm_arena_add_region(fm_arena_t *arena, uintptr_t base, uint64_t pages, void *handle, bool dedicated);
/// Removes the region at `index` (its pages must all be free).
void fm_arena_remove_region(fm_arena_t *arena, size_t index);
/// The index of the region holding `address`, or -1.
long fm_arena_find(const fm_arena_t *arena, uintptr_t address);
/// `pages` pages aligned to `align` pages from a shared (not dedicated)
/// region. The address, or 0 if none has room (the caller adds a region).
uintptr_t fm_arena_allocate(fm_arena_t *arena, uint64_t pages, uint64_t align);
/// All of a dedicated region, which must be wholly free: one block.
uintptr_t fm_arena_allocate_dedicated(fm_arena_t *arena, size_t index);
/// The block that starts exactly at `address`: its length in pages, or 0.
uint64_t fm_arena_block_pages(const fm_arena_t *arena, uintptr_t address);

/// Called for each run of pages that becomes free, while it is still unusable
/// for others: the caller drops their contents (MADV_DONTNEED).
typedef void (*fm_arena_release_fn)(uintptr_t address, size_t bytes, void *context);
/// Frees every allocated page in [address, address + pages * 4096): whole
/// blocks (free) or parts of them (munmap of a part, a shrinking realloc).
/// Returns the index of a dedicated region that became wholly free, or -1.
long fm_arena_release(fm_arena_t *arena, uintptr_t address, uint64_t pages, fm_arena_release_fn drop, void *context);
/// Grows the block at `address` from `old_pages` to `new_pages` where the
/// pages after it are free. 0, or -1 (the caller moves the block).
int fm_arena_grow_in_place(fm_arena_t *arena, uintptr_t address, uint64_t old_pages, uint64_t new_pages);

/// A dedicated region grew (and may have moved): it now starts at `base`
/// and has `pages` pages, the first `block_pages` of them its one block, the
/// rest free. 0, or -1 if the region is not a dedicated one with one block
/// at its start.
int fm_arena_regrow_dedicated(fm_arena_t *arena, size_t index, uintptr_t base, uint64_t pages, uint64_t block_pages);

/// Parses a byte count: "1048576", "64KiB", "256MiB", "2GiB" (also K, M, G,
/// KB, MB, GB, all powers of 1024). 0 with *bytes set, or -1.
int fm_parse_bytes(const char *text, uint64_t *bytes);

#endif
