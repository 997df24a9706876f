// C++ operator new and delete. libstdc++'s call malloc (and come here), but
// an allocator library may define its own (Debian's jemalloc does), and the
// Swift runtime's C++ parts would then reach the program's allocator
// directly. Each operator here serves far and private blocks itself and hands
// everything else to the next definition, which keeps its own semantics
// (std::bad_alloc, nothrow). Names are the Itanium C++ ABI's for x86-64 and
// aarch64 (size_t is unsigned long: "m").
#define _GNU_SOURCE
#include "farmem_preload.h"
#include <dlfcn.h>
#include <stdlib.h>
#include <unistd.h>

static void *next_operator(void **cache, const char *name) {
    void *found = __atomic_load_n(cache, __ATOMIC_ACQUIRE);
    if (!found) {
        found = dlsym(RTLD_NEXT, name);
        __atomic_store_n(cache, found, __ATOMIC_RELEASE);
    }
    return found;
}

/// A far or private block for this new, or NULL (the next definition serves it).
static void *own_block(size_t bytes, size_t alignment) {
    if (fm_goes_far(bytes)) {
        void *far = fm_far_allocate(bytes, alignment, fm_far_block);
        if (far) return far;
    }
    if (fm_internal) {
        void *block = fm_private_allocate(bytes, alignment);
        if (!block) fm_fatal("farmem: the library's private heap is exhausted\n");
        return block;
    }
    return NULL;
}

/// Frees a far or private block; false for anything else.
static bool freed_own_block(void *pointer) {
    if (!pointer) return true;
    if (fm_private_owns(pointer)) { fm_private_free(pointer); return true; }
    return !fm_internal && fm_far_free(pointer);
}

#define NEW(symbol, parameters, arguments, bytes, alignment)                                   \
    void *symbol parameters {                                                                  \
        void *block = own_block(bytes, alignment);                                             \
        if (block) return block;                                                               \
        static void *next;                                                                     \
        void *(*function) parameters = (void *(*) parameters)next_operator(&next, #symbol);    \
        return function ? function arguments : malloc(bytes);                                  \
    }

#define DELETE(symbol, parameters, arguments)                                                  \
    void symbol parameters {                                                                   \
        if (freed_own_block(pointer)) return;                                                  \
        static void *next;                                                                     \
        void (*function) parameters = (void (*) parameters)next_operator(&next, #symbol);      \
        if (function) function arguments; else free(pointer);                                  \
    }

typedef struct { int unused; } nothrow_t;   // passed by reference: only its address matters

NEW(_Znwm, (size_t bytes), (bytes), bytes, 0)
NEW(_Znam, (size_t bytes), (bytes), bytes, 0)
NEW(_ZnwmRKSt9nothrow_t, (size_t bytes, const nothrow_t *tag), (bytes, tag), bytes, 0)
NEW(_ZnamRKSt9nothrow_t, (size_t bytes, const nothrow_t *tag), (bytes, tag), bytes, 0)
NEW(_ZnwmSt11align_val_t, (size_t bytes, size_t alignment), (bytes, alignment), bytes, alignment)
NEW(_ZnamSt11align_val_t, (size_t bytes, size_t alignment), (bytes, alignment), bytes, alignment)
NEW(_ZnwmSt11align_val_tRKSt9nothrow_t, (size_t bytes, size_t alignment, const nothrow_t *tag), (bytes, alignment, tag), bytes, alignment)
NEW(_ZnamSt11align_val_tRKSt9nothrow_t, (size_t bytes, size_t alignment, const nothrow_t *tag), (bytes, alignment, tag), bytes, alignment)

DELETE(_ZdlPv, (void *pointer), (pointer))
DELETE(_ZdaPv, (void *pointer), (pointer))
DELETE(_ZdlPvm, (void *pointer, size_t bytes), (pointer, bytes))
DELETE(_ZdaPvm, (void *pointer, size_t bytes), (pointer, bytes))
DELETE(_ZdlPvRKSt9nothrow_t, (void *pointer, const nothrow_t *tag), (pointer, tag))
DELETE(_ZdaPvRKSt9nothrow_t, (void *pointer, const nothrow_t *tag), (pointer, tag))
DELETE(_ZdlPvSt11align_val_t, (void *pointer, size_t alignment), (pointer, alignment))
DELETE(_ZdaPvSt11align_val_t, (void *pointer, size_t alignment), (pointer, alignment))
DELETE(_ZdlPvmSt11align_val_t, (void *pointer, size_t bytes, size_t alignment), (pointer, bytes, alignment))
DELETE(_ZdaPvmSt11align_val_t, (void *pointer, size_t bytes, size_t alignment), (pointer, bytes, alignment))
DELETE(_ZdlPvSt11align_val_tRKSt9nothrow_t, (void *pointer, size_t alignment, const nothrow_t *tag), (pointer, alignment, tag))
DELETE(_ZdaPvSt11align_val_tRKSt9nothrow_t, (void *pointer, size_t alignment, const nothrow_t *tag), (pointer, alignment, tag))
