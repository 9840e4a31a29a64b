/* grow.h: the one growable-array step of effdm's tables (parameter tables, writer lists)
   and text buffers (the YAML and safetensors-header writers): capacity doubling with an
   overflow check. */
#ifndef EFFDM_GROW_H
#define EFFDM_GROW_H

#include <stddef.h>

// Makes *arr (elements of elsize, capacity *cap) hold at least need elements: doubles *cap
// from first (when 0) until it does, and reallocs. 0, or -1 (out of memory or overflow: *arr
// and *cap unchanged).
int grow_array(void **arr, int *cap, int need, int first, size_t elsize);

// Appends n bytes of s to the text *buf (length *len, capacity *cap), which stays
// NUL-terminated: capacity doubled from 256. 0, or -1 when out of memory (text unchanged).
int grow_text_append(char **buf, size_t *len, size_t *cap, const char *s, size_t n);

// Allocations that must live until one point (the safetensors writer copies tensor data at
// st_write): each keep_alloc is freed by keep_free.
typedef struct {
    void **p;
    int n, cap;
} KeepList;

// bytes of malloc'd memory (at least 1), owned by k; NULL when out of memory.
void *keep_alloc(KeepList *k, size_t bytes);
// Frees everything k holds; k is empty (and reusable) after.
void keep_free(KeepList *k);

#endif
