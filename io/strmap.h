/* strmap.h: a string -> int hash map (open addressing, FNV-1a) for tensor-name indexes:
   weights_find, duplicate names in a checkpoint's state dict or a safetensors header.
   Keys are not copied: they must outlive the map.

       StrMap m = {0};
       int old;
       if (strmap_put(&m, name, i, &old) < 0) ...nomem...;   // 1: name was there (old = its value)
       int i = strmap_get(&m, name);                          // -1 when absent
       strmap_free(&m);
*/
#ifndef EFFDM_STRMAP_H
#define EFFDM_STRMAP_H

#include <stddef.h>

typedef struct {
    const char **keys;
    int *vals;
    size_t cap;  // a power of two, or 0
    size_t n;
} StrMap;

// Inserts key -> val, or replaces the value of an existing key (its old value in *old when
// old != NULL). 0 inserted, 1 replaced, -1 out of memory.
int strmap_put(StrMap *m, const char *key, int val, int *old);
// The value of key, or -1.
int strmap_get(const StrMap *m, const char *key);
// Frees the table (not the keys); accepts a zeroed map.
void strmap_free(StrMap *m);

#endif
