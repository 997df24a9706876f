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
