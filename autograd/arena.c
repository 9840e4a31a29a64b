#include "autograd/arena.h"

#include <string.h>
#include <sys/mman.h>

int arena_init(Arena *a, size_t capacity, Err *e) {
    memset(a, 0, sizeof *a);
    capacity = (capacity + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    void *p = mmap(NULL, capacity, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (p == MAP_FAILED)
        return err_set(e, ERR_NOMEM, "arena: cannot reserve %zu bytes of address space", capacity);
    a->base = p;
    a->capacity = capacity;
    return 0;
}

void arena_free(Arena *a) {
    if (a->base) munmap(a->base, a->capacity);
    memset(a, 0, sizeof *a);
}

void *arena_alloc(Arena *a, size_t bytes) {
    size_t rounded = (bytes + ARENA_ALIGN - 1) / ARENA_ALIGN * ARENA_ALIGN;
    if (rounded < bytes || rounded > a->capacity - a->used) {
        a->failed_bytes = bytes;
        return NULL;
    }
    void *p = a->base + a->used;
    a->used += rounded;
    if (a->used > a->peak) a->peak = a->used;
    return p;
}

void *arena_calloc(Arena *a, size_t bytes) {
    void *p = arena_alloc(a, bytes);
    if (p) memset(p, 0, bytes);
    return p;
}

void arena_reset(Arena *a) { a->used = 0; }

size_t arena_mark(const Arena *a) { return a->used; }

void arena_release(Arena *a, size_t mark) {
    if (mark <= a->used) a->used = mark;
}
