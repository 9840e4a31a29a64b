/* grow.h: the one growable-array step of effdm's tables (parameter tables, writer lists,
   parsed nodes): capacity doubling with an overflow check. */
#ifndef EFFDM_GROW_H
#define EFFDM_GROW_H

#include <stddef.h>

// Makes *arr (elements of elsize, capacity *cap) hold at least need elements: doubles *cap
// from first (when 0) until it does, and reallocs. 0, or -1 (out of memory or overflow: *arr
// and *cap unchanged).
int grow_array(void **arr, int *cap, int need, int first, size_t elsize);

#endif
