/* The C interface end to end: a region 4x the budget through a farmemd,
 * written and read back by a C program, then grown; a memfd region the
 * same. Usage: farmem_c_example HOST:PORT.
 * Prints "c-api verified" and exits 0 when every word is as written. */
#include <farmemory.h>
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv) {
    if (argc != 2) { fprintf(stderr, "usage: %s HOST:PORT\n", argv[0]); return 64; }
    char why[256];
    farmem_t *fm = farmem_open(argv[1], 1 << 20, NULL, why, sizeof why);
    if (!fm) { fprintf(stderr, "farmem_open: %s\n", why); return 1; }
    farmem_region_t *region = NULL;
    size_t words = (4u << 20) / sizeof(uint64_t);
    uint64_t *a = farmem_alloc(fm, words * sizeof(uint64_t), &region, why, sizeof why);
    if (!a) { fprintf(stderr, "farmem_alloc: %s\n", why); return 1; }
    for (size_t i = 0; i < words; i++) a[i] = i * 0x9E3779B97F4A7C15ull + 1;
    size_t bad = 0;
    for (size_t i = 0; i < words; i++) bad += a[i] != i * 0x9E3779B97F4A7C15ull + 1;
    farmem_stats_t stats;
    farmem_stats(fm, &stats);
    /* A too-large region is an error message, not a crash. */
    void *huge = farmem_alloc(fm, (size_t)1 << 40, NULL, why, sizeof why);
    printf("evictions %llu write-backs %llu fetches %llu; oversized alloc: %s\n",
           (unsigned long long)stats.evictions, (unsigned long long)stats.write_backs,
           (unsigned long long)(stats.fetches + stats.prefetched), huge ? "accepted?!" : why);
    /* Grown to twice its size: the old words stay, the new ones read as zeros. */
    void *moved = NULL;
    if (farmem_grow(fm, region, 2 * words * sizeof(uint64_t), 1, &moved, why, sizeof why) != 0) {
        fprintf(stderr, "farmem_grow: %s\n", why);
        return 1;
    }
    a = moved;
    for (size_t i = 0; i < words; i++) bad += a[i] != i * 0x9E3779B97F4A7C15ull + 1;
    for (size_t i = words; i < 2 * words; i++) bad += a[i] != 0;
    farmem_free(fm, region);
    /* A memfd region: the same, through the page cache. */
    farmem_region_t *shared = NULL;
    uint64_t *b = farmem_alloc_kind(fm, words * sizeof(uint64_t), FARMEM_MEMFD, &shared, why, sizeof why);
    if (!b) { fprintf(stderr, "farmem_alloc_kind: %s\n", why); return 1; }
    for (size_t i = 0; i < words; i++) b[i] = i ^ 0x5555;
    for (size_t i = 0; i < words; i++) bad += b[i] != (i ^ 0x5555);
    farmem_free(fm, shared);
    farmem_close(fm);
    if (bad || stats.evictions == 0 || huge) { printf("c-api FAILED: %zu words differ\n", bad); return 2; }
    printf("c-api verified\n");
    return 0;
}
