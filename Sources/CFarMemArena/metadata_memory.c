// Metadata pages by the raw mmap system call: the preload library interposes
// mmap itself, and a table it grows while serving malloc must not come back
// to it.
#define _GNU_SOURCE
#include "metadata_memory.h"
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

static size_t rounded(size_t bytes) { return (bytes + 4095) & ~(size_t)4095; }

void *fm_metadata_resize(void *memory, size_t old_bytes, size_t new_bytes) {
    void *fresh = NULL;
    if (new_bytes) {
        long address = syscall(SYS_mmap, NULL, rounded(new_bytes), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (address == -1) return NULL;   // syscall(2) returns -1 and sets errno
        fresh = (void *)address;
        if (memory) memcpy(fresh, memory, old_bytes < new_bytes ? old_bytes : new_bytes);
    }
    if (memory && old_bytes) syscall(SYS_munmap, memory, rounded(old_bytes));
    return fresh;
}
