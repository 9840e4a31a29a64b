/* arena.h: bump allocator for per-step tensors (activations, saved-for-backward values,
   im2col scratch, gradients of intermediates). Reset once per optimizer step, so the hot
   loop never calls malloc.

       Arena a; if (arena_init(&a, (size_t)8 << 30, &e)) return e.code;  // reserves address space only
       float *x = arena_alloc(&a, n * sizeof(float));                       // NULL when full
       arena_reset(&a);

   The capacity is reserved as virtual memory (mmap, MAP_NORESERVE): pages become resident
   when first touched, so peak RSS follows what a step really uses (a->peak).
   An arena that runs out returns NULL and records the request in a->failed_bytes; it never
   falls back to malloc.
*/
#ifndef EFFDM_ARENA_H
#define EFFDM_ARENA_H

#include <stddef.h>

#include "util/err.h"

#define ARENA_ALIGN 64

typedef struct {
    unsigned char *base;
    size_t capacity;     // bytes reserved
    size_t used;         // bytes handed out (aligned)
    size_t peak;         // largest `used` seen since init
    size_t failed_bytes; // size of the last request that did not fit (0: none)
} Arena;

// Reserves capacity bytes of address space. 0 or ERR_NOMEM.
int arena_init(Arena *a, size_t capacity, Err *e);
// Releases the reservation; accepts a zeroed Arena.
void arena_free(Arena *a);
// 64-byte aligned block of `bytes` (uninitialised); NULL if it does not fit.
void *arena_alloc(Arena *a, size_t bytes);
// Like arena_alloc, zero-filled.
void *arena_calloc(Arena *a, size_t bytes);
// Everything handed out becomes free again.
void arena_reset(Arena *a);
// Current position, to release back to later.
size_t arena_mark(const Arena *a);
// Frees everything allocated after mark.
void arena_release(Arena *a, size_t mark);

#endif
