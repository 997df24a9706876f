// Kernel calls the tests need and Swift cannot make (variadic syscall()).
// Linked into the test bundle only, never into the library.
#pragma once
#include <stdint.h>

/// Pins [address, address + length) the way an application's io_uring fixed
/// buffer does (FOLL_PIN, held until unpinned): UFFDIO_MOVE then refuses the
/// pages with EBUSY. Returns a handle (>= 0) for fmt_unpin, or -errno.
int fmt_pin(uint64_t address, uint64_t length);

/// Drops the pin and closes the ring. Returns 0 or -errno.
int fmt_unpin(int handle);

/// What the shared-memory probe saw, in order.
enum { FMT_SHM_MISSING = 1, FMT_SHM_MINOR = 2, FMT_SHM_WRITE_PROTECT = 3, FMT_SHM_REMOVE = 4, FMT_SHM_MAX_EVENTS = 32 };
typedef struct {
    int kind;   // FMT_SHM_*
    int page;
} fmt_shm_event_t;

/// Runs a fixed sequence of accesses, madvise and fallocate calls on a memfd
/// registered with userfaultfd (missing, minor and write-protect modes), a
/// handler thread resolving each fault through a second mapping and
/// UFFDIO_CONTINUE (see shared_memory_probe.c). Fills `events` (at most
/// FMT_SHM_MAX_EVENTS) and the 7 bytes read in `values`. 0, or -errno.
int fmt_shared_memory_probe(fmt_shm_event_t *events, int *count, uint8_t *values);

/// What a forked child did (`fmt_fork_check_and_write`).
typedef struct {
    uint64_t fork_ns;     // fork() in the parent
    uint64_t check_ns;    // the child's check of every page
    uint64_t child_ns;    // from before fork() until the child was reaped
    int first_bad_page;   // -1: every page as expected
} fmt_fork_result_t;

/// The words a forked child writes: pass 1, then pass 2 over every page.
static inline uint64_t fmt_child_word(int page, int word, int pass) {
    return ((uint64_t)pass << 60) | ((uint64_t)(uint32_t)page << 16) | (uint64_t)word | 0xC0DEull << 40;
}

/// What the forked child does after checking the pages.
enum { FMT_CHILD_CHECKS = 0, FMT_CHILD_WRITES = 1, FMT_CHILD_UNMAPS = 2, FMT_CHILD_FORKS = 3 };

/// Forks. The child hashes every page of [base, base + pages * 4096) with
/// `hash` and compares with `expected`; then, by `mode`, writes every page
/// with `fmt_child_word` pass 1 and then pass 2 (each page read first), or
/// munmaps the range, and exits (0; 1 at the first page not as expected; 2
/// munmap failed). FMT_CHILD_FORKS: the child forks in turn, and the
/// grandchild checks (the child exits with its status: 3 if it was killed).
/// Returns the child's wait status, or -errno.
int fmt_fork_check_and_write(uint64_t base, int pages, const uint64_t *expected, uint64_t (*hash)(const void *),
                             int mode, fmt_fork_result_t *result);

/// Forks a child that waits until `fmt_release_and_wait`, then reads the byte
/// at `address` and exits with its low 7 bits (or dies of SIGBUS). Returns
/// the child's pid (and in `release_fd` the pipe that releases it), or -errno.
int fmt_fork_waiting(uint64_t address, int *release_fd);

/// Releases a `fmt_fork_waiting` child and returns its wait status, or -errno.
int fmt_release_and_wait(int pid, int release_fd);
