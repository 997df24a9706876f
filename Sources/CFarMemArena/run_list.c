// Sorted, non-overlapping page runs (see farmem_arena.h).
#include "farmem_arena.h"
#include "metadata_memory.h"
#include <string.h>

static int reserve(fm_run_list_t *list, size_t needed) {
    if (needed <= list->capacity) return 0;
    size_t capacity = list->capacity ? list->capacity * 2 : 64;
    while (capacity < needed) capacity *= 2;
    fm_run_t *runs = fm_metadata_resize(list->runs, list->capacity * sizeof(fm_run_t), capacity * sizeof(fm_run_t));
    if (!runs) return -1;
    list->runs = runs;
    list->capacity = capacity;
    return 0;
}

/// The index of the first run that starts after `page` (binary search).
static size_t first_after(const fm_run_list_t *list, uint64_t page) {
    size_t low = 0, high = list->count;
    while (low < high) {
        size_t middle = (low + high) / 2;
        if (list->runs[middle].start <= page) low = middle + 1; else high = middle;
    }
    return low;
}

long fm_runs_find(const fm_run_list_t *list, uint64_t page) {
    size_t after = first_after(list, page);
    if (after == 0) return -1;
    const fm_run_t *run = &list->runs[after - 1];
    return page < run->start + run->count ? (long)(after - 1) : -1;
}

static void remove_at(fm_run_list_t *list, size_t index) {
    memmove(&list->runs[index], &list->runs[index + 1], (list->count - index - 1) * sizeof(fm_run_t));
    list->count--;
}

int fm_runs_insert(fm_run_list_t *list, uint64_t start, uint64_t count, bool merge) {
    if (count == 0) return 0;
    size_t at = first_after(list, start);
    if (merge) {
        bool joins_left = at > 0 && list->runs[at - 1].start + list->runs[at - 1].count == start;
        bool joins_right = at < list->count && list->runs[at].start == start + count;
        if (joins_left && joins_right) {
            list->runs[at - 1].count += count + list->runs[at].count;
            remove_at(list, at);
            return 0;
        }
        if (joins_left) { list->runs[at - 1].count += count; return 0; }
        if (joins_right) { list->runs[at].start = start; list->runs[at].count += count; return 0; }
    }
    if (reserve(list, list->count + 1) != 0) return -1;
    memmove(&list->runs[at + 1], &list->runs[at], (list->count - at) * sizeof(fm_run_t));
    list->runs[at] = (fm_run_t){start, count};
    list->count++;
    return 0;
}

/// Removes [start, start + count) from run `index`, which holds it.
static int carve(fm_run_list_t *list, size_t index, uint64_t start, uint64_t count) {
    fm_run_t run = list->runs[index];
    uint64_t end = start + count, run_end = run.start + run.count;
    if (start == run.start && end == run_end) { remove_at(list, index); return 0; }
    if (start == run.start) { list->runs[index].start = end; list->runs[index].count = run_end - end; return 0; }
    if (end == run_end) { list->runs[index].count = start - run.start; return 0; }
    // A hole in the middle: the run splits in two.
    if (reserve(list, list->count + 1) != 0) return -1;
    memmove(&list->runs[index + 2], &list->runs[index + 1], (list->count - index - 1) * sizeof(fm_run_t));
    list->runs[index].count = start - run.start;
    list->runs[index + 1] = (fm_run_t){end, run_end - end};
    list->count++;
    return 0;
}

int fm_runs_take(fm_run_list_t *list, uint64_t count, uint64_t align, uint64_t base_page, uint64_t *start) {
    if (count == 0) return -1;
    if (align == 0) align = 1;
    for (size_t i = 0; i < list->count; i++) {
        uint64_t first = (list->runs[i].start + base_page + align - 1) / align * align - base_page;
        if (first + count > list->runs[i].start + list->runs[i].count) continue;
        if (carve(list, i, first, count) != 0) return -1;
        *start = first;
        return 0;
    }
    return -1;
}

int fm_runs_take_at(fm_run_list_t *list, uint64_t start, uint64_t count) {
    long index = fm_runs_find(list, start);
    if (index < 0 || count == 0) return -1;
    if (start + count > list->runs[index].start + list->runs[index].count) return -1;
    return carve(list, (size_t)index, start, count);
}

void fm_runs_release_memory(fm_run_list_t *list) {
    fm_metadata_resize(list->runs, list->capacity * sizeof(fm_run_t), 0);
    *list = (fm_run_list_t){0};
}
