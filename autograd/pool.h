/* pool.h: blocks that are freed one by one, for the gradients of intermediate tensors.

   The backward allocates a gradient for every intermediate tensor it reaches, and a tensor's
   gradient is dead once the op that produced the tensor has run its backward (every op that
   read the tensor came later on the tape, so it has already added its part). In the step
   arena those gradients would stay until the next step: on the cin256 UNet that doubled the
   step's memory. The pool hands them out from its own arena and takes them back; a freed block
   goes on a free list of its size, and the next request of that size, or of a size up to a
   third smaller, reuses it. A UNet has few distinct tensor sizes, so the pool's footprint
   follows the blocks alive at once, not all of them.

       BlockPool p; if (pool_init(&p, (size_t)8 << 30, &e)) return e.code;  // address space only
       float *g = pool_alloc(&p, n * sizeof(float));                    // NULL when full
       pool_free(&p, g);
       pool_reset(&p);                                                   // everything free again

   No malloc after init: the size table is fixed (POOL_MAX_SIZES; a block of a size the table has
   no room for is not reused, only released by pool_reset).
*/
#ifndef EFFDM_POOL_H
#define EFFDM_POOL_H

#include <stddef.h>

#include "autograd/arena.h"

#define POOL_MAX_SIZES 512

typedef struct {
    size_t bytes;   // aligned block size
    void *head;     // first free block (its first bytes hold the next one), or NULL
} BlockPoolBin;

typedef struct {
    Arena space;
    BlockPoolBin bins[POOL_MAX_SIZES];
    int n_bins;
    size_t live;    // bytes handed out and not freed (block sizes, headers not counted)
    size_t peak;    // largest `live` since init
} BlockPool;

// Reserves capacity bytes of address space. 0 or ERR_NOMEM.
int pool_init(BlockPool *p, size_t capacity, Err *e);
// Releases the reservation; accepts a zeroed BlockPool.
void pool_free_all(BlockPool *p);
// 64-byte aligned block of at least `bytes` (uninitialised; a 64-byte header before it holds
// its size); NULL if it does not fit.
void *pool_alloc(BlockPool *p, size_t bytes);
// Gives back a block pool_alloc returned (NULL: nothing).
void pool_free(BlockPool *p, void *block);
// 1 if ptr lies in the pool's space.
int pool_owns(const BlockPool *p, const void *ptr);
// Every block becomes free again (the free lists are dropped with them).
void pool_reset(BlockPool *p);

#endif
