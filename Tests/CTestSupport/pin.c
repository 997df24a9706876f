#define _GNU_SOURCE
#include "cfarmemtestsupport.h"

#include <errno.h>
#include <linux/io_uring.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

int fmt_pin(uint64_t address, uint64_t length) {
    struct io_uring_params params;
    memset(&params, 0, sizeof params);
    int ring = (int)syscall(__NR_io_uring_setup, 1, &params);
    if (ring < 0) return -errno;
    struct iovec buffer = { .iov_base = (void *)(uintptr_t)address, .iov_len = length };
    // Registering a fixed buffer pins its pages (long-term FOLL_PIN) until unregistered.
    if (syscall(__NR_io_uring_register, ring, IORING_REGISTER_BUFFERS, &buffer, 1) < 0) {
        int error = errno;
        close(ring);
        return -error;
    }
    return ring;
}

int fmt_unpin(int handle) {
    if (syscall(__NR_io_uring_register, handle, IORING_UNREGISTER_BUFFERS, NULL, 0) < 0) {
        int error = errno;
        close(handle);
        return -error;
    }
    return close(handle) < 0 ? -errno : 0;
}
