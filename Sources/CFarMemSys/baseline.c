// The floor of any userfaultfd pager on this machine: a region registered for
// MISSING faults, a handler thread that blocks in poll(), reads the fault and
// installs the page with UFFDIO_COPY from local memory. No network, no
// bookkeeping. FarMem's demo and benchmarks run this the same way, in the same
// run, and report their own latency next to it.
#define _GNU_SOURCE
#include "cfarmemsys.h"

#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

struct baseline_ctx {
    int uffd;
    int stop_fd;
    char *source;
};

static void *baseline_handler(void *arg) {
    struct baseline_ctx *ctx = arg;
    struct pollfd fds[2] = { { .fd = ctx->uffd, .events = POLLIN }, { .fd = ctx->stop_fd, .events = POLLIN } };
    for (;;) {
        if (poll(fds, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        if (fds[1].revents) break;
        struct uffd_msg msg;
        ssize_t n = read(ctx->uffd, &msg, sizeof msg);
        if (n != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) continue;
        struct uffdio_copy copy = {
            .dst = msg.arg.pagefault.address & ~4095ULL,
            .src = (uint64_t)(uintptr_t)ctx->source, .len = 4096, .mode = 0,
        };
        if (ioctl(ctx->uffd, UFFDIO_COPY, &copy) < 0 && errno == EEXIST) {
            struct uffdio_range range = { copy.dst, 4096 };
            ioctl(ctx->uffd, UFFDIO_WAKE, &range);
        }
    }
    return NULL;
}

/* A fresh anonymous region of `pages` small pages, registered for MISSING
 * faults on a new userfaultfd that has `features`. Returns 0, or -errno with
 * nothing left open. */
static int open_registered_region(uint64_t pages, uint64_t features, char **region_out, int *uffd_out) {
    size_t length = pages * 4096;
    char *region = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (region == MAP_FAILED) return -errno;
    madvise(region, length, MADV_NOHUGEPAGE);
    int uffd = fm_uffd_open(0);
    if (uffd < 0) uffd = fm_uffd_open_dev();
    int err = uffd < 0 ? uffd : fm_uffd_api(uffd, &features, NULL);
    if (err == 0) err = fm_uffd_register(uffd, (uint64_t)(uintptr_t)region, length, FM_UFFD_REGISTER_MODE_MISSING, NULL);
    if (err < 0) {
        if (uffd >= 0) close(uffd);
        munmap(region, length);
        return err;
    }
    *region_out = region;
    *uffd_out = uffd;
    return 0;
}

/* The page every fault is served from (its contents do not matter). */
static char *source_page(void) {
    char *page = aligned_alloc(4096, 4096);
    if (page) memset(page, 0, 4096);
    return page;
}

/* Reads one byte of every page in order, timing each access (each is a fault). */
static void touch_each_page(const char *region, uint64_t pages, uint64_t *latencies_ns, uint64_t *total_ns) {
    uint64_t start = fm_now_ns(), sum = 0;
    for (uint64_t i = 0; i < pages; i++) {
        uint64_t t0 = fm_now_ns();
        sum += *(volatile const uint8_t *)(region + i * 4096);
        latencies_ns[i] = fm_now_ns() - t0;
    }
    *total_ns = fm_now_ns() - start;
    fm_sink(sum);
}

// The same plain handler as a region any workload can run on: every first
// touch is a MISSING fault served from local memory (zeros), nothing is ever
// evicted. The floor of any userfaultfd pager on this machine.
struct fm_uffd_floor {
    struct baseline_ctx ctx;
    pthread_t thread;
    char *region;
    size_t length;
};

struct fm_uffd_floor *fm_uffd_floor_start(uint64_t pages, int *err) {
    struct fm_uffd_floor *f = calloc(1, sizeof *f);
    if (!f) { *err = -ENOMEM; return NULL; }
    f->length = pages * 4096;
    int rc = open_registered_region(pages, 0, &f->region, &f->ctx.uffd);
    if (rc < 0) { free(f); *err = rc; return NULL; }
    f->ctx.stop_fd = fm_eventfd();
    f->ctx.source = source_page();
    if (!f->ctx.source || pthread_create(&f->thread, NULL, baseline_handler, &f->ctx) != 0) {
        free(f->ctx.source);
        close(f->ctx.uffd);
        close(f->ctx.stop_fd);
        munmap(f->region, f->length);
        free(f);
        *err = -EAGAIN;
        return NULL;
    }
    return f;
}

void *fm_uffd_floor_base(struct fm_uffd_floor *f) { return f->region; }

void fm_uffd_floor_stop(struct fm_uffd_floor *f) {
    fm_eventfd_signal(f->ctx.stop_fd);
    pthread_join(f->thread, NULL);
    close(f->ctx.uffd);
    close(f->ctx.stop_fd);
    munmap(f->region, f->length);
    free(f->ctx.source);
    free(f);
}

// The handler blocked in poll(), timed one fault at a time.
int fm_baseline_uffd_roundtrip(uint64_t pages, uint64_t *latencies_ns, uint64_t *total_ns) {
    int err = 0;
    struct fm_uffd_floor *floor = fm_uffd_floor_start(pages, &err);
    if (!floor) return err;
    touch_each_page(floor->region, pages, latencies_ns, total_ns);
    fm_uffd_floor_stop(floor);
    return 0;
}

// Handler placement, measured at the floor: the same page service done by a
// handler thread that spins on a non-blocking read (no poll, no sleep), or by
// the faulting thread itself (UFFD_FEATURE_SIGBUS: the fault raises SIGBUS and
// the signal handler installs the page with UFFDIO_COPY, then the access is
// retried). Compare with fm_baseline_uffd_roundtrip (handler blocked in poll).
#include <signal.h>
#include <stdatomic.h>

static struct { int uffd; char *source; } sigbus_ctx;

static void sigbus_install(int sig, siginfo_t *info, void *unused) {
    (void)sig; (void)unused;
    struct uffdio_copy copy = {
        .dst = (uint64_t)(uintptr_t)info->si_addr & ~4095ULL,
        .src = (uint64_t)(uintptr_t)sigbus_ctx.source, .len = 4096, .mode = 0,
    };
    ioctl(sigbus_ctx.uffd, UFFDIO_COPY, &copy);   // EEXIST is fine: retrying the access succeeds
}

struct spin_ctx { int uffd; char *source; atomic_int stop; };

static void *spin_handler(void *arg) {
    struct spin_ctx *ctx = arg;
    struct uffd_msg msg;
    while (!atomic_load_explicit(&ctx->stop, memory_order_relaxed)) {
        if (read(ctx->uffd, &msg, sizeof msg) != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) continue;
        struct uffdio_copy copy = { .dst = msg.arg.pagefault.address & ~4095ULL, .src = (uint64_t)(uintptr_t)ctx->source, .len = 4096 };
        if (ioctl(ctx->uffd, UFFDIO_COPY, &copy) < 0 && errno == EEXIST) {
            struct uffdio_range range = { copy.dst, 4096 };
            ioctl(ctx->uffd, UFFDIO_WAKE, &range);
        }
    }
    return NULL;
}

int fm_baseline_uffd_placement(uint64_t pages, int mode, uint64_t *latencies_ns, uint64_t *total_ns) {
    char *region;
    int uffd;
    int err = open_registered_region(pages, mode == 2 ? FM_UFFD_FEATURE_SIGBUS : 0, &region, &uffd);
    if (err < 0) return err;
    char *source = source_page();
    struct sigaction old_action, action = { .sa_sigaction = sigbus_install, .sa_flags = SA_SIGINFO };
    struct spin_ctx spin = { .uffd = uffd, .source = source };
    pthread_t thread;
    if (!source) {
        err = -ENOMEM; goto out;
    } else if (mode == 2) {
        sigbus_ctx.uffd = uffd;
        sigbus_ctx.source = source;
        sigemptyset(&action.sa_mask);
        sigaction(SIGBUS, &action, &old_action);
    } else if (pthread_create(&thread, NULL, spin_handler, &spin) != 0) {
        err = -EAGAIN; goto out;
    }
    touch_each_page(region, pages, latencies_ns, total_ns);
    if (mode == 2) {
        sigaction(SIGBUS, &old_action, NULL);
    } else {
        atomic_store(&spin.stop, 1);
        pthread_join(thread, NULL);
    }
out:
    free(source);
    close(uffd);
    munmap(region, pages * 4096);
    return err;
}
