// Byte counts in environment variables (FARMEM_BUDGET=256MiB).
#include "farmem_arena.h"
#include <string.h>
#include <strings.h>

int fm_parse_bytes(const char *text, uint64_t *bytes) {
    if (!text || !*text) return -1;
    uint64_t value = 0;
    const char *p = text;
    if (*p < '0' || *p > '9') return -1;
    for (; *p >= '0' && *p <= '9'; p++) {
        if (value > (UINT64_MAX - 9) / 10) return -1;
        value = value * 10 + (uint64_t)(*p - '0');
    }
    static const struct { const char *suffix; unsigned shift; } units[] = {
        {"", 0}, {"B", 0}, {"K", 10}, {"KB", 10}, {"KiB", 10}, {"M", 20}, {"MB", 20}, {"MiB", 20},
        {"G", 30}, {"GB", 30}, {"GiB", 30}, {"T", 40}, {"TB", 40}, {"TiB", 40},
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++) {
        if (strcasecmp(p, units[i].suffix) != 0) continue;
        if (units[i].shift && value > (UINT64_MAX >> units[i].shift)) return -1;
        *bytes = value << units[i].shift;
        return 0;
    }
    return -1;
}
