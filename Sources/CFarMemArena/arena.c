// The far regions and their blocks (see farmem_arena.h).
#include "farmem_arena.h"
#include "metadata_memory.h"
#include <string.h>

#define PAGE 4096u

static void update_bounds(fm_arena_t *arena) {
    if (arena->count == 0) { arena->low = arena->high = 0; return; }
    arena->low = arena->regions[0].base;
    const fm_far_region_t *last = &arena->regions[arena->count - 1];
    arena->high = last->base + last->pages * PAGE;
}

int fm_arena_add_region(fm_arena_t *arena, uintptr_t base, uint64_t pages, void *handle, bool dedicated) {
    if (arena->count == arena->capacity) {
        size_t capacity = arena->capacity ? arena->capacity * 2 : 64;
        fm_far_region_t *regions = fm_metadata_resize(arena->regions, arena->capacity * sizeof *regions, capacity * sizeof *regions);
        if (!regions) return -1;
        arena->regions = regions;
        arena->capacity = capacity;
    }
    fm_far_region_t region = {.base = base, .pages = pages, .handle = handle, .dedicated = dedicated, .free_pages = pages};
    if (fm_runs_insert(&region.free, 0, pages, true) != 0) return -1;
    size_t at = 0;
    while (at < arena->count && arena->regions[at].base < base) at++;
    memmove(&arena->regions[at + 1], &arena->regions[at], (arena->count - at) * sizeof region);
    arena->regions[at] = region;
    arena->count++;
    update_bounds(arena);
    return 0;
}

void fm_arena_remove_region(fm_arena_t *arena, size_t index) {
    fm_runs_release_memory(&arena->regions[index].free);
    fm_runs_release_memory(&arena->regions[index].blocks);
    memmove(&arena->regions[index], &arena->regions[index + 1], (arena->count - index - 1) * sizeof(fm_far_region_t));
    arena->count--;
    update_bounds(arena);
}

long fm_arena_find(const fm_arena_t *arena, uintptr_t address) {
    if (address < arena->low || address >= arena->high) return -1;
    size_t low = 0, high = arena->count;
    while (low < high) {
        size_t middle = (low + high) / 2;
        if (arena->regions[middle].base <= address) low = middle + 1; else high = middle;
    }
    if (low == 0) return -1;
    const fm_far_region_t *region = &arena->regions[low - 1];
    return address < region->base + region->pages * PAGE ? (long)(low - 1) : -1;
}

/// Records [start, start + pages) of `region` as one block, taken from its free runs already.
static uintptr_t record_block(fm_far_region_t *region, uint64_t start, uint64_t pages) {
    if (fm_runs_insert(&region->blocks, start, pages, false) != 0) {
        fm_runs_insert(&region->free, start, pages, true);   // give the pages back
        return 0;
    }
    region->free_pages -= pages;
    return region->base + start * PAGE;
}

uintptr_t fm_arena_allocate(fm_arena_t *arena, uint64_t pages, uint64_t align) {
    for (size_t i = 0; i < arena->count; i++) {
        fm_far_region_t *region = &arena->regions[i];
        if (region->dedicated || region->free_pages < pages) continue;
        uint64_t start;
        if (fm_runs_take(&region->free, pages, align, region->base / PAGE, &start) == 0) return record_block(region, start, pages);
    }
    return 0;
}

uintptr_t fm_arena_allocate_dedicated(fm_arena_t *arena, size_t index) {
    fm_far_region_t *region = &arena->regions[index];
    if (region->free_pages != region->pages || fm_runs_take_at(&region->free, 0, region->pages) != 0) return 0;
    return record_block(region, 0, region->pages);
}

uint64_t fm_arena_block_pages(const fm_arena_t *arena, uintptr_t address) {
    long index = fm_arena_find(arena, address);
    if (index < 0) return 0;
    const fm_far_region_t *region = &arena->regions[index];
    if ((address - region->base) % PAGE) return 0;
    uint64_t page = (address - region->base) / PAGE;
    long block = fm_runs_find(&region->blocks, page);
    if (block < 0 || region->blocks.runs[block].start != page) return 0;
    return region->blocks.runs[block].count;
}

long fm_arena_release(fm_arena_t *arena, uintptr_t address, uint64_t pages, fm_arena_release_fn drop, void *context) {
    long index = fm_arena_find(arena, address);
    if (index < 0) return -1;
    fm_far_region_t *region = &arena->regions[index];
    uint64_t first = (address - region->base) / PAGE;
    uint64_t end = first + pages;
    if (end > region->pages) end = region->pages;
    // Every block that overlaps [first, end) loses the overlap; a block cut in
    // the middle keeps two pieces.
    size_t i = 0;
    while (i < region->blocks.count) {
        fm_run_t block = region->blocks.runs[i];
        uint64_t block_end = block.start + block.count;
        if (block_end <= first) { i++; continue; }
        if (block.start >= end) break;
        uint64_t cut_start = block.start > first ? block.start : first;
        uint64_t cut_end = block_end < end ? block_end : end;
        if (drop) drop(region->base + cut_start * PAGE, (cut_end - cut_start) * PAGE, context);
        // Carve from the blocks list by hand: shrink, trim or split this block.
        if (cut_start == block.start && cut_end == block_end) {
            memmove(&region->blocks.runs[i], &region->blocks.runs[i + 1], (region->blocks.count - i - 1) * sizeof(fm_run_t));
            region->blocks.count--;
        } else if (cut_start == block.start) {
            region->blocks.runs[i] = (fm_run_t){cut_end, block_end - cut_end};
            i++;
        } else if (cut_end == block_end) {
            region->blocks.runs[i].count = cut_start - block.start;
            i++;
        } else {
            region->blocks.runs[i].count = cut_start - block.start;
            if (fm_runs_insert(&region->blocks, cut_end, block_end - cut_end, false) != 0) {
                // No room to record the tail: it stays allocated (leaked, never reused).
                i++;
                continue;
            }
            i += 2;
        }
        if (fm_runs_insert(&region->free, cut_start, cut_end - cut_start, true) == 0) region->free_pages += cut_end - cut_start;
    }
    return region->dedicated && region->free_pages == region->pages ? index : -1;
}

int fm_arena_grow_in_place(fm_arena_t *arena, uintptr_t address, uint64_t old_pages, uint64_t new_pages) {
    if (new_pages <= old_pages) return -1;
    long index = fm_arena_find(arena, address);
    if (index < 0) return -1;
    fm_far_region_t *region = &arena->regions[index];
    uint64_t page = (address - region->base) / PAGE;
    long block = fm_runs_find(&region->blocks, page);
    if (block < 0 || region->blocks.runs[block].start != page || region->blocks.runs[block].count != old_pages) return -1;
    if (fm_runs_take_at(&region->free, page + old_pages, new_pages - old_pages) != 0) return -1;
    region->blocks.runs[block].count = new_pages;
    region->free_pages -= new_pages - old_pages;
    return 0;
}

int fm_arena_regrow_dedicated(fm_arena_t *arena, size_t index, uintptr_t base, uint64_t pages, uint64_t block_pages) {
    fm_far_region_t region = arena->regions[index];
    if (!region.dedicated || region.blocks.count != 1 || region.blocks.runs[0].start != 0 || block_pages > pages ||
        block_pages < region.blocks.runs[0].count) {
        return -1;
    }
    region.base = base;
    region.pages = pages;
    region.blocks.runs[0].count = block_pages;
    region.free.count = 0;   // its memory is kept for the tail below
    region.free_pages = 0;
    if (pages > block_pages && fm_runs_insert(&region.free, block_pages, pages - block_pages, true) == 0) {
        region.free_pages = pages - block_pages;
    }   // else the tail stays unusable until the block is freed: no harm
    // Out of its place, then back in by base (a moved region may sort elsewhere).
    memmove(&arena->regions[index], &arena->regions[index + 1], (arena->count - index - 1) * sizeof region);
    size_t at = 0;
    while (at < arena->count - 1 && arena->regions[at].base < base) at++;
    memmove(&arena->regions[at + 1], &arena->regions[at], (arena->count - 1 - at) * sizeof region);
    arena->regions[at] = region;
    update_bounds(arena);
    return 0;
}
