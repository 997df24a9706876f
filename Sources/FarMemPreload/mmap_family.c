// mmap and its relatives. An anonymous, private, read-write mapping of at
// least FARMEM_MIN_ALLOC bytes that the program lets the kernel place is a
// far block (allocators such as jemalloc and the JVM map their arenas
// themselves); munmap, mremap and madvise on far blocks act on the arena.
#define _GNU_SOURCE
#include "farmem_preload.h"
#include <errno.h>
#include <stdarg.h>
#include <sys/mman.h>

static bool touches_far(void *address, size_t length) {
    return !fm_internal && length > 0 && fm_far_overlaps(address, length);
}

static bool far_mapping(void *address, size_t length, int protection, int flags) {
    (void)address;   // a hint without MAP_FIXED may be ignored, as the kernel may
    return fm_goes_far(length) && (flags & MAP_ANONYMOUS) && (flags & MAP_TYPE) == MAP_PRIVATE &&
        !(flags & (MAP_FIXED | MAP_FIXED_NOREPLACE | MAP_GROWSDOWN | MAP_STACK | MAP_HUGETLB | MAP_32BIT)) &&
        protection == (PROT_READ | PROT_WRITE);
}

void *mmap(void *address, size_t length, int protection, int flags, int descriptor, off_t offset) {
    if (far_mapping(address, length, protection, flags)) {
        void *far = fm_far_allocate(length, 0, fm_far_mapping);
        if (far) return far;
    }
    if (!fm_internal && (flags & MAP_FIXED) && fm_state == fm_state_far && touches_far(address, length)) {
        fm_far_forget(address, length);
    }
    return fm_real()->mmap(address, length, protection, flags, descriptor, offset);
}

void *mmap64(void *address, size_t length, int protection, int flags, int descriptor, off_t offset)
    __attribute__((alias("mmap")));


int munmap(void *address, size_t length) {
    if (touches_far(address, length)) return fm_far_unmap(address, length);
    return fm_real()->munmap(address, length);
}

void *mremap(void *old_address, size_t old_length, size_t new_length, int flags, ...) {
    void *new_address = NULL;
    if (flags & MREMAP_FIXED) {
        va_list arguments;
        va_start(arguments, flags);
        new_address = va_arg(arguments, void *);
        va_end(arguments);
    }
    if (!fm_internal && fm_state != fm_state_forked && fm_far_contains(old_address, fm_far_mapping)) {
        return fm_far_remap(old_address, old_length, new_length, flags);
    }
    return fm_real()->mremap(old_address, old_length, new_length, flags, new_address);
}

int madvise(void *address, size_t length, int advice) {
    if (touches_far(address, length)) {
        switch (advice) {
        // Far regions stay 4 KiB pages (the pager installs small pages) and
        // are never inherited by a child (see README, fork): accepted, no effect.
        case MADV_HUGEPAGE: case MADV_NOHUGEPAGE: case MADV_DOFORK: case MADV_DONTFORK:
            return 0;
        // MADV_FREE would leave pages mapped that the pager counts as gone
        // (it sees the same REMOVE event): dropped at once instead, which
        // MADV_FREE allows.
        case MADV_FREE:
            advice = MADV_DONTNEED;
            break;
        default:
            break;   // MADV_DONTNEED reaches the pager as a REMOVE event
        }
    }
    return fm_real()->madvise(address, length, advice);
}
