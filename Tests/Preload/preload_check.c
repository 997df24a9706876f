/* What libfarmem-preload promises a C program, checked from inside one.
 * Run with LD_PRELOAD=libfarmem-preload.so FARMEM_SERVERS=... FARMEM_MIN_ALLOC=1MiB.
 * Prints "preload-check passed" and the far arena's allocation rate, or the
 * first failure, and exits non-zero on a failure. */
#define _GNU_SOURCE
#include <errno.h>
#include <malloc.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define MiB ((size_t)1 << 20)
static int failures;
#define CHECK(condition, ...) do { if (!(condition)) { failures++; printf("FAIL %s:%d: ", __FILE__, __LINE__); printf(__VA_ARGS__); printf("\n"); } } while (0)

static void fill(uint8_t *p, size_t n, uint64_t seed) { for (size_t i = 0; i < n; i += 512) p[i] = (uint8_t)(seed + i / 512 * 31); }
static size_t differs(const uint8_t *p, size_t n, uint64_t seed) {
    size_t bad = 0;
    for (size_t i = 0; i < n; i += 512) bad += p[i] != (uint8_t)(seed + i / 512 * 31);
    return bad;
}
static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + t.tv_nsec / 1e9; }

/* Blocks several times the budget, written and read back. */
static void big_blocks(size_t total) {
    enum { count = 24 };
    uint8_t *blocks[count];
    size_t size = total / count;
    for (int i = 0; i < count; i++) { blocks[i] = malloc(size); CHECK(blocks[i], "malloc %zu", size); fill(blocks[i], size, (uint64_t)i); }
    for (int i = 0; i < count; i++) CHECK(differs(blocks[i], size, (uint64_t)i) == 0, "block %d lost data", i);
    for (int i = 0; i < count; i++) free(blocks[i]);
}

static void reallocs(void) {
    /* Local grows past the threshold (moves far), far grows (in place or moved), shrinks below (moves local). */
    uint8_t *p = malloc(64 << 10);
    fill(p, 64 << 10, 7);
    p = realloc(p, 3 * MiB);
    CHECK(p && differs(p, 64 << 10, 7) == 0, "local->far realloc kept the data");
    fill(p, 3 * MiB, 9);
    p = realloc(p, 40 * MiB);
    CHECK(p && differs(p, 3 * MiB, 9) == 0, "far grow kept the data");
    CHECK(malloc_usable_size(p) >= 40 * MiB, "usable size %zu after growing", malloc_usable_size(p));
    p = realloc(p, 2 * MiB);
    CHECK(p && differs(p, 2 * MiB, 9) == 0, "far shrink kept the data");
    p = realloc(p, 4096);
    CHECK(p && differs(p, 4096, 9) == 0, "far->local realloc kept the data");
    CHECK(malloc_usable_size(p) >= 4096 && malloc_usable_size(p) < MiB, "usable size %zu after moving local", malloc_usable_size(p));
    free(p);
    CHECK(realloc(malloc(2 * MiB), 0) == NULL, "realloc(p, 0) frees and returns NULL");
    uint8_t *kept = malloc(2 * MiB);
    fill(kept, 2 * MiB, 11);
    volatile size_t too_big = SIZE_MAX - 100;
    errno = 0;
    void *(*volatile reallocate)(void *, size_t) = realloc;   /* the compiler assumes realloc consumed kept */
    CHECK(reallocate(kept, too_big) == NULL && errno == ENOMEM, "realloc to nearly SIZE_MAX is ENOMEM");
    CHECK(differs(kept, 2 * MiB, 11) == 0, "the block survives a refused realloc");
    free(kept);
    errno = 0;
    volatile size_t huge = SIZE_MAX / 2;   /* volatile: the compiler would refuse the constant */
    CHECK(reallocarray(NULL, huge, 4) == NULL && errno == ENOMEM, "reallocarray overflow is ENOMEM");
}

/* A big block grows without its pages being read (the library extends its
 * region): where the address space after it is taken (it moves) and where
 * it is free. */
static void big_growth(void) {
    uint8_t *p = malloc(24 * MiB);   /* over 16 MiB: a far region of its own */
    CHECK(p, "malloc 24 MiB");
    if (!p) return;
    fill(p, 24 * MiB, 13);
    /* Something right after it: growing must move it. */
    void *blocker = mmap(p + 24 * MiB, 4096, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
    uint8_t *q = realloc(p, 48 * MiB);
    CHECK(q && differs(q, 24 * MiB, 13) == 0, "a big block that had to move kept its data");
    CHECK(q && q[40 * MiB] == 0 && q[48 * MiB - 1] == 0, "its new pages read as zeros");
    CHECK(malloc_usable_size(q) >= 48 * MiB, "usable size %zu after growing", malloc_usable_size(q));
    if (blocker != MAP_FAILED) munmap(blocker, 4096);
    if (!q) return;
    fill(q, 48 * MiB, 17);
    uint8_t *r = realloc(q, 100 * MiB);
    CHECK(r && differs(r, 48 * MiB, 17) == 0, "a big block grown again kept its data");
    if (r) {
        fill(r, 100 * MiB, 19);
        r = realloc(r, 30 * MiB);   /* shrinks in place, then grows into its own tail and past it */
        CHECK(r && differs(r, 30 * MiB, 19) == 0, "a big block shrunk kept its data");
        r = r ? realloc(r, 120 * MiB) : NULL;
        CHECK(r && differs(r, 30 * MiB, 19) == 0 && r[60 * MiB] == 0, "regrown past its tail: data kept, the rest zeros");
    }
    free(r);
}

/* `preload_check grow N`: an N MiB block written, grown to 2N and 4N, then
 * one byte per MiB checked: the report's fetches show whether growing read
 * the pages (a copy would fetch every evicted page). */
static int grow_only(size_t total) {
    uint8_t *p = malloc(total);
    if (!p) return 1;
    fill(p, total, 23);
    for (int step = 2; step <= 4; step *= 2) {
        uint8_t *q = realloc(p, step * total);
        if (!q) { printf("realloc to %zu MiB failed\n", step * total / MiB); return 1; }
        p = q;
    }
    size_t bad = 0;
    for (size_t i = 0; i < total; i += MiB) bad += p[i] != (uint8_t)(23 + i / 512 * 31);
    printf("grown %zu MiB to %zu MiB, %zu bad\n", total / MiB, 4 * total / MiB, bad);
    return bad != 0;
}

static void aligned_and_zeroed(void) {
    void *a = NULL;
    CHECK(posix_memalign(&a, 1 << 16, 3 * MiB) == 0 && ((uintptr_t)a & 0xFFFF) == 0, "posix_memalign 64 KiB alignment: %p", a);
    void *b = aligned_alloc(1 << 21, 4 * MiB);
    CHECK(b && ((uintptr_t)b & ((1 << 21) - 1)) == 0, "aligned_alloc 2 MiB alignment: %p", b);
    void *c = memalign(4096, 2 * MiB), *d = valloc(2 * MiB), *e = pvalloc(2 * MiB - 5);
    CHECK(c && d && e && !((uintptr_t)c & 4095) && !((uintptr_t)d & 4095) && !((uintptr_t)e & 4095), "memalign/valloc/pvalloc page aligned");
    void *invalid = NULL;
    CHECK(posix_memalign(&invalid, 3, MiB) == EINVAL, "posix_memalign with alignment 3 is EINVAL");
    void *rounded = memalign(3000, 2 * MiB);   /* glibc rounds 3000 up to 4096 */
    CHECK(rounded && !((uintptr_t)rounded & 4095), "memalign 3000 rounds up to a page: %p", rounded);
    free(a); free(b); free(c); free(d); free(e); free(rounded);
    /* A freed far block's pages read as zeros when calloc hands them out again. */
    for (int round = 0; round < 3; round++) {
        uint8_t *dirty = malloc(8 * MiB);
        memset(dirty, 0xAB, 8 * MiB);
        free(dirty);
        uint8_t *clean = calloc(1, 8 * MiB);
        size_t nonzero = 0;
        for (size_t i = 0; i < 8 * MiB; i += 256) nonzero += clean[i] != 0;
        CHECK(nonzero == 0, "calloc after free: %zu non-zero samples", nonzero);
        free(clean);
    }
    /* A block the program locked and protected before freeing it comes back usable and zeroed. */
    uint8_t *locked = malloc(2 * MiB);
    memset(locked, 0x5A, 2 * MiB);
    int was_locked = mlock(locked, 2 * MiB) == 0;
    mprotect(locked + 4096, 4096, PROT_READ);
    free(locked);
    uint8_t *again = calloc(1, 2 * MiB);
    again[4096] = 1;   /* writable */
    CHECK(again[8192] == 0 && again[2 * MiB - 1] == 0, "a freed locked block reads as zeros (mlock %s)", was_locked ? "held" : "refused");
    free(again);
}

static void mappings(void) {
    /* An allocator's arena: mapped, trimmed at both ends, purged, grown, unmapped. */
    size_t length = 16 * MiB;
    uint8_t *m = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    CHECK(m != MAP_FAILED, "mmap");
    fill(m, length, 3);
    CHECK(munmap(m, MiB) == 0 && munmap(m + length - MiB, MiB) == 0, "munmap of head and tail");
    size_t bad = 0;
    for (size_t i = MiB; i < length - MiB; i += 512) bad += m[i] != (uint8_t)(3 + i / 512 * 31);
    CHECK(bad == 0, "the middle kept its data: %zu samples differ", bad);
    CHECK(madvise(m + 2 * MiB, MiB, MADV_DONTNEED) == 0 && m[2 * MiB] == 0 && m[3 * MiB - 1] == 0, "MADV_DONTNEED reads zeros");
    CHECK(madvise(m + 4 * MiB, MiB, MADV_FREE) == 0, "MADV_FREE accepted");
    CHECK(madvise(m + MiB, 2 * MiB, MADV_HUGEPAGE) == 0, "MADV_HUGEPAGE accepted");
    uint8_t *g = mremap(m + MiB, length - 2 * MiB, length + 8 * MiB, MREMAP_MAYMOVE);
    CHECK(g != MAP_FAILED, "mremap grow: %s", strerror(errno));
    if (g != MAP_FAILED) {
        size_t moved_bad = 0;   /* [5 MiB, 15 MiB) of the original, now at g + 4 MiB */
        for (size_t i = 5 * MiB; i < length - MiB; i += 512) moved_bad += g[i - MiB] != (uint8_t)(3 + i / 512 * 31);
        CHECK(moved_bad == 0, "mremap kept the data: %zu samples differ", moved_bad);
        g[length + 8 * MiB - 1] = 1;
        CHECK(munmap(g, length + 8 * MiB) == 0, "munmap of the grown mapping");
    }
    /* Small and special mappings stay the kernel's. */
    void *small = mmap(NULL, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    void *none = mmap(NULL, 8 * MiB, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    CHECK(small != MAP_FAILED && none != MAP_FAILED && munmap(small, 64 << 10) == 0 && munmap(none, 8 * MiB) == 0, "local mappings");
}

static void *thread_body(void *argument) {
    size_t index = (size_t)argument;
    for (int round = 0; round < 20; round++) {
        uint8_t *p = malloc(MiB + index * 4096);
        fill(p, MiB, index + round);
        if (differs(p, MiB, index + round)) return (void *)1;
        free(p);
    }
    return NULL;
}

static void threads(void) {
    pthread_t t[4];
    for (size_t i = 0; i < 4; i++) pthread_create(&t[i], NULL, thread_body, (void *)i);
    for (size_t i = 0; i < 4; i++) { void *result; pthread_join(t[i], &result); CHECK(result == NULL, "thread %zu lost data", i); }
}

static void fork_then_exec(void) {
    uint8_t *far = malloc(4 * MiB);
    far[0] = 1;
    pid_t child = fork();
    if (child == 0) { execl("/bin/sh", "sh", "-c", "exit 7", (char *)NULL); _exit(99); }
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 7, "fork+exec: status %d", status);
    CHECK(far[0] == 1, "the parent's far memory after fork");
    free(far);
}

/* Far allocation throughput: blocks of 1 MiB to 8 MiB allocated and freed. */
static void throughput(void) {
    enum { rounds = 2000 };
    void *held[16] = {0};
    double start = now();
    for (int i = 0; i < rounds; i++) {
        int slot = i % 16;
        free(held[slot]);
        held[slot] = malloc(MiB << (i % 4));
        ((char *)held[slot])[0] = 1;
    }
    double seconds = now() - start;
    for (int i = 0; i < 16; i++) free(held[i]);
    printf("far allocation: %.0f malloc+free per second (1-8 MiB blocks, first page touched)\n", rounds / seconds);
}

int main(int argc, char **argv) {
    if (argc > 2 && strcmp(argv[1], "grow") == 0) return grow_only(strtoull(argv[2], NULL, 10) * MiB);
    size_t total = argc > 1 ? strtoull(argv[1], NULL, 10) * MiB : 96 * MiB;
    big_blocks(total);
    reallocs();
    big_growth();
    aligned_and_zeroed();
    mappings();
    threads();
    fork_then_exec();
    throughput();
    if (failures) { printf("preload-check FAILED: %d\n", failures); return 1; }
    printf("preload-check passed\n");
    /* exit from another thread while this one is still running */
    pthread_t t;
    pthread_create(&t, NULL, (void *(*)(void *))exit, (void *)0);
    for (;;) pause();
}
