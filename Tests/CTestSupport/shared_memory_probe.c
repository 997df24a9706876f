// The kernel behaviour a memfd (shmem) far region rests on, observed on a
// real memfd: which fault each access raises and what resolves it. A handler
// thread answers every fault the way the pager would for shared memory:
// a page the page cache lacks is written through a second, unregistered
// mapping of the same memfd, then mapped with UFFDIO_CONTINUE.
#define _GNU_SOURCE
#include "cfarmemtestsupport.h"
#include <errno.h>
#include <fcntl.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#ifndef UFFD_FEATURE_WP_HUGETLBFS_SHMEM
#define UFFD_FEATURE_WP_HUGETLBFS_SHMEM (1 << 12)
#endif
#ifndef UFFDIO_CONTINUE_MODE_WP
#define UFFDIO_CONTINUE_MODE_WP ((__u64)1 << 1)
#endif
#define PAGE 4096
#define PAGES 8

typedef struct {
    int uffd;
    uint8_t *registered, *alias;
    _Atomic int stop;
    _Atomic int count;
    fmt_shm_event_t events[FMT_SHM_MAX_EVENTS];
    _Atomic int failed;   // an ioctl of the handler's failed: -errno
} probe_t;

static void note(probe_t *p, int kind, int page) {
    int i = atomic_fetch_add(&p->count, 1);
    if (i < FMT_SHM_MAX_EVENTS) p->events[i] = (fmt_shm_event_t){kind, page};
}

static void *handle(void *context) {
    probe_t *p = context;
    while (!atomic_load(&p->stop)) {
        struct pollfd ready = {p->uffd, POLLIN, 0};
        if (poll(&ready, 1, 10) <= 0) continue;
        struct uffd_msg message;
        if (read(p->uffd, &message, sizeof message) != sizeof message) continue;
        if (message.event == UFFD_EVENT_REMOVE) {
            note(p, FMT_SHM_REMOVE, (int)((message.arg.remove.start - (uintptr_t)p->registered) / PAGE));
            continue;
        }
        if (message.event != UFFD_EVENT_PAGEFAULT) continue;
        uint64_t address = message.arg.pagefault.address & ~(uint64_t)(PAGE - 1);
        int page = (int)((address - (uintptr_t)p->registered) / PAGE);
        uint64_t flags = message.arg.pagefault.flags;
        int rc;
        if (flags & UFFD_PAGEFAULT_FLAG_WP) {
            note(p, FMT_SHM_WRITE_PROTECT, page);
            struct uffdio_writeprotect unprotect = {{address, PAGE}, 0};
            rc = ioctl(p->uffd, UFFDIO_WRITEPROTECT, &unprotect);
        } else {
            bool minor = flags & UFFD_PAGEFAULT_FLAG_MINOR;
            note(p, minor ? FMT_SHM_MINOR : FMT_SHM_MISSING, page);
            // Missing from the page cache: fill it through the alias (the
            // pager receives the page there). A read maps it write-protected.
            if (!minor) memset(p->alias + page * PAGE, 0xA0 + page, PAGE);
            struct uffdio_continue map = {{address, PAGE}, (flags & UFFD_PAGEFAULT_FLAG_WRITE) ? 0 : UFFDIO_CONTINUE_MODE_WP, 0};
            rc = ioctl(p->uffd, UFFDIO_CONTINUE, &map);
        }
        if (rc != 0) atomic_store(&p->failed, -errno);
    }
    return NULL;
}

int fmt_shared_memory_probe(fmt_shm_event_t *events, int *count, uint8_t *values) {
    probe_t *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    int result = 0;
    int memfd = memfd_create("farmem-probe", MFD_CLOEXEC);
    if (memfd < 0 || ftruncate(memfd, PAGES * PAGE) != 0) { result = -errno; goto out; }
    p->registered = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    p->alias = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd, 0);
    p->uffd = (int)syscall(SYS_userfaultfd, O_CLOEXEC | O_NONBLOCK);
    if (p->registered == MAP_FAILED || p->alias == MAP_FAILED || p->uffd < 0) { result = -errno; goto out; }
    struct uffdio_api api = {UFFD_API, UFFD_FEATURE_MISSING_SHMEM | UFFD_FEATURE_MINOR_SHMEM | UFFD_FEATURE_EVENT_REMOVE |
                                           UFFD_FEATURE_PAGEFAULT_FLAG_WP | UFFD_FEATURE_WP_HUGETLBFS_SHMEM, 0};
    struct uffdio_register reg = {{(uintptr_t)p->registered, PAGES * PAGE},
                                  UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_MINOR | UFFDIO_REGISTER_MODE_WP, 0};
    if (ioctl(p->uffd, UFFDIO_API, &api) != 0 || ioctl(p->uffd, UFFDIO_REGISTER, &reg) != 0) { result = -errno; goto out; }
    pthread_t handler;
    if (pthread_create(&handler, NULL, handle, p) != 0) { result = -EAGAIN; goto out; }
    volatile uint8_t *r = p->registered;
    int v = 0;
    values[v++] = r[0];                 // 1. missing: filled through the alias, mapped write-protected
    r[0] = 0x11;                        // 2. write-protect fault, then the write lands
    values[v++] = p->alias[0];          //    ... in the page cache: the alias sees it
    struct uffdio_writeprotect protect = {{(uintptr_t)p->registered, PAGE}, UFFDIO_WRITEPROTECT_MODE_WP};
    ioctl(p->uffd, UFFDIO_WRITEPROTECT, &protect);
    r[0] = 0x12;                        // 3. protected again by the pager: the next write faults
    r[PAGE] = 0x21;                     // 4. a write that misses: mapped writable, no second fault
    madvise((void *)r + PAGE, PAGE, MADV_DONTNEED);   // 5. REMOVE; the page cache keeps it
    values[v++] = r[PAGE];              //    ... so the next access is a MINOR fault, data kept
    madvise((void *)r, PAGE, MADV_REMOVE);           // 6. REMOVE; the page cache loses it
    values[v++] = r[0];                 //    ... so the next access is MISSING (refilled: 0xA0)
    values[v++] = r[2 * PAGE];          // 7. missing (0xA2)
    fallocate(memfd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 2 * PAGE, PAGE);   // no event
    values[v++] = r[2 * PAGE];          //    ... and the next access is MISSING again
    p->alias[3 * PAGE] = 0x33;          // 8. in the page cache before any access: MINOR
    values[v++] = r[3 * PAGE];
    atomic_store(&p->stop, 1);
    pthread_join(handler, NULL);
    int n = atomic_load(&p->count);
    *count = n < FMT_SHM_MAX_EVENTS ? n : FMT_SHM_MAX_EVENTS;
    memcpy(events, p->events, (size_t)*count * sizeof *events);
    result = atomic_load(&p->failed);
out:
    if (p->uffd > 0) close(p->uffd);
    if (p->registered && p->registered != MAP_FAILED) munmap(p->registered, PAGES * PAGE);
    if (p->alias && p->alias != MAP_FAILED) munmap(p->alias, PAGES * PAGE);
    if (memfd >= 0) close(memfd);
    free(p);
    return result;
}
