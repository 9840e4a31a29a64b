#include "qalora/pack.h"

#include <string.h>

#include "util/par.h"

// The sizes the format above promises: 7 nibbles take 4 bytes, 5 crumbs 2 bytes.
_Static_assert(PACK_BYTES(7, 4) == 4 && PACK_BYTES(8, 4) == 4, "4-bit: two levels per byte");
_Static_assert(PACK_BYTES(5, 2) == 2 && PACK_BYTES(4, 2) == 1, "2-bit: four levels per byte");
_Static_assert(PACK_BYTES(3, 8) == 3, "8-bit: one level per byte");
_Static_assert(PACK_BYTES(8, 3) == 3 && PACK_BYTES(9, 3) == 4, "3-bit: eight levels in three bytes");

int pack_container_bits(int bits) { return bits <= 2 ? 2 : (bits <= 4 ? bits : 8); }

// Level i of a 3-bit stream: bits 3i .. 3i+2, the second byte read only when they cross into it.
static inline unsigned get3(const uint8_t *src, size_t i) {
    size_t bit = 3 * i, byte = bit >> 3;
    unsigned off = (unsigned)(bit & 7), v = src[byte] >> off;
    if (off > 5) v |= (unsigned)src[byte + 1] << (8 - off);
    return v & 7u;
}

size_t pack_size(size_t n, int bits) { return PACK_BYTES(n, pack_container_bits(bits)); }

void pack_ints(uint8_t *dst, const uint8_t *src, size_t n, int bits) {
    int b = pack_container_bits(bits), per = 8 / b;
    uint8_t mask = (uint8_t)((1u << b) - 1u);
    if (b == 8) {
        memcpy(dst, src, n);
        return;
    }
    memset(dst, 0, pack_size(n, bits));
    if (b == 3) {
        for (size_t i = 0; i < n; i++) {
            size_t bit = 3 * i, byte = bit >> 3;
            unsigned off = (unsigned)(bit & 7), v = src[i] & 7u;
            dst[byte] |= (uint8_t)(v << off);
            if (off > 5) dst[byte + 1] |= (uint8_t)(v >> (8 - off));
        }
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i / per] |= (uint8_t)((src[i] & mask) << ((i % per) * b));
}

void unpack_ints(uint8_t *dst, const uint8_t *src, size_t n, int bits) {
    int b = pack_container_bits(bits), per = 8 / b;
    uint8_t mask = (uint8_t)((1u << b) - 1u);
    if (b == 8) {
        memcpy(dst, src, n);
        return;
    }
    if (b == 3) {
        for (size_t i = 0; i < n; i++) dst[i] = (uint8_t)get3(src, i);
        return;
    }
    for (size_t i = 0; i < n; i++) dst[i] = (uint8_t)((src[i / per] >> ((i % per) * b)) & mask);
}

void unpack_dequant(float *y, const uint8_t *src, int bits, int rows, size_t row_len, const float *delta,
                    const float *zero) {
    int b = pack_container_bits(bits), per = 8 / b;
    unsigned mask = (1u << b) - 1u;
    PAR_FOR(schedule(static), 1,
    for (int r = 0; r < rows; r++) {
        for (size_t j = 0; j < row_len; j++) {
            size_t i = (size_t)r * row_len + j;  // flat index: rows are not byte-aligned
            unsigned level = b == 3 ? get3(src, i) : (src[i / per] >> ((i % per) * b)) & mask;
            y[i] = ((float)level - zero[r]) * delta[r];
        }
    });
}
