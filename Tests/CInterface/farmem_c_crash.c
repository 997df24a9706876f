/* A C program whose server dies: it fills a region 4x its budget (most of it
 * then lives on the server), says READY, waits for a line on stdin (the test
 * kills the server meanwhile), then reads the region back with several
 * threads at once. The first page that cannot be fetched raises SIGBUS while the
 * other threads wait on theirs; the test measures how long the process takes
 * to die with the Swift runtime's crash handling as it comes by default
 * (swift-backtrace). Usage: farmem_c_crash HOST:PORT [THREADS, default 4] */
#include <farmemory.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

#define MAX_THREADS 8
static size_t THREADS = 4;   /* argv[2] */
static volatile uint64_t *a;
static size_t words;

static void *reader(void *argument) {
    size_t t = (size_t)argument;
    uint64_t sum = 0;
    /* A register pointing at another far page that is on the server only, as
     * real code has (a base, the next element): a crash handler that dumps
     * memory around the registers reads it. */
    volatile uint64_t *elsewhere = a + ((t + 1) % THREADS) * words / THREADS + words / THREADS / 2;
    for (size_t i = t * words / THREADS; i < (t + 1) * words / THREADS; i++) {
        __asm__ volatile("mov %0, %%r12" : : "r"(elsewhere) : "r12");
        sum += a[i];
    }
    return (void *)(uintptr_t)sum;
}

int main(int argc, char **argv) {
    if (argc < 2) { fprintf(stderr, "usage: %s HOST:PORT [THREADS]\n", argv[0]); return 64; }
    if (argc > 2) THREADS = (size_t)atoi(argv[2]);
    if (THREADS < 1 || THREADS > MAX_THREADS) return 64;
    char why[256];
    farmem_t *fm = farmem_open(argv[1], 1 << 20, NULL, why, sizeof why);
    if (!fm) { fprintf(stderr, "farmem_open: %s\n", why); return 1; }
    words = (4u << 20) / sizeof(uint64_t);
    a = farmem_alloc(fm, words * sizeof(uint64_t), NULL, why, sizeof why);
    if (!a) { fprintf(stderr, "farmem_alloc: %s\n", why); return 1; }
    for (size_t i = 0; i < words; i++) a[i] = i;
    printf("READY\n");
    fflush(stdout);
    char line[16];
    if (!fgets(line, sizeof line, stdin)) return 1;
    pthread_t threads[MAX_THREADS];
    for (size_t t = 0; t < THREADS; t++) pthread_create(&threads[t], NULL, reader, (void *)t);
    for (size_t t = 0; t < THREADS; t++) pthread_join(threads[t], NULL);
    printf("read everything back?!\n");
    return 2;
}
