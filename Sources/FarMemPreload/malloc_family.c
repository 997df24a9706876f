// malloc, free and their relatives: blocks of at least FARMEM_MIN_ALLOC bytes
// are far, the rest go to the program's allocator; the library's own threads
// allocate from its private heap. free, realloc and malloc_usable_size find a
// block's owner by its address, whichever thread calls them.
#define _GNU_SOURCE
#include "farmem_preload.h"
#include <errno.h>
#include <malloc.h>
#include <stdlib.h>
#include <string.h>

static const fm_allocator_t *program(void) { return &fm_real()->program; }

/// Where a block that is not far comes from, by thread.
static void *near(size_t bytes, size_t alignment) {
    if (fm_real_resolving()) return fm_bootstrap_allocate(bytes);
    if (fm_internal) return fm_private_allocate(bytes, alignment);
    if (alignment <= 16) return program()->malloc(bytes);
    void *block = NULL;
    return program()->posix_memalign(&block, alignment, bytes) == 0 ? block : NULL;
}

static void *far_or_near(size_t bytes, size_t alignment) {
    void *far = fm_goes_far(bytes) ? fm_far_allocate(bytes, alignment, fm_far_block) : NULL;
    return far ? far : near(bytes, alignment);
}

void *malloc(size_t bytes) { return far_or_near(bytes, 0); }

void free(void *pointer) {
    if (!pointer || fm_bootstrap_owns(pointer)) return;
    if (fm_private_owns(pointer)) { fm_private_free(pointer); return; }
    // The library's threads never hold far blocks, and must never wait for
    // the far lock (its holder may be waiting for them: MADV_DONTNEED).
    if (!fm_internal && fm_far_free(pointer)) return;
    program()->free(pointer);
}

void *calloc(size_t count, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) { errno = ENOMEM; return NULL; }
    void *far = fm_goes_far(bytes) ? fm_far_allocate(bytes, 0, fm_far_block) : NULL;
    if (far) return far;   // far blocks read as zeros
    if (!fm_real_resolving() && !fm_internal) return program()->calloc(count, size);
    void *block = near(bytes, 0);
    if (block) memset(block, 0, bytes);
    return block;
}

static size_t usable_size(void *pointer) {
    if (fm_bootstrap_owns(pointer)) return fm_bootstrap_size(pointer);
    if (fm_private_owns(pointer)) return fm_private_size(pointer);
    size_t far = fm_internal ? 0 : fm_far_block_size(pointer);
    return far ? far : program()->malloc_usable_size(pointer);
}

void *realloc(void *pointer, size_t bytes) {
    if (!pointer) return malloc(bytes);
    if (bytes == 0) { free(pointer); return NULL; }   // glibc's realloc(p, 0)
    if (fm_private_owns(pointer)) return fm_private_reallocate(pointer, bytes);
    if (!fm_internal && fm_far_contains(pointer, fm_far_block)) return fm_far_reallocate(pointer, bytes);
    if (fm_bootstrap_owns(pointer) || fm_goes_far(bytes)) {
        // Moves: out of the bootstrap buffer, or far as it grows past the threshold.
        void *moved = malloc(bytes);
        if (!moved) return NULL;
        size_t old = usable_size(pointer);
        memcpy(moved, pointer, old < bytes ? old : bytes);
        free(pointer);
        return moved;
    }
    return program()->realloc(pointer, bytes);
}

void *reallocarray(void *pointer, size_t count, size_t size) {
    size_t bytes;
    if (__builtin_mul_overflow(count, size, &bytes)) { errno = ENOMEM; return NULL; }
    return realloc(pointer, bytes);
}

static bool power_of_two(size_t alignment) { return alignment && (alignment & (alignment - 1)) == 0; }

int posix_memalign(void **out, size_t alignment, size_t bytes) {
    if (!power_of_two(alignment) || alignment < sizeof(void *)) return EINVAL;
    void *block = far_or_near(bytes, alignment);
    if (!block) return ENOMEM;
    *out = block;
    return 0;
}

void *aligned_alloc(size_t alignment, size_t bytes) {
    if (!power_of_two(alignment)) { errno = EINVAL; return NULL; }
    return far_or_near(bytes, alignment);
}

void *memalign(size_t alignment, size_t bytes) {
    // glibc rounds an alignment that is not a power of two up to one.
    if (alignment > SIZE_MAX / 2 + 1) { errno = EINVAL; return NULL; }
    if (!power_of_two(alignment)) alignment = alignment ? (size_t)1 << (64 - __builtin_clzl(alignment)) : 1;
    return far_or_near(bytes, alignment);
}

void *valloc(size_t bytes) { return far_or_near(bytes, 4096); }

void *pvalloc(size_t bytes) {
    if (bytes > SIZE_MAX - 4095) { errno = ENOMEM; return NULL; }
    return far_or_near((bytes + 4095) & ~(size_t)4095, 4096);
}

size_t malloc_usable_size(void *pointer) { return pointer ? usable_size(pointer) : 0; }
