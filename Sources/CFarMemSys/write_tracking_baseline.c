// What tracking a page's first write costs here, two ways (the "fast on real
// programs" issue asks to measure before choosing):
// - synchronous uffd-wp: the write faults, a handler thread blocked in poll()
//   reads the fault and clears the protection (UFFDIO_WRITEPROTECT), the
//   writer resumes: what FarMem does for a page installed clean;
// - UFFD_FEATURE_WP_ASYNC: the kernel clears the protection itself and marks
//   the page written; a later PAGEMAP_SCAN (PM_SCAN_WP_MATCHING, category
//   PAGE_IS_WRITTEN) lists the written pages and protects them again.
// Anonymous memory, populated first, every page protected, one write per page.
#define _GNU_SOURCE
#include "cfarmemsys.h"

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>
#include <linux/userfaultfd.h>

// Newer uapi (6.7) than Debian 12's headers.
#ifndef PAGEMAP_SCAN
struct page_region { uint64_t start, end, categories; };
struct pm_scan_arg {
    uint64_t size, flags, start, end, walk_end, vec, vec_len, max_pages;
    uint64_t category_inverted, category_mask, category_anyof_mask, return_mask;
};
#define PAGEMAP_SCAN _IOWR('f', 16, struct pm_scan_arg)
#define PM_SCAN_WP_MATCHING (1 << 0)
#define PM_SCAN_CHECK_WPASYNC (1 << 1)
#define PAGE_IS_WRITTEN (1 << 1)
#endif
#define WT_FEATURE_WP_ASYNC (1ULL << 15)

static uint64_t wt_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static uint64_t median(uint64_t *values, uint64_t count) {
    qsort(values, count, sizeof *values, cmp_u64);
    return values[count / 2];
}

// A populated anonymous region registered for write-protect on a new
// userfaultfd with `features`, every page protected.
static int protected_region(uint64_t pages, uint64_t features, char **region_out, int *uffd_out) {
    size_t length = pages * 4096;
    char *region = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (region == MAP_FAILED) return -errno;
    madvise(region, length, MADV_NOHUGEPAGE);
    for (uint64_t i = 0; i < pages; i++) region[i * 4096] = 1;
    int uffd = fm_uffd_open(0);
    if (uffd < 0) uffd = fm_uffd_open_dev();
    features |= FM_UFFD_FEATURE_PAGEFAULT_FLAG_WP;
    int err = uffd < 0 ? uffd : fm_uffd_api(uffd, &features, NULL);
    if (err == 0) err = fm_uffd_register(uffd, (uint64_t)(uintptr_t)region, length, FM_UFFD_REGISTER_MODE_WP, NULL);
    if (err == 0) {
        struct uffdio_writeprotect wp = { { (uint64_t)(uintptr_t)region, length }, UFFDIO_WRITEPROTECT_MODE_WP };
        if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp) < 0) err = -errno;
    }
    if (err < 0) {
        if (uffd >= 0) close(uffd);
        munmap(region, length);
        return err;
    }
    *region_out = region;
    *uffd_out = uffd;
    return 0;
}

struct wp_handler { int uffd, stop_fd; };

static void *wp_handler_thread(void *arg) {
    struct wp_handler *h = arg;
    struct pollfd fds[2] = { { .fd = h->uffd, .events = POLLIN }, { .fd = h->stop_fd, .events = POLLIN } };
    for (;;) {
        if (poll(fds, 2, -1) < 0) { if (errno == EINTR) continue; break; }
        if (fds[1].revents) break;
        struct uffd_msg msg;
        if (read(h->uffd, &msg, sizeof msg) != sizeof msg || msg.event != UFFD_EVENT_PAGEFAULT) continue;
        struct uffdio_writeprotect wp = { { msg.arg.pagefault.address & ~4095ULL, 4096 }, 0 };
        ioctl(h->uffd, UFFDIO_WRITEPROTECT, &wp);
    }
    return NULL;
}

// Writes one byte to every page, timing each write.
static void write_each(char *region, uint64_t pages, uint64_t *latencies) {
    for (uint64_t i = 0; i < pages; i++) {
        uint64_t started = wt_now();
        ((volatile char *)region)[i * 4096] = 2;
        latencies[i] = wt_now() - started;
    }
}

int fm_baseline_write_tracking(uint64_t pages, fm_write_tracking_t *out) {
    memset(out, 0, sizeof *out);
    uint64_t *latencies = calloc(pages, sizeof *latencies);
    if (!latencies) return -ENOMEM;
    char *region;
    int uffd, err;

    // Synchronous write-protect faults, served by a handler thread.
    if ((err = protected_region(pages, 0, &region, &uffd)) < 0) { free(latencies); return err; }
    struct wp_handler handler = { uffd, eventfd(0, EFD_CLOEXEC) };
    pthread_t thread;
    pthread_create(&thread, NULL, wp_handler_thread, &handler);
    write_each(region, pages, latencies);
    uint64_t one = 1;
    (void)write(handler.stop_fd, &one, sizeof one);
    pthread_join(thread, NULL);
    close(handler.stop_fd);
    close(uffd);
    munmap(region, pages * 4096);
    out->sync_fault_ns = median(latencies, pages);

    // WP_ASYNC: the kernel resolves each write; then one scan finds them all.
    if ((err = protected_region(pages, WT_FEATURE_WP_ASYNC, &region, &uffd)) < 0) { free(latencies); return err; }
    write_each(region, pages, latencies);
    out->async_write_ns = median(latencies, pages);
    int pagemap = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    struct page_region *vec = calloc(pages, sizeof *vec);
    if (pagemap >= 0 && vec) {
        struct pm_scan_arg scan = {
            .size = sizeof scan, .flags = PM_SCAN_WP_MATCHING | PM_SCAN_CHECK_WPASYNC,
            .start = (uint64_t)(uintptr_t)region, .end = (uint64_t)(uintptr_t)region + pages * 4096,
            .vec = (uint64_t)(uintptr_t)vec, .vec_len = pages,
            .category_mask = PAGE_IS_WRITTEN, .return_mask = PAGE_IS_WRITTEN,
        };
        uint64_t started = wt_now();
        long regions = ioctl(pagemap, PAGEMAP_SCAN, &scan);
        out->scan_ns = wt_now() - started;
        if (regions < 0) {
            err = -errno;
        } else {
            for (long i = 0; i < regions; i++) out->scan_written_pages += (vec[i].end - vec[i].start) / 4096;
        }
    } else {
        err = pagemap < 0 ? -errno : -ENOMEM;
    }
    if (pagemap >= 0) close(pagemap);
    free(vec);
    close(uffd);
    munmap(region, pages * 4096);
    free(latencies);
    return err < 0 ? err : 0;
}
