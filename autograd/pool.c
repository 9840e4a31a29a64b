#include "autograd/pool.h"

#include <string.h>

// Each block is preceded by one ARENA_ALIGN header holding its size, so that a block can
// serve a smaller request and still go back to the free list of its own size.
#define POOL_HDR ARENA_ALIGN

int pool_init(BlockPool *p, size_t capacity, Err *e) {
    memset(p, 0, sizeof *p);
    return arena_init(&p->space, capacity, e);
}

void pool_free_all(BlockPool *p) {
    arena_free(&p->space);
    memset(p, 0, sizeof *p);
}

static size_t aligned(size_t bytes) { return (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN; }

static size_t block_size(const void *blk) {
    size_t s;
    memcpy(&s, (const unsigned char *)blk - POOL_HDR, sizeof s);
    return s;
}

// The bin of blocks of exactly `bytes`, created when `create`; NULL if absent or no room.
static BlockPoolBin *bin_of(BlockPool *p, size_t bytes, int create) {
    for (int i = 0; i < p->n_bins; i++)
        if (p->bins[i].bytes == bytes) return &p->bins[i];
    if (!create || p->n_bins == POOL_MAX_SIZES) return NULL;
    BlockPoolBin *b = &p->bins[p->n_bins++];
    b->bytes = bytes;
    b->head = NULL;
    return b;
}

// The non-empty bin of the smallest size in [bytes, bytes + bytes / 2]: a free block of a
// somewhat larger size serves the request rather than new memory (weights of many sizes).
static BlockPoolBin *bin_fit(BlockPool *p, size_t bytes) {
    BlockPoolBin *best = NULL;
    for (int i = 0; i < p->n_bins; i++) {
        BlockPoolBin *b = &p->bins[i];
        if (b->head && b->bytes >= bytes && b->bytes - bytes <= bytes / 2 && (!best || b->bytes < best->bytes)) best = b;
    }
    return best;
}

void *pool_alloc(BlockPool *p, size_t bytes) {
    size_t a = aligned(bytes ? bytes : 1);
    if (a < bytes) return NULL;
    BlockPoolBin *b = bin_fit(p, a);
    unsigned char *blk;
    if (b) {
        blk = b->head;
        memcpy(&b->head, blk, sizeof(void *));
        a = b->bytes;
    } else {
        unsigned char *raw = arena_alloc(&p->space, POOL_HDR + a);
        if (!raw) return NULL;
        blk = raw + POOL_HDR;
        memcpy(raw, &a, sizeof a);
    }
    p->live += a;
    if (p->live > p->peak) p->peak = p->live;
    return blk;
}

void pool_free(BlockPool *p, void *block) {
    if (!block) return;
    size_t a = block_size(block);
    p->live -= a;
    BlockPoolBin *b = bin_of(p, a, 1);
    if (!b) return;  // no room in the size table: the block waits for pool_reset
    memcpy(block, &b->head, sizeof(void *));
    b->head = block;
}

int pool_owns(const BlockPool *p, const void *ptr) {
    const unsigned char *c = ptr;
    return p->space.base && c >= p->space.base && c < p->space.base + p->space.used;
}

void pool_reset(BlockPool *p) {
    arena_reset(&p->space);
    p->n_bins = 0;
    p->live = 0;
}
