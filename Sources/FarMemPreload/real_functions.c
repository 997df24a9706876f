// The definitions this library interposes on, found with dlsym(RTLD_NEXT).
// glibc's dlsym can itself call calloc/malloc (for its error string), before
// any real allocator is known: those few allocations come from a static
// buffer and are never freed.
#define _GNU_SOURCE
#include "farmem_preload.h"
#include <dlfcn.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static fm_real_functions_t functions;
static atomic_int resolved;   // 0 no, 1 under way, 2 done
static __thread int resolving __attribute__((tls_model("initial-exec")));

static _Alignas(16) unsigned char bootstrap[64 << 10];
static atomic_size_t bootstrap_used;

bool fm_real_resolving(void) { return resolving != 0; }

void fm_fatal(const char *message) {
    write(2, message, strlen(message));
    abort();
}

void *fm_bootstrap_allocate(size_t bytes) {
    // Each allocation is preceded by 16 bytes holding its size.
    if (bytes > sizeof bootstrap) bytes = sizeof bootstrap;   // refused below
    size_t total = (bytes + 16 + 15) & ~(size_t)15;
    size_t offset = atomic_fetch_add(&bootstrap_used, total);
    if (offset + total > sizeof bootstrap) fm_fatal("farmem: the bootstrap buffer for the dynamic loader is exhausted\n");
    memcpy(bootstrap + offset, &bytes, sizeof bytes);
    return bootstrap + offset + 16;
}

bool fm_bootstrap_owns(const void *pointer) {
    return (const unsigned char *)pointer >= bootstrap && (const unsigned char *)pointer < bootstrap + sizeof bootstrap;
}

size_t fm_bootstrap_size(const void *pointer) {
    size_t bytes;
    memcpy(&bytes, (const unsigned char *)pointer - 16, sizeof bytes);
    return bytes;
}

static void *find(void *handle, const char *name) {
    void *symbol = dlsym(handle, name);
    if (!symbol) {
        char message[160];
        snprintf(message, sizeof message, "farmem: %s was not found after libfarmem-preload (dlsym)\n", name);
        fm_fatal(message);
    }
    return symbol;
}

static fm_allocator_t allocator(void *handle) {
    return (fm_allocator_t){
        .malloc = find(handle, "malloc"),
        .free = find(handle, "free"),
        .calloc = find(handle, "calloc"),
        .realloc = find(handle, "realloc"),
        .posix_memalign = find(handle, "posix_memalign"),
        .aligned_alloc = find(handle, "aligned_alloc"),
        .memalign = find(handle, "memalign"),
        .valloc = find(handle, "valloc"),
        .pvalloc = find(handle, "pvalloc"),
        .malloc_usable_size = find(handle, "malloc_usable_size"),
    };
}

const fm_real_functions_t *fm_real(void) {
    if (atomic_load_explicit(&resolved, memory_order_acquire) == 2) return &functions;
    if (resolving) {
        // dlsym on this thread came back here for something other than an
        // allocation (which the bootstrap buffer serves): nothing can serve it.
        fm_fatal("farmem: the dynamic loader called an interposed function while libfarmem-preload resolved its own\n");
    }
    int expected = 0;
    if (atomic_compare_exchange_strong(&resolved, &expected, 1)) {
        resolving = 1;
        fm_real_functions_t found;
        found.program = allocator(RTLD_NEXT);
        found.mmap = find(RTLD_NEXT, "mmap");
        found.munmap = find(RTLD_NEXT, "munmap");
        found.mremap = find(RTLD_NEXT, "mremap");
        found.madvise = find(RTLD_NEXT, "madvise");
        found.pthread_create = find(RTLD_NEXT, "pthread_create");
        functions = found;
        resolving = 0;
        atomic_store_explicit(&resolved, 2, memory_order_release);
        return &functions;
    }
    // Another thread is resolving them: it will not take long.
    while (atomic_load_explicit(&resolved, memory_order_acquire) != 2) usleep(10);
    return &functions;
}
