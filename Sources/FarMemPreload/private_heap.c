// The library's own heap. The Swift runtime and the pager allocate; they must
// never do it through the program's allocator: jemalloc, for one, calls mmap
// while holding its locks (that mmap may come here and create a far region,
// which allocates), and a program thread may fault on far memory while
// holding them (a pager thread that then allocated would wait forever). And
// a pointer must always go back to the allocator it came from, whichever
// thread frees it: this heap is one reserved address range, so ownership is
// an address comparison.
//
// Small blocks (up to 32 KiB) come from size classes carved out of 64 KiB
// spans; larger ones are page runs. One lock: the library allocates on set-up
// and rarely after (never on the fault path's common case).
#define _GNU_SOURCE
#include "farmem_preload.h"
#include "farmem_arena.h"
#include <pthread.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define HEAP_BYTES ((uintptr_t)64 << 30)   // address space only (MAP_NORESERVE)
#define SPAN_BYTES ((uintptr_t)64 << 10)
#define SPAN_PAGES (SPAN_BYTES / 4096)
#define LARGE 0xFF                         // span_class: part of a page run

static const uint32_t class_sizes[] = {16, 32, 48, 64, 96, 128, 192, 256, 384, 512, 768, 1024, 1536, 2048,
                                       3072, 4096, 6144, 8192, 12288, 16384, 24576, 32768};
#define CLASS_COUNT (sizeof class_sizes / sizeof class_sizes[0])

static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static uintptr_t heap_base;
static uint8_t *span_class;              // per span: its size class, or LARGE
static void *free_lists[CLASS_COUNT];
static fm_run_list_t free_pages;         // page runs, in pages from heap_base
static fm_run_list_t large_blocks;

static int class_of(size_t bytes) {
    for (size_t i = 0; i < CLASS_COUNT; i++) if (bytes <= class_sizes[i]) return (int)i;
    return -1;
}

/// Maps the range on first use (under the lock).
static bool ready(void) {
    if (heap_base) return true;
    size_t map_bytes = HEAP_BYTES / SPAN_BYTES;
    // One span more than needed, so the heap can start on a span boundary
    // (span_class is indexed from the base; spans are aligned in the address space).
    long heap = syscall(SYS_mmap, NULL, HEAP_BYTES + SPAN_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    long map = syscall(SYS_mmap, NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (heap == -1 || map == -1) return false;
    heap = (long)(((uintptr_t)heap + SPAN_BYTES - 1) & ~(SPAN_BYTES - 1));
    span_class = (uint8_t *)map;
    if (fm_runs_insert(&free_pages, 0, HEAP_BYTES / 4096, true) != 0) return false;
    __atomic_store_n(&heap_base, (uintptr_t)heap, __ATOMIC_RELEASE);
    return true;
}

bool fm_private_owns(const void *pointer) {
    uintptr_t base = __atomic_load_n(&heap_base, __ATOMIC_ACQUIRE);
    return base && (uintptr_t)pointer >= base && (uintptr_t)pointer < base + HEAP_BYTES;
}

/// `pages` pages, aligned to `align` pages, marked LARGE. Under the lock.
static void *take_pages(uint64_t pages, uint64_t align) {
    uint64_t start;
    if (fm_runs_take(&free_pages, pages, align, heap_base / 4096, &start) != 0) return NULL;
    return (void *)(heap_base + start * 4096);
}

void *fm_private_allocate(size_t bytes, size_t alignment) {
    if (bytes == 0) bytes = 1;
    if (bytes > HEAP_BYTES / 2) return NULL;
    int class = alignment <= 16 ? class_of(bytes) : -1;
    pthread_mutex_lock(&lock);
    void *block = NULL;
    if (!ready()) goto done;
    if (class >= 0) {
        if (!free_lists[class]) {
            // A new span, split into blocks of this class.
            char *span = take_pages(SPAN_PAGES, SPAN_PAGES);
            if (!span) goto done;
            span_class[((uintptr_t)span - heap_base) / SPAN_BYTES] = (uint8_t)class;
            uint32_t size = class_sizes[class];
            for (uintptr_t offset = SPAN_BYTES / size * size; offset >= size; offset -= size) {
                void **item = (void **)(span + offset - size);
                *item = free_lists[class];
                free_lists[class] = item;
            }
        }
        block = free_lists[class];
        free_lists[class] = *(void **)block;
    } else {
        uint64_t pages = (bytes + 4095) / 4096;
        uint64_t align = alignment > 4096 ? alignment / 4096 : 1;
        // Page runs never share a span with small blocks: whole spans.
        uint64_t span_pages = (pages + SPAN_PAGES - 1) / SPAN_PAGES * SPAN_PAGES;
        block = take_pages(span_pages, align > SPAN_PAGES ? align : SPAN_PAGES);
        if (!block) goto done;
        if (fm_runs_insert(&large_blocks, ((uintptr_t)block - heap_base) / 4096, span_pages, false) != 0) {
            fm_runs_insert(&free_pages, ((uintptr_t)block - heap_base) / 4096, span_pages, true);
            block = NULL;
            goto done;
        }
        for (uint64_t s = 0; s < span_pages / SPAN_PAGES; s++) span_class[((uintptr_t)block - heap_base) / SPAN_BYTES + s] = LARGE;
    }
done:
    pthread_mutex_unlock(&lock);
    return block;
}

/// The usable size of a block of this heap. Under the lock.
static size_t size_locked(const void *pointer) {
    uintptr_t offset = (uintptr_t)pointer - heap_base;
    uint8_t class = span_class[offset / SPAN_BYTES];
    if (class != LARGE) return class_sizes[class];
    long run = fm_runs_find(&large_blocks, offset / 4096);
    return run < 0 ? 0 : large_blocks.runs[run].count * 4096;
}

size_t fm_private_size(const void *pointer) {
    pthread_mutex_lock(&lock);
    size_t size = size_locked(pointer);
    pthread_mutex_unlock(&lock);
    return size;
}

void fm_private_free(void *pointer) {
    pthread_mutex_lock(&lock);
    uintptr_t offset = (uintptr_t)pointer - heap_base;
    uint8_t class = span_class[offset / SPAN_BYTES];
    if (class != LARGE) {
        *(void **)pointer = free_lists[class];
        free_lists[class] = pointer;
    } else {
        long run = fm_runs_find(&large_blocks, offset / 4096);
        if (run >= 0 && large_blocks.runs[run].start == offset / 4096) {
            fm_run_t block = large_blocks.runs[run];
            fm_runs_take_at(&large_blocks, block.start, block.count);
            // Its memory goes back to the kernel; the run reads as zeros again.
            syscall(SYS_madvise, heap_base + block.start * 4096, block.count * 4096, MADV_DONTNEED);
            fm_runs_insert(&free_pages, block.start, block.count, true);
        }
    }
    pthread_mutex_unlock(&lock);
}

/// fork: a pager thread may hold the lock; the child has no pager threads.
void fm_private_after_fork_in_child(void) { pthread_mutex_init(&lock, NULL); }

void *fm_private_reallocate(void *pointer, size_t bytes) {
    size_t old = fm_private_size(pointer);
    if (bytes <= old && bytes > old / 2) return pointer;
    void *moved = fm_private_allocate(bytes, 0);
    if (!moved) return NULL;
    memcpy(moved, pointer, old < bytes ? old : bytes);
    fm_private_free(pointer);
    return moved;
}
