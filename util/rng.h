/* rng.h: the one seedable random generator (PCG32, O'Neill 2014, XSH-RR variant).
   Its whole state is two uint64 values, saved in run checkpoints so a resumed run draws
   the same numbers. Normal draws use Box-Muller and cache nothing, so the state alone
   determines every future draw.

       Rng r; rng_seed(&r, 1234, 0);
       rng_normal_fill(&r, x, n);     // x[i] ~ N(0, 1)
*/
#ifndef EFFDM_RNG_H
#define EFFDM_RNG_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    uint64_t state;
    uint64_t inc;  // stream selector, always odd
} Rng;

// Seeds the generator; different streams give independent sequences for one seed.
void rng_seed(Rng *r, uint64_t seed, uint64_t stream);
// Next uniform 32-bit value.
uint32_t rng_u32(Rng *r);
// Uniform float in [0, 1) with 24 random bits.
float rng_uniform(Rng *r);
// Uniform integer in [0, n) without modulo bias; n > 0.
uint32_t rng_below(Rng *r, uint32_t n);
// Fills x[0..n) with N(0, 1) draws (pairs from Box-Muller in double; an odd tail uses one draw of a pair).
void rng_normal_fill(Rng *r, float *x, size_t n);
// Fills x[0..n) with uniform draws in [lo, hi).
void rng_uniform_fill(Rng *r, float *x, size_t n, float lo, float hi);

#endif
