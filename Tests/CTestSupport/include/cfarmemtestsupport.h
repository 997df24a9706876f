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
