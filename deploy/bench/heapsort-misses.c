// heapsort-misses: how many page faults the bench's heapsort must take at a
// given number of resident pages, whatever the pager does. It replays the
// heapsort of `farmem bench --workloads sort` (UInt64 keys, 512 to a 4 KiB
// page, the same sift-down) page by page and counts misses under exact LRU
// and under Belady's optimal replacement (it evicts the page used furthest
// in the future: no policy can miss less).
//
//   cc -O2 -o /tmp/heapsort-misses deploy/bench/heapsort-misses.c
//   /tmp/heapsort-misses 2097152 1024 2048   # 16 MiB of keys; 25% and 50% budgets
//
// Keys are random (a splitmix64 stream, like the bench's); the counts barely
// depend on the seed.
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

static uint32_t *trace;
static long length, capacity;
static long lastPage = -1;

static void touch(long index) {
    long page = index / 512;
    if (page == lastPage) return;   // the same page again: no fault either way
    lastPage = page;
    if (length == capacity) {
        capacity = capacity ? capacity * 2 : 1 << 20;
        trace = realloc(trace, capacity * sizeof *trace);
        if (!trace) { perror("realloc"); exit(1); }
    }
    trace[length++] = (uint32_t)page;
}

static uint64_t state = 12345;
static uint64_t splitmix(void) {
    uint64_t z = (state += 0x9e3779b97f4a7c15);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9;
    z = (z ^ (z >> 27)) * 0x94d049bb133111eb;
    return z ^ (z >> 31);
}

static void siftDown(uint64_t *a, long root, long end) {
    long parent = root;
    for (;;) {
        long child = 2 * parent + 1;
        if (child >= end) return;
        touch(child);
        if (child + 1 < end) {
            touch(child + 1);
            if (a[child] < a[child + 1]) child++;
        }
        touch(parent);
        if (a[parent] >= a[child]) return;
        uint64_t t = a[parent]; a[parent] = a[child]; a[child] = t;
        parent = child;
    }
}

// Exact LRU: a doubly linked list of resident pages, most recent first.
static long lruMisses(int pages, int resident) {
    int *prev = malloc(pages * sizeof *prev), *next = malloc(pages * sizeof *next);
    char *in = calloc(pages, 1);
    int head = -1, tail = -1, count = 0;
    long misses = 0;
    for (long i = 0; i < length; i++) {
        int p = trace[i];
        if (in[p]) {   // unlink
            if (prev[p] >= 0) next[prev[p]] = next[p]; else head = next[p];
            if (next[p] >= 0) prev[next[p]] = prev[p]; else tail = prev[p];
        } else {
            misses++;
            if (count == resident) {
                int v = tail;
                tail = prev[v];
                if (tail >= 0) next[tail] = -1; else head = -1;
                in[v] = 0;
                count--;
            }
            in[p] = 1;
            count++;
        }
        prev[p] = -1; next[p] = head;
        if (head >= 0) prev[head] = p;
        head = p;
        if (tail < 0) tail = p;
    }
    free(prev); free(next); free(in);
    return misses;
}

// Belady's OPT: a max-heap of (next use, page), stale entries skipped.
typedef struct { long key; int page; } Item;
static long optMisses(int pages, int resident, const long *nextUse) {
    Item *heap = malloc((length + 1) * sizeof *heap);
    long *current = malloc(pages * sizeof *current);
    char *in = calloc(pages, 1);
    long size = 0, misses = 0;
    int count = 0;
    for (long i = 0; i < length; i++) {
        int p = trace[i];
        if (!in[p]) {
            misses++;
            if (count == resident) {
                for (;;) {   // pop the furthest next use that is still current
                    Item top = heap[0];
                    heap[0] = heap[--size];
                    for (long j = 0;;) {
                        long l = 2 * j + 1, r = l + 1, m = j;
                        if (l < size && heap[l].key > heap[m].key) m = l;
                        if (r < size && heap[r].key > heap[m].key) m = r;
                        if (m == j) break;
                        Item t = heap[m]; heap[m] = heap[j]; heap[j] = t; j = m;
                    }
                    if (in[top.page] && current[top.page] == top.key) { in[top.page] = 0; count--; break; }
                }
            }
            in[p] = 1;
            count++;
        }
        current[p] = nextUse[i];
        long j = size++;
        heap[j].key = nextUse[i]; heap[j].page = p;
        while (j > 0 && heap[(j - 1) / 2].key < heap[j].key) {
            Item t = heap[(j - 1) / 2]; heap[(j - 1) / 2] = heap[j]; heap[j] = t; j = (j - 1) / 2;
        }
        if (size > length) {   // compact: only current entries
            long k = 0;
            for (long m = 0; m < size; m++) if (in[heap[m].page] && current[heap[m].page] == heap[m].key) heap[k++] = heap[m];
            size = k;
            for (long m = size / 2 - 1; m >= 0; m--) {
                for (long q = m;;) {
                    long l = 2 * q + 1, r = l + 1, b = q;
                    if (l < size && heap[l].key > heap[b].key) b = l;
                    if (r < size && heap[r].key > heap[b].key) b = r;
                    if (b == q) break;
                    Item t = heap[b]; heap[b] = heap[q]; heap[q] = t; q = b;
                }
            }
        }
    }
    free(heap); free(current); free(in);
    return misses;
}

int main(int argc, char **argv) {
    if (argc < 3) { fprintf(stderr, "usage: %s KEYS RESIDENT_PAGES...\n", argv[0]); return 2; }
    long n = atol(argv[1]);
    int pages = (int)((n + 511) / 512);
    uint64_t *a = malloc(n * sizeof *a);
    for (long i = 0; i < n; i++) a[i] = splitmix();
    for (long i = n / 2 - 1; i >= 0; i--) { touch(i); siftDown(a, i, n); }
    for (long end = n - 1; end > 0; end--) {
        touch(0); touch(end);
        uint64_t t = a[0]; a[0] = a[end]; a[end] = t;
        siftDown(a, 0, end);
    }
    long *nextUse = malloc(length * sizeof *nextUse), *seen = malloc(pages * sizeof *seen);
    for (int p = 0; p < pages; p++) seen[p] = 1L << 62;
    for (long i = length - 1; i >= 0; i--) { nextUse[i] = seen[trace[i]]; seen[trace[i]] = i; }
    printf("%ld keys, %d pages, %ld page changes\n", n, pages, length);
    for (int k = 2; k < argc; k++) {
        int resident = atoi(argv[k]);
        printf("resident %d pages: LRU %ld misses, optimal %ld misses\n", resident, lruMisses(pages, resident),
               optMisses(pages, resident, nextUse));
    }
    return 0;
}
