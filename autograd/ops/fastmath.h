/* fastmath.h: exp, sigmoid and the normal CDF / density as plain float arithmetic that the
   compiler vectorizes, for the element-wise loops of the ops (softmax, SiLU, GELU, GEGLU).
   libm's expf / erff are a call per element: in perf of integer sampling, erf, exp and SiLU
   were 20% of the run. Each is within a few 1e-7 relative of the double-precision function
   (tests/test_ops_pointwise.c checks SiLU and GELU, forward and backward, on a dense grid);
   they do not give libm's bits.

   Selects are written with integer masks: a float `?:` kept GCC from vectorizing these
   loops. FASTMATH_CLONES compiles a function for AVX-512, AVX2 and baseline x86-64, picked
   at load time (the build targets baseline x86-64). The clones give identical bits: no loop
   here reorders a float sum, and ISO C mode (-std=c11) keeps GCC from fusing multiply-adds. */
#ifndef EFFDM_FASTMATH_H
#define EFFDM_FASTMATH_H

#include <math.h>
#include <stdint.h>
#include <string.h>

#if defined(__x86_64__) && defined(__GNUC__)
#define FASTMATH_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define FASTMATH_CLONES
#endif

// a where mask is all ones, b where it is zero
static inline float fm_select(uint32_t mask, float a, float b) {
    uint32_t ab, bb;
    memcpy(&ab, &a, sizeof ab);
    memcpy(&bb, &b, sizeof bb);
    uint32_t r = (ab & mask) | (bb & ~mask);
    float y;
    memcpy(&y, &r, sizeof y);
    return y;
}

/* e^x for x <= 0 (and small positive x, |x| < ln2 / 2). Range reduction x = k ln2 + r,
   |r| <= ln2 / 2, then a degree-7 Taylor polynomial (truncation 5e-9 relative) scaled by
   2^k built in the exponent bits: within 1e-7 relative of exp over [-87, 0]. Below -87.3
   (e^x < FLT_MIN) it returns 0; NaN stays NaN. */
static inline float exp_nonpos(float x) {
    const float shifter = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
    float t = x * 1.44269504f + shifter;
    float k = t - shifter;
    float r = x - k * 0.693145752f;      // ln2 in two parts: k * the first is exact
    r = r - k * 1.42860677e-6f;
    float p = 1.0f / 5040;
    p = p * r + 1.0f / 720;
    p = p * r + 1.0f / 120;
    p = p * r + 1.0f / 24;
    p = p * r + 1.0f / 6;
    p = p * r + 0.5f;
    p = p * r + 1.0f;
    p = p * r + 1.0f;
    // t's bits are 0x4B400000 + k: rebuild 2^k as exponent bits k + 127. Unsigned, so
    // that out-of-range k (x < -87.3, masked below; NaN) wraps instead of being undefined.
    uint32_t tb;
    memcpy(&tb, &t, sizeof tb);
    uint32_t eb = (tb - 0x4B400000u + 127u) << 23;
    float two_k;
    memcpy(&two_k, &eb, sizeof two_k);
    return fm_select(0u - (uint32_t)!(x < -87.3f), p * two_k, 0.0f);
}

// 1 / (1 + e^-x): e^-|x| never overflows; for x < 0 the value is e^x / (1 + e^x).
static inline float sigmoid_f(float x) {
    float z = exp_nonpos(-fabsf(x));
    float s = 1.0f / (1.0f + z);
    return fm_select(0u - (uint32_t)(x < 0.0f), z * s, s);
}

/* e^(extra - x^2 / 2) for extra <= 0 (or tiny), accurate where x^2 / 2 is large: x^2 in
   float would carry a rounding error of about 1e-7 x^2 into the exponent (1e-6 relative at
   x = 4). x = h + l with h the top 12 significand bits: h^2 is exact, and the rest,
   l (2h + l), is small enough for float. Two exponentials instead of one. */
static inline float exp_neg_half_sq(float x, float extra) {
    float ax = fabsf(x);
    uint32_t b;
    memcpy(&b, &ax, sizeof b);
    b &= 0xFFFFF000u;
    float h;
    memcpy(&h, &b, sizeof h);
    float l = ax - h;                // exact
    float big = -0.5f * (h * h);     // exact
    float rest = extra - 0.5f * (l * (h + h + l));
    return exp_nonpos(big) * exp_nonpos(rest);
}

/* Phi(x) = 0.5 erfc(-x / sqrt 2), the standard normal CDF. erfc(z) for z >= 0 by the
   Chebyshev fit of Numerical Recipes' erfcc (fractional error < 1.2e-7 for every z >= 0):
   t = 1 / (1 + z/2), erfc(z) = t exp(-z^2 + P(t)), z^2 = x^2 / 2. P(t) <= 0 for z >= 0.
   Phi(x) = 1 - erfc/2 for x >= 0, erfc/2 for x < 0: the small tail keeps its relative
   accuracy (libm's 1 + erff(x / sqrt 2) cancels to 0 there). */
static inline float normal_cdf(float x) {
    float z = fabsf(x) * 0.70710678118654752440f;
    float t = 1.0f / (1.0f + 0.5f * z);
    float p = 0.17087277f;
    p = p * t - 0.82215223f;
    p = p * t + 1.48851587f;
    p = p * t - 1.13520398f;
    p = p * t + 0.27886807f;
    p = p * t - 0.18628806f;
    p = p * t + 0.09678418f;
    p = p * t + 0.37409196f;
    p = p * t + 1.00002368f;
    p = p * t - 1.26551223f;
    float half_erfc = 0.5f * t * exp_neg_half_sq(x, p);
    return fm_select(0u - (uint32_t)(x < 0.0f), half_erfc, 1.0f - half_erfc);
}

// e^(-x^2 / 2) / sqrt(2 pi), the standard normal density
static inline float normal_pdf(float x) { return exp_neg_half_sq(x, 0.0f) * 0.39894228040143267794f; }

#endif
