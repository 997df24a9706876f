// libfarmem-preload's parts (see README, "Unmodified programs"). Everything
// here is C: it runs inside the program's malloc, where the Swift runtime
// (which itself allocates) must never be entered except on purpose.
#ifndef FARMEM_PRELOAD_H
#define FARMEM_PRELOAD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

// --- real_functions.c: the allocator and mmap family the program had ------
typedef struct {
    void *(*malloc)(size_t);
    void (*free)(void *);
    void *(*calloc)(size_t, size_t);
    void *(*realloc)(void *, size_t);
    int (*posix_memalign)(void **, size_t, size_t);
    void *(*aligned_alloc)(size_t, size_t);
    void *(*memalign)(size_t, size_t);
    void *(*valloc)(size_t);
    void *(*pvalloc)(size_t);
    size_t (*malloc_usable_size)(void *);
} fm_allocator_t;

typedef struct {
    /// The program's allocator: the next definitions after this library's
    /// (libc's, or jemalloc's where the program links it).
    fm_allocator_t program;
    void *(*mmap)(void *, size_t, int, int, int, off_t);
    int (*munmap)(void *, size_t);
    void *(*mremap)(void *, size_t, size_t, int, ...);
    int (*madvise)(void *, size_t, int);
    int (*pthread_create)(void *, const void *, void *(*)(void *), void *);
} fm_real_functions_t;

/// Resolved on first use.
const fm_real_functions_t *fm_real(void);
/// Writes `message` (a line) to stderr and aborts: what an allocator does
/// when it cannot go on. Allocates nothing.
__attribute__((noreturn)) void fm_fatal(const char *message);
/// Whether the calling thread is resolving them now (dlsym may allocate:
/// those allocations come from a static buffer).
bool fm_real_resolving(void);
void *fm_bootstrap_allocate(size_t bytes);
bool fm_bootstrap_owns(const void *pointer);
size_t fm_bootstrap_size(const void *pointer);

// --- internal_thread.c: threads that must never get far memory ------------
/// Set on the library's own threads (pager, evictor, repair) and on a
/// program thread while it is inside the library: their allocations and
/// mappings go straight to the real functions.
extern __thread int fm_internal __attribute__((tls_model("initial-exec")));
static inline void fm_internal_enter(void) { fm_internal++; }
static inline void fm_internal_leave(void) { fm_internal--; }


// --- private_heap.c: the library's own heap (see there why) ---------------
void *fm_private_allocate(size_t bytes, size_t alignment);
void fm_private_free(void *pointer);
void *fm_private_reallocate(void *pointer, size_t bytes);
size_t fm_private_size(const void *pointer);
/// Whether `pointer` came from this heap (an address comparison).
bool fm_private_owns(const void *pointer);
void fm_private_after_fork_in_child(void);

/// Larger requests are refused as the real allocator would (no page count wraps).
#define FM_LARGEST_FAR ((size_t)1 << 46)

// --- startup.c: configuration and the library handle ----------------------
typedef enum {
    fm_state_starting = 0,   // before the constructor finished: all local
    fm_state_far = 1,        // big allocations go far
    fm_state_local = 2,      // FARMEM_FALLBACK=local after a failed start
    fm_state_forked = 3,     // a fork's child: the far regions are not mapped here
} fm_state_t;

extern _Atomic int fm_state;
extern size_t fm_min_alloc;
extern void *fm_library;   // farmem_t *

/// Whether an allocation of `bytes` by the calling thread goes far.
static inline bool fm_goes_far(size_t bytes) {
    return bytes >= fm_min_alloc && bytes <= FM_LARGEST_FAR && fm_state == fm_state_far && !fm_internal;
}

// --- far_heap.c: far blocks carved from far regions ------------------------
typedef enum {
    fm_far_block = 0,     // malloc and its relatives
    fm_far_mapping = 1,   // mmap
} fm_far_kind_t;

/// A far block of at least `bytes`, aligned to `alignment` (a power of two;
/// 0 for a page), reading as zeros; NULL if the servers refused (the caller
/// then allocates locally).
void *fm_far_allocate(size_t bytes, size_t alignment, fm_far_kind_t kind);
/// Whether `address` lies in far memory of that kind (cheap when it does not).
bool fm_far_contains(const void *address, fm_far_kind_t kind);
/// Whether [address, address + length) overlaps far memory of either kind.
bool fm_far_overlaps(const void *address, size_t length);
/// Frees the far malloc block at `address`. False if it is not a far block start.
bool fm_far_free(void *address);
/// The usable size of the far malloc block at `address`, 0 if none starts there.
size_t fm_far_block_size(const void *address);
/// realloc of a far block (local below the threshold).
void *fm_far_reallocate(void *address, size_t bytes);
/// munmap of a range that overlaps far mappings: the far parts are freed
/// (and read as zeros if touched again), the rest unmapped.
int fm_far_unmap(void *address, size_t length);
/// The program maps something of its own (MAP_FIXED) over far pages: they
/// leave the arena for good.
void fm_far_forget(void *address, size_t length);
/// mremap of a far mapping: shrinks, grows in place, or moves (MREMAP_MAYMOVE).
void *fm_far_remap(void *address, size_t old_length, size_t new_length, int flags);
/// In a fork's child: a fresh lock, and inaccessible placeholders where the
/// far regions were.
void fm_far_reserve_in_child(void);

typedef struct {
    uint64_t blocks_allocated;
    uint64_t bytes_allocated;   // all far blocks ever allocated
    uint64_t bytes_live;
    uint64_t bytes_peak;
    uint64_t regions;           // far regions in use now
    uint64_t local_fallbacks;   // big allocations the servers refused, served locally
} fm_far_counters_t;
fm_far_counters_t fm_far_counters(void);

#endif
