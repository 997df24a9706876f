// Memory for the arena's own tables, straight from the kernel (never malloc,
// which the arena serves).
#ifndef FARMEM_METADATA_MEMORY_H
#define FARMEM_METADATA_MEMORY_H
#include <stddef.h>
/// Moves `old_bytes` of `memory` into a mapping of `new_bytes` (0 frees it).
/// The new memory, or NULL.
void *fm_metadata_resize(void *memory, size_t old_bytes, size_t new_bytes);
#endif
