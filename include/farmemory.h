/*
 * FarMemory for C and C++: far-memory regions paged through userfaultfd from
 * a FarMem memory server (farmemd). Link with -lFarMemoryC (libFarMemoryC.so,
 * built by `make lib`). Every function is thread-safe. Errors come back as
 * NULL or -1 with a message in the caller's buffer.
 *
 *     char why[256];
 *     farmem_t *fm = farmem_open("10.0.0.5:7070", 256 << 20, NULL, why, sizeof why);
 *     if (!fm) { fprintf(stderr, "%s\n", why); exit(1); }
 *     farmem_region_t *region;
 *     uint64_t *a = farmem_alloc(fm, 8ULL << 30, &region, why, sizeof why);
 *     a[123456789] = 42;              // ordinary memory
 *     farmem_free(fm, region);
 *     farmem_close(fm);
 */
#ifndef FARMEMORY_H
#define FARMEMORY_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef struct farmem farmem_t;
typedef struct farmem_region farmem_region_t;

typedef struct {
    uint64_t faults;           /* missing-page faults */
    uint64_t fetches;          /* pages read from the server on a fault */
    uint64_t prefetched;       /* pages read ahead of a fault */
    uint64_t zero_fills;       /* never-written pages installed as zeros */
    uint64_t evictions;        /* pages moved out of local memory */
    uint64_t write_backs;      /* dirty pages written to the server */
    uint64_t bytes_in;
    uint64_t bytes_out;
    uint64_t resident_pages;
    uint64_t poisoned;         /* pages that raise SIGBUS: the server was lost */
} farmem_stats_t;

/* Connects to the server at "HOST:PORT", or to a cluster given as
 * "HOST:PORT,HOST:PORT,..." (every page then has two copies, on different
 * servers), with a local budget (bytes resident at most, all regions
 * together). `token` may be NULL. With FARMEM_METRICS=HOST:PORT in the
 * environment, the statistics are served for Prometheus at
 * http://HOST:PORT/metrics while the handle is open. The library logs to
 * stderr at FARMEM_LOG_LEVEL (trace, debug, info, notice, warning (the
 * default), error or critical). */
farmem_t *farmem_open(const char *server, size_t budget_bytes, const char *token, char *error, size_t error_len);

/* A region of at least `bytes` (whole pages), page aligned, reading as zeros.
 * The servers reserve room for it now (a cluster: each its share of the
 * copies): a full server or cluster fails here, not at a later fault. */
void *farmem_alloc(farmem_t *fm, size_t bytes, farmem_region_t **region, char *error, size_t error_len);

/* What backs a region locally (see README, "Region kinds"). */
typedef enum {
    FARMEM_ANONYMOUS = 0, /* private memory: installed with UFFDIO_COPY */
    FARMEM_MEMFD = 1,     /* shared memory: received into the page cache, mapped with UFFDIO_CONTINUE */
    FARMEM_HUGETLB = 2,   /* as FARMEM_MEMFD in 2 MiB huge pages (sizes rounded up to 2 MiB; needs vm.nr_hugepages) */
} farmem_region_kind_t;
/* FARMEM_MEMFD and FARMEM_HUGETLB regions stay mapped in a forked child,
 * shared with the parent (with CAP_SYS_PTRACE; README, "fork"); the child
 * uses the memory but must not call farmem_* itself. FARMEM_ANONYMOUS
 * regions are not inherited: a child touching one gets SIGSEGV. */

/* farmem_alloc with a region kind (farmem_alloc is FARMEM_ANONYMOUS). */
void *farmem_alloc_kind(farmem_t *fm, size_t bytes, farmem_region_kind_t kind, farmem_region_t **region, char *error,
                        size_t error_len);

/* Grows the region to at least `bytes` (whole pages) without reading any of
 * its pages: evicted pages stay on the servers, resident ones move with
 * their page tables (mremap, no copy), and the new pages read as zeros. If
 * the address space after the region is taken, the region moves to where
 * all of it fits, unless `may_move` is 0. Only a region still whole where
 * it was put (not partly unmapped, not split by mremap) can grow. `*base`
 * (if not NULL) gets where the region starts now, after a failure too: a
 * failed grow never changes the region's data but may have moved it.
 * 0, or -1 with the reason in `error`. Not concurrently with farmem_free or
 * another farmem_grow of the same region. */
int farmem_grow(farmem_t *fm, farmem_region_t *region, size_t bytes, int may_move, void **base, char *error, size_t error_len);

/* Unmaps the region and frees its pages on the server. */
void farmem_free(farmem_t *fm, farmem_region_t *region);

int farmem_stats(farmem_t *fm, farmem_stats_t *out);

/* The fault service time's median and 99th percentile, in nanoseconds,
 * since the handle was opened (0 before the first fault). */
int farmem_fault_latency(farmem_t *fm, uint64_t *p50_ns, uint64_t *p99_ns);

/* Frees every region, stops the pager threads, disconnects. */
void farmem_close(farmem_t *fm);

#ifdef __cplusplus
}
#endif
#endif
