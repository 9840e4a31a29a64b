#include "util/grow.h"

#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int grow_array(void **arr, int *cap, int need, int first, size_t elsize) {
    if (need <= *cap) return 0;
    long long n = *cap > 0 ? *cap : (first > 0 ? first : 1);
    while (n < need) n *= 2;
    if (n > INT_MAX || (size_t)n > SIZE_MAX / elsize) return -1;
    void *a = realloc(*arr, (size_t)n * elsize);
    if (!a) return -1;
    *arr = a;
    *cap = (int)n;
    return 0;
}

int grow_text_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n) {
    if (n > SIZE_MAX - *len - 1) return -1;
    if (*len + n + 1 > *cap) {
        size_t c = *cap ? *cap : 256;
        while (c < *len + n + 1) {
            if (c > SIZE_MAX / 2) return -1;
            c *= 2;
        }
        char *b = realloc(*buf, c);
        if (!b) return -1;
        *buf = b;
        *cap = c;
    }
    memcpy(*buf + *len, s, n);
    *len += n;
    (*buf)[*len] = '\0';
    return 0;
}

void *keep_alloc(KeepList *k, size_t bytes) {
    if (grow_array((void **)&k->p, &k->cap, k->n + 1, 64, sizeof *k->p)) return NULL;
    void *b = malloc(bytes ? bytes : 1);
    if (b) k->p[k->n++] = b;
    return b;
}

void keep_free(KeepList *k) {
    for (int i = 0; i < k->n; i++) free(k->p[i]);
    free(k->p);
    memset(k, 0, sizeof *k);
}
