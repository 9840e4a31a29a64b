#include "io/strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static uint64_t fnv1a(const char *s) {
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static size_t slot(const StrMap *m, const char *key) {
    size_t i = (size_t)fnv1a(key) & (m->cap - 1);
    while (m->keys[i] && strcmp(m->keys[i], key) != 0) i = (i + 1) & (m->cap - 1);
    return i;
}

static int rehash(StrMap *m, size_t cap) {
    StrMap n = {calloc(cap, sizeof(char *)), calloc(cap, sizeof(int)), cap, m->n};
    if (!n.keys || !n.vals) {
        free(n.keys);
        free(n.vals);
        return -1;
    }
    for (size_t i = 0; i < m->cap; i++) {
        if (!m->keys[i]) continue;
        size_t j = slot(&n, m->keys[i]);
        n.keys[j] = m->keys[i];
        n.vals[j] = m->vals[i];
    }
    strmap_free(m);
    *m = n;
    return 0;
}

int strmap_put(StrMap *m, const char *key, int val, int *old) {
    if (2 * (m->n + 1) > m->cap && rehash(m, m->cap ? 2 * m->cap : 16)) return -1;  // load <= 1/2
    size_t i = slot(m, key);
    if (m->keys[i]) {
        if (old) *old = m->vals[i];
        m->vals[i] = val;
        return 1;
    }
    m->keys[i] = key;
    m->vals[i] = val;
    m->n++;
    return 0;
}

int strmap_get(const StrMap *m, const char *key) {
    if (!m->cap) return -1;
    size_t i = slot(m, key);
    return m->keys[i] ? m->vals[i] : -1;
}

void strmap_free(StrMap *m) {
    free(m->keys);
    free(m->vals);
    memset(m, 0, sizeof *m);
}
