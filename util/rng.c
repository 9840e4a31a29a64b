#include "util/rng.h"

#include <math.h>

void rng_seed(Rng *r, uint64_t seed, uint64_t stream) {
    r->state = 0;
    r->inc = (stream << 1u) | 1u;
    rng_u32(r);
    r->state += seed;
    rng_u32(r);
}

uint32_t rng_u32(Rng *r) {
    uint64_t old = r->state;
    r->state = old * 6364136223846793005ULL + r->inc;
    uint32_t xorshifted = (uint32_t)(((old >> 18u) ^ old) >> 27u);
    uint32_t rot = (uint32_t)(old >> 59u);
    return (xorshifted >> rot) | (xorshifted << ((-rot) & 31));
}

float rng_uniform(Rng *r) {
    return (float)(rng_u32(r) >> 8) * (1.0f / 16777216.0f);
}

uint32_t rng_below(Rng *r, uint32_t n) {
    uint32_t threshold = (uint32_t)(-n) % n;  // reject the short first bucket
    for (;;) {
        uint32_t v = rng_u32(r);
        if (v >= threshold) return v % n;
    }
}

static double rng_open01(Rng *r) {
    // 53-bit uniform in (0, 1): never 0, so log() below is finite
    uint64_t hi = rng_u32(r) >> 5, lo = rng_u32(r) >> 6;
    return ((double)(hi * 67108864u + lo) + 0.5) / 9007199254740992.0;
}

void rng_normal_fill(Rng *r, float *x, size_t n) {
    for (size_t i = 0; i < n; i += 2) {
        double u1 = rng_open01(r), u2 = rng_open01(r);
        double rad = sqrt(-2.0 * log(u1)), th = 6.283185307179586 * u2;
        x[i] = (float)(rad * cos(th));
        if (i + 1 < n) x[i + 1] = (float)(rad * sin(th));
    }
}

void rng_uniform_fill(Rng *r, float *x, size_t n, float lo, float hi) {
    for (size_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * rng_uniform(r);
}
