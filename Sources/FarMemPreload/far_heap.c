// Far blocks: the program's big allocations, carved from far regions.
//
// Allocations up to DEDICATED_BYTES share 64 MiB far regions (one server
// round trip per region, not per block); bigger ones get a region of their
// own, returned to the server when freed. The bookkeeping (CFarMemArena) is
// local memory, so no lock here is ever held across a fault on far memory.
// A freed run is dropped with MADV_DONTNEED before anyone can reuse it: the
// pager discards its pages and server copies (a REMOVE event), and the run
// reads as zeros again, which calloc relies on.
#define _GNU_SOURCE
#include "farmem_preload.h"
#include "farmem_arena.h"
#include "farmemory.h"
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define PAGE 4096u
#define SHARED_REGION_BYTES ((size_t)64 << 20)
#define DEDICATED_BYTES ((size_t)16 << 20)

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
/// One arena per kind: a pointer inside a far mapping belongs to the
/// program's allocator (jemalloc carves its objects from its mappings), a
/// pointer inside a far malloc block does not.
static fm_arena_t arenas[2];
static fm_far_counters_t counters;

static uint64_t pages_for(size_t bytes) { return (bytes + PAGE - 1) / PAGE; }

fm_far_counters_t fm_far_counters(void) {
    pthread_mutex_lock(&lock);
    fm_far_counters_t copy = counters;
    copy.regions = arenas[0].count + arenas[1].count;
    pthread_mutex_unlock(&lock);
    return copy;
}

/// A block grew by `pages` (or was allocated: see note_allocated). Under the lock.
static void note_grown(uint64_t pages) {
    counters.bytes_allocated += pages * PAGE;
    counters.bytes_live += pages * PAGE;
    if (counters.bytes_live > counters.bytes_peak) counters.bytes_peak = counters.bytes_live;
}

static void note_allocated(uint64_t pages) {
    counters.blocks_allocated++;
    note_grown(pages);
}

static void note_local_fallback(void) {
    pthread_mutex_lock(&lock);
    counters.local_fallbacks++;
    pthread_mutex_unlock(&lock);
}

static void warn_once(const char *why, size_t bytes) {
    static atomic_int warned;
    if (atomic_exchange(&warned, 1)) return;
    char message[512];
    int length = snprintf(message, sizeof message,
                          "farmem: a far allocation of %zu bytes was refused (%s); it and any other refused one are served from local memory\n",
                          bytes, why);
    if (length > 0) write(2, message, (size_t)length < sizeof message ? (size_t)length : sizeof message - 1);
}

/// A new far region from the library. The caller holds no lock: this is a
/// round trip to the servers.
static void *new_region(size_t bytes, farmem_region_t **handle) {
    char why[256] = "";
    fm_internal_enter();
    void *base = farmem_alloc(fm_library, bytes, handle, why, sizeof why);
    fm_internal_leave();
    if (!base) warn_once(why, bytes);
    return base;
}

static void free_region(farmem_region_t *handle) {
    fm_internal_enter();
    farmem_free(fm_library, handle);
    fm_internal_leave();
}

void *fm_far_allocate(size_t bytes, size_t alignment, fm_far_kind_t kind) {
    fm_arena_t *arena = &arenas[kind];
    if (bytes == 0) bytes = 1;
    uint64_t pages = pages_for(bytes);
    uint64_t align = alignment > PAGE ? alignment / PAGE : 1;
    if (bytes > DEDICATED_BYTES && align == 1) {
        farmem_region_t *handle;
        void *base = new_region(pages * PAGE, &handle);
        if (!base) { note_local_fallback(); return NULL; }
        pthread_mutex_lock(&lock);
        uintptr_t address = 0;
        if (fm_arena_add_region(arena, (uintptr_t)base, pages, handle, true) == 0) {
            long index = fm_arena_find(arena, (uintptr_t)base);
            address = fm_arena_allocate_dedicated(arena, (size_t)index);
            if (!address) fm_arena_remove_region(arena, (size_t)index);   // before its memory goes
        }
        if (address) note_allocated(pages);
        pthread_mutex_unlock(&lock);
        if (!address) { free_region(handle); note_local_fallback(); }
        return (void *)address;
    }
    if (pages + align - 1 > SHARED_REGION_BYTES / PAGE) {   // a large alignment on a large block: rare, served locally
        note_local_fallback();
        return NULL;
    }
    for (int attempt = 0; attempt < 2; attempt++) {
        pthread_mutex_lock(&lock);
        uintptr_t address = fm_arena_allocate(arena, pages, align);
        if (address) note_allocated(pages);
        pthread_mutex_unlock(&lock);
        if (address) return (void *)address;
        if (attempt == 1) break;
        // No shared region has room: add one (another thread may add one too;
        // both are used).
        farmem_region_t *handle;
        void *base = new_region(SHARED_REGION_BYTES, &handle);
        if (!base) break;
        pthread_mutex_lock(&lock);
        int added = fm_arena_add_region(arena, (uintptr_t)base, SHARED_REGION_BYTES / PAGE, handle, false);
        pthread_mutex_unlock(&lock);
        if (added != 0) { free_region(handle); break; }
    }
    note_local_fallback();
    return NULL;
}

bool fm_far_contains(const void *address, fm_far_kind_t kind) {
    fm_arena_t *arena = &arenas[kind];
    uintptr_t at = (uintptr_t)address;
    // A racy first look (the bounds only change under the lock); a pointer
    // the program owns cannot be in a region being added or removed.
    if (at < __atomic_load_n(&arena->low, __ATOMIC_RELAXED) || at >= __atomic_load_n(&arena->high, __ATOMIC_RELAXED)) return false;
    pthread_mutex_lock(&lock);
    bool inside = fm_arena_find(arena, at) >= 0;
    pthread_mutex_unlock(&lock);
    return inside;
}

bool fm_far_overlaps(const void *address, size_t length) {
    uintptr_t start = (uintptr_t)address, end = start + length;
    bool overlaps = false;
    for (int kind = 0; kind < 2 && !overlaps; kind++) {
        fm_arena_t *arena = &arenas[kind];
        if (end <= __atomic_load_n(&arena->low, __ATOMIC_RELAXED) || start >= __atomic_load_n(&arena->high, __ATOMIC_RELAXED)) continue;
        pthread_mutex_lock(&lock);
        for (size_t i = 0; i < arena->count && !overlaps; i++) {
            overlaps = arena->regions[i].base < end && arena->regions[i].base + arena->regions[i].pages * PAGE > start;
        }
        pthread_mutex_unlock(&lock);
    }
    return overlaps;
}

static void drop_pages(uintptr_t address, size_t bytes, void *context) {
    (void)context;
    if (fm_real()->madvise((void *)address, bytes, MADV_DONTNEED) == 0) return;
    // MADV_DONTNEED refuses locked pages (EINVAL): the program mlock'd or
    // mprotect'ed the block it freed. The next owner gets them unlocked,
    // read-write and zeroed, as from a fresh mapping.
    munlock((void *)address, bytes);
    mprotect((void *)address, bytes, PROT_READ | PROT_WRITE);
    if (fm_real()->madvise((void *)address, bytes, MADV_DONTNEED) != 0) memset((void *)address, 0, bytes);
}

/// Frees the far pages of [address, address + bytes) in the region holding
/// `address`, under the lock; a dedicated region that became empty is taken
/// out of the arena and returned (the caller frees it on the servers).
static farmem_region_t *release_locked(fm_arena_t *arena, uintptr_t address, size_t bytes) {
    long index = fm_arena_find(arena, address);
    if (index < 0) return NULL;
    fm_far_region_t *region = &arena->regions[index];
    uint64_t live_before = region->pages - region->free_pages;
    // A dedicated region wholly freed is returned to the server: its pages
    // need no MADV_DONTNEED first.
    bool whole = region->dedicated && address == region->base && pages_for(bytes) >= region->pages;
    long emptied = fm_arena_release(arena, address, pages_for(bytes), whole ? NULL : drop_pages, NULL);
    region = &arena->regions[index];
    counters.bytes_live -= (live_before - (region->pages - region->free_pages)) * PAGE;
    if (emptied < 0) return NULL;
    farmem_region_t *handle = region->handle;
    fm_arena_remove_region(arena, (size_t)emptied);
    return handle;
}

bool fm_far_free(void *address) {
    fm_arena_t *arena = &arenas[fm_far_block];
    if (!fm_far_contains(address, fm_far_block)) return false;
    if (fm_state == fm_state_forked) return true;   // not mapped in a fork's child
    pthread_mutex_lock(&lock);
    uint64_t pages = fm_arena_block_pages(arena, (uintptr_t)address);
    if (pages == 0) {   // glibc aborts on an invalid pointer too
        pthread_mutex_unlock(&lock);
        fm_fatal("farmem: free() of a pointer inside far memory that no far allocation starts at\n");
    }
    farmem_region_t *emptied = release_locked(arena, (uintptr_t)address, pages * PAGE);
    pthread_mutex_unlock(&lock);
    if (emptied) free_region(emptied);
    return true;
}

static size_t block_size(const void *address, fm_far_kind_t kind) {
    fm_arena_t *arena = &arenas[kind];
    if (!fm_far_contains(address, kind)) return 0;
    pthread_mutex_lock(&lock);
    uint64_t pages = fm_arena_block_pages(arena, (uintptr_t)address);
    pthread_mutex_unlock(&lock);
    return pages * PAGE;
}

size_t fm_far_block_size(const void *address) { return block_size(address, fm_far_block); }

/// Shrinks the block at `address` (its tail is freed) or grows it where the
/// pages after it are free. False if it must move.
static bool resized_in_place(fm_arena_t *arena, void *address, uint64_t old_pages, uint64_t new_pages) {
    if (new_pages == old_pages) return true;
    pthread_mutex_lock(&lock);
    farmem_region_t *emptied = NULL;
    bool done = true;
    if (new_pages < old_pages) {
        emptied = release_locked(arena, (uintptr_t)address + new_pages * PAGE, (old_pages - new_pages) * PAGE);
    } else if (fm_arena_grow_in_place(arena, (uintptr_t)address, old_pages, new_pages) == 0) {
        note_grown(new_pages - old_pages);
    } else {
        done = false;
    }
    pthread_mutex_unlock(&lock);
    if (emptied) free_region(emptied);   // cannot happen: the block's head stays
    return done;
}

/// Grows a block that has a dedicated region to itself past that region's
/// end without reading a page of it: the library extends the region (a new
/// part after it, the old pages moved with mremap if the address space
/// after it is taken; see FarRegion.grow). Its address, or NULL if it
/// cannot: the block is then unchanged and where it was.
static void *grown_dedicated(fm_arena_t *arena, void *address, uint64_t new_pages, bool may_move) {
    // Under the lock throughout: until the arena knows the new place, the old
    // one must not look free to anyone (a mapping the kernel puts there
    // meanwhile would be taken for far memory). Safe: the library's threads
    // never take it, and the pager reads the mremap's event without it.
    pthread_mutex_lock(&lock);
    long index = fm_arena_find(arena, (uintptr_t)address);
    fm_far_region_t *region = index >= 0 ? &arena->regions[index] : NULL;
    if (!region || !region->dedicated || region->base != (uintptr_t)address || region->pages >= new_pages) {
        pthread_mutex_unlock(&lock);
        return NULL;
    }
    uint64_t block_pages = fm_arena_block_pages(arena, (uintptr_t)address);
    char why[256] = "";
    void *base = NULL;
    fm_internal_enter();
    int grown = farmem_grow(fm_library, region->handle, new_pages * PAGE, may_move, &base, why, sizeof why);
    fm_internal_leave();
    // A failed grow leaves the region where it was (the library moves it back).
    if (grown == 0) {
        // Cannot fail for a dedicated region with its block at its start (checked above).
        if (fm_arena_regrow_dedicated(arena, (size_t)index, (uintptr_t)base, new_pages, new_pages) != 0) {
            fm_fatal("farmem: internal error: a grown far region could not be recorded\n");
        }
        note_grown(new_pages - block_pages);
    } else {
        base = NULL;
    }
    pthread_mutex_unlock(&lock);
    if (grown != 0) warn_once(why, new_pages * PAGE);
    return base;
}

void *fm_far_reallocate(void *address, size_t bytes) {
    fm_arena_t *arena = &arenas[fm_far_block];
    size_t old_bytes = fm_far_block_size(address);
    if (old_bytes == 0) fm_fatal("farmem: realloc() of a pointer inside far memory that no far allocation starts at\n");
    if (bytes > FM_LARGEST_FAR) { errno = ENOMEM; return NULL; }   // the block stays
    uint64_t old_pages = old_bytes / PAGE, new_pages = pages_for(bytes ? bytes : 1);
    if (fm_state == fm_state_far && bytes >= fm_min_alloc) {
        if (resized_in_place(arena, address, old_pages, new_pages)) return address;
        void *grown = grown_dedicated(arena, address, new_pages, true);
        if (grown) return grown;
    }
    // Moves: to a new far block, or to local memory below the threshold.
    void *moved = fm_goes_far(bytes) ? fm_far_allocate(bytes, 0, fm_far_block) : NULL;
    if (!moved) moved = fm_real()->program.malloc(bytes);
    if (!moved) return NULL;   // errno is ENOMEM; the old block stays
    memcpy(moved, address, old_bytes < bytes ? old_bytes : bytes);
    fm_far_free(address);
    return moved;
}

int fm_far_unmap(void *address, size_t length) {
    fm_arena_t *arena = &arenas[fm_far_mapping];
    if ((uintptr_t)address % PAGE) { errno = EINVAL; return -1; }   // as munmap(2)
    uintptr_t at = (uintptr_t)address;
    uintptr_t end = ((uintptr_t)address + length + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
    if (fm_state == fm_state_forked) return fm_real()->munmap(address, length);
    while (at < end) {
        pthread_mutex_lock(&lock);
        long index = fm_arena_find(arena, at);
        uintptr_t next_far = end;
        if (index < 0) {
            // Local pages up to the next far region (or the end).
            for (size_t i = 0; i < arena->count; i++) {
                if (arena->regions[i].base > at) { next_far = arena->regions[i].base < end ? arena->regions[i].base : end; break; }
            }
            pthread_mutex_unlock(&lock);
            if (fm_real()->munmap((void *)at, next_far - at) != 0) return -1;
            at = next_far;
            continue;
        }
        uintptr_t region_end = arena->regions[index].base + arena->regions[index].pages * PAGE;
        uintptr_t stop = region_end < end ? region_end : end;
        farmem_region_t *emptied = release_locked(arena, at, stop - at);
        pthread_mutex_unlock(&lock);
        if (emptied) free_region(emptied);
        at = stop;
    }
    return 0;
}

void fm_far_forget(void *address, size_t length) {
    uintptr_t at = (uintptr_t)address & ~(uintptr_t)(PAGE - 1);
    uintptr_t end = ((uintptr_t)address + length + PAGE - 1) & ~(uintptr_t)(PAGE - 1);
    pthread_mutex_lock(&lock);
    for (int kind = 0; kind < 2; kind++) {
        fm_arena_t *arena = &arenas[kind];
        for (size_t i = 0; i < arena->count; i++) {
            fm_far_region_t *region = &arena->regions[i];
            uintptr_t from = at > region->base ? at : region->base;
            uintptr_t to = end < region->base + region->pages * PAGE ? end : region->base + region->pages * PAGE;
            if (from >= to) continue;
            fm_arena_release(arena, from, (to - from) / PAGE, NULL, NULL);
            region = &arena->regions[i];
            // Released pages merged into one free run: take it out for good.
            if (fm_runs_take_at(&region->free, (from - region->base) / PAGE, (to - from) / PAGE) == 0) {
                region->free_pages -= (to - from) / PAGE;
            }
        }
    }
    pthread_mutex_unlock(&lock);
}

void *fm_far_remap(void *address, size_t old_length, size_t new_length, int flags) {
    fm_arena_t *arena = &arenas[fm_far_mapping];
    // Only whole far mappings move or resize; MREMAP_FIXED and
    // MREMAP_DONTUNMAP are not supported there (see README).
    if (flags & ~MREMAP_MAYMOVE) { errno = EINVAL; return MAP_FAILED; }
    size_t old_bytes = block_size(address, fm_far_mapping);
    if (old_bytes == 0 || pages_for(old_length) * PAGE != old_bytes || new_length == 0) { errno = EINVAL; return MAP_FAILED; }
    if (new_length > FM_LARGEST_FAR) { errno = ENOMEM; return MAP_FAILED; }
    uint64_t old_pages = old_bytes / PAGE, new_pages = pages_for(new_length);
    if (resized_in_place(arena, address, old_pages, new_pages)) return address;
    void *grown = grown_dedicated(arena, address, new_pages, flags & MREMAP_MAYMOVE);
    if (grown) return grown;
    if (!(flags & MREMAP_MAYMOVE)) { errno = ENOMEM; return MAP_FAILED; }
    void *moved = fm_far_allocate(new_length, 0, fm_far_mapping);
    if (!moved) { errno = ENOMEM; return MAP_FAILED; }
    memcpy(moved, address, old_bytes);
    fm_far_unmap(address, old_bytes);
    return moved;
}

void fm_far_reserve_in_child(void) {
    // The lock is not held across fork: a thread of jemalloc's that holds its
    // own lock while mapping (which comes here) would deadlock a fork whose
    // prefork handlers hold both. A thread that held it at the fork does not
    // exist in the child; the tables it was changing are read as they are
    // (see README, fork).
    pthread_mutex_init(&lock, NULL);
    // The regions are MADV_DONTFORK: the child has nothing mapped there. An
    // inaccessible placeholder keeps the child's own mappings away, so a far
    // pointer it touches faults (SIGSEGV) instead of reading someone else's data.
    for (int kind = 0; kind < 2; kind++) {
        for (size_t i = 0; i < arenas[kind].count; i++) {
            syscall(SYS_mmap, (void *)arenas[kind].regions[i].base, arenas[kind].regions[i].pages * PAGE, PROT_NONE,
                    MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_FIXED_NOREPLACE, -1, 0);
        }
    }
}
