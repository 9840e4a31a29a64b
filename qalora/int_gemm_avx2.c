/* int_gemm_avx2.c: the AVX2 variant of int_gemm (int_gemm.h) and the AVX2 activation
   quantizer; compiled with target attributes, called only when the CPU has AVX2.

   Narrow path (4 max|a| max|w| <= 32767, e.g. 8-bit activations x 4-bit weights: 15300):
   _mm256_maddubs_epi16 multiplies u8 activations by s8 weights and adds adjacent pairs
   into s16 with saturation. Two k-groups are summed in s16 before _mm256_madd_epi16
   widens: 4 products, so under that bound nothing saturates and the result is exact.
   Wide path (8-bit x 8-bit, up to 255 * 128): the activations are widened to s16 first
   (_mm256_cvtepu8_epi16) and multiplied by s16 weights with _mm256_madd_epi16 (exact in
   s32); each column then holds two partial sums, added at the end by hadd. */
#include "qalora/int_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <string.h>

#define AVX2 __attribute__((target("avx2,fma")))
#define AVX2_INLINE __attribute__((target("avx2,fma"), always_inline)) static inline

AVX2_INLINE int32_t load_w4(const int8_t *w) {
    int32_t v;
    memcpy(&v, w, 4);
    return v;
}

// Lane mask of the first n (0..8) 32-bit lanes.
AVX2_INLINE __m256i lane_mask(int n) {
    __m256i idx = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), idx);
}

/* Rows [0, MR) x 16 columns (n valid), narrow path. K4 k-groups; a pair at a time. */
AVX2_INLINE void micro_narrow(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda,
                              int MR, int n, int K4) {
    __m256i m0 = lane_mask(n > 8 ? 8 : n), m1 = lane_mask(n > 8 ? n - 8 : 0);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256i acc[4][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm256_setzero_si256();
    int g = 0;
    for (; g + 1 < K4; g += 2) {
        const uint8_t *ap = A + (size_t)g * lda * 4, *aq = ap + lda * 4;
        __m256i a0 = _mm256_maskload_epi32((const int *)ap, m0), a1 = _mm256_maskload_epi32((const int *)(ap + 32), m1);
        __m256i b0 = _mm256_maskload_epi32((const int *)aq, m0), b1 = _mm256_maskload_epi32((const int *)(aq + 32), m1);
        for (int r = 0; r < MR; r++) {
            __m256i w0 = _mm256_set1_epi32(load_w4(W + r * ldw + 4 * g));
            __m256i w1 = _mm256_set1_epi32(load_w4(W + r * ldw + 4 * g + 4));
            __m256i s0 = _mm256_add_epi16(_mm256_maddubs_epi16(a0, w0), _mm256_maddubs_epi16(b0, w1));
            __m256i s1 = _mm256_add_epi16(_mm256_maddubs_epi16(a1, w0), _mm256_maddubs_epi16(b1, w1));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(s0, ones));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(s1, ones));
        }
    }
    if (g < K4) {
        const uint8_t *ap = A + (size_t)g * lda * 4;
        __m256i a0 = _mm256_maskload_epi32((const int *)ap, m0), a1 = _mm256_maskload_epi32((const int *)(ap + 32), m1);
        for (int r = 0; r < MR; r++) {
            __m256i w0 = _mm256_set1_epi32(load_w4(W + r * ldw + 4 * g));
            acc[r][0] = _mm256_add_epi32(acc[r][0], _mm256_madd_epi16(_mm256_maddubs_epi16(a0, w0), ones));
            acc[r][1] = _mm256_add_epi32(acc[r][1], _mm256_madd_epi16(_mm256_maddubs_epi16(a1, w0), ones));
        }
    }
    for (int r = 0; r < MR; r++) {
        _mm256_maskstore_epi32((int *)(C + r * ldc), m0, acc[r][0]);
        _mm256_maskstore_epi32((int *)(C + r * ldc + 8), m1, acc[r][1]);
    }
}

/* Rows [0, MR) x 8 columns (n valid), wide path: s16 x s16 -> s32 pairs. */
AVX2_INLINE void micro_wide(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda,
                            int MR, int n, int K4) {
    __m256i m0 = lane_mask(n);
    __m256i lo[4], hi[4];  // lo: columns 0..3 (two partial sums each), hi: columns 4..7
    for (int r = 0; r < MR; r++) lo[r] = hi[r] = _mm256_setzero_si256();
    for (int g = 0; g < K4; g++) {
        __m256i a = _mm256_maskload_epi32((const int *)(A + (size_t)g * lda * 4), m0);
        __m256i alo = _mm256_cvtepu8_epi16(_mm256_castsi256_si128(a));
        __m256i ahi = _mm256_cvtepu8_epi16(_mm256_extracti128_si256(a, 1));
        for (int r = 0; r < MR; r++) {
            const int8_t *w = W + r * ldw + 4 * g;
            __m256i w16 = _mm256_setr_epi16(w[0], w[1], w[2], w[3], w[0], w[1], w[2], w[3], w[0], w[1], w[2], w[3],
                                            w[0], w[1], w[2], w[3]);
            lo[r] = _mm256_add_epi32(lo[r], _mm256_madd_epi16(alo, w16));
            hi[r] = _mm256_add_epi32(hi[r], _mm256_madd_epi16(ahi, w16));
        }
    }
    for (int r = 0; r < MR; r++) {
        // per 128-bit lane hadd gives [c0 c1 c4 c5 | c2 c3 c6 c7]; reorder the 64-bit halves
        __m256i s = _mm256_hadd_epi32(lo[r], hi[r]);
        s = _mm256_permute4x64_epi64(s, 0xD8);  // (0, 2, 1, 3)
        _mm256_maskstore_epi32((int *)(C + r * ldc), m0, s);
    }
}

AVX2 void int_gemm_avx2_tile(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda, int M,
                             int N, int K4, int wide) {
    int step = wide ? 8 : 16;
    for (int n0 = 0; n0 < N; n0 += step) {
        int n = N - n0 < step ? N - n0 : step;
        const uint8_t *a = A + (size_t)n0 * 4;
        int m = 0;
        for (; m + 4 <= M; m += 4) {
            if (wide) micro_wide(C + (size_t)m * ldc + n0, ldc, W + (size_t)m * ldw, ldw, a, lda, 4, n, K4);
            else micro_narrow(C + (size_t)m * ldc + n0, ldc, W + (size_t)m * ldw, ldw, a, lda, 4, n, K4);
        }
        for (; m < M; m++) {
            if (wide) micro_wide(C + (size_t)m * ldc + n0, ldc, W + (size_t)m * ldw, ldw, a, lda, 1, n, K4);
            else micro_narrow(C + (size_t)m * ldc + n0, ldc, W + (size_t)m * ldw, ldw, a, lda, 1, n, K4);
        }
    }
}

/* int_gemm_taps (int_gemm.h): rows [0, MR) x 8 columns, MR <= 4. maddubs multiplies the u8
   weights by the s8 activations (|a| <= 64: a pair stays inside s16), madd with ones widens
   the pairs to the 4-product int32 sums. */
AVX2_INLINE void taps_micro(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz, const int8_t *A,
                            size_t lda, const int32_t *Z, const float *E, size_t lde, const float *scale,
                            const float *bias, int MR, int n, int taps, int G) {
    __m256i m0 = lane_mask(n);
    const __m256i ones = _mm256_set1_epi16(1);
    __m256 f[4];
    for (int r = 0; r < MR; r++) f[r] = _mm256_setzero_ps();
    for (int t = 0; t < taps; t++) {
        __m256i z0 = _mm256_maskload_epi32(Z + (size_t)t * lde, m0);
        __m256i acc[4];
        for (int r = 0; r < MR; r++) acc[r] = _mm256_mullo_epi32(_mm256_set1_epi32(kz[r]), z0);
        for (int g = t * G; g < (t + 1) * G; g++) {
            __m256i a0 = _mm256_maskload_epi32((const int *)(A + (size_t)g * lda * 4), m0);
            for (int r = 0; r < MR; r++) {
                int32_t wv;
                memcpy(&wv, Wu + r * ldw + 4 * g, 4);
                __m256i p = _mm256_maddubs_epi16(_mm256_set1_epi32(wv), a0);
                acc[r] = _mm256_add_epi32(acc[r], _mm256_madd_epi16(p, ones));
            }
        }
        __m256 e0 = _mm256_maskload_ps(E + (size_t)t * lde, m0);
        for (int r = 0; r < MR; r++) f[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(acc[r]), e0, f[r]);
    }
    for (int r = 0; r < MR; r++) {
        __m256 sc = _mm256_set1_ps(scale[r]), b = _mm256_set1_ps(bias ? bias[r] : 0.0f);
        _mm256_maskstore_ps(Y + r * ldy, m0, _mm256_fmadd_ps(sc, f[r], b));
    }
}

AVX2 void int_gemm_taps_avx2_tile(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz,
                                  const int8_t *A, size_t lda, const int32_t *Z, const float *E, size_t lde,
                                  const float *scale, const float *bias, int M, int N, int taps, int G) {
    for (int n0 = 0; n0 < N; n0 += 8) {
        int n = N - n0 < 8 ? N - n0 : 8;
        const int8_t *a = A + (size_t)n0 * 4;
        int m = 0;
        for (; m + 4 <= M; m += 4)
            taps_micro(Y + (size_t)m * ldy + n0, ldy, Wu + (size_t)m * ldw, ldw, kz + m, a, lda, Z + n0, E + n0, lde,
                       scale + m, bias ? bias + m : NULL, 4, n, taps, G);
        for (; m < M; m++)
            taps_micro(Y + (size_t)m * ldy + n0, ldy, Wu + (size_t)m * ldw, ldw, kz + m, a, lda, Z + n0, E + n0, lde,
                       scale + m, bias ? bias + m : NULL, 1, n, taps, G);
    }
}

AVX2 void int_quant_u8_avx2(uint8_t *q, const float *x, size_t n, float delta, float zero, int qmax) {
    const __m256 d = _mm256_set1_ps(delta), z = _mm256_set1_ps(zero), lo = _mm256_setzero_ps(),
                 hi = _mm256_set1_ps((float)qmax);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 u = _mm256_div_ps(_mm256_loadu_ps(x + i), d);
        u = _mm256_add_ps(_mm256_round_ps(u, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC), z);
        // max first, the constant second: max(NaN, 0) = 0 (maxps returns its second
        // operand on NaN), as the scalar code's NaN -> level 0
        u = _mm256_min_ps(_mm256_max_ps(u, lo), hi);
        __m256i v = _mm256_cvttps_epi32(u);
        __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
        p = _mm_packus_epi16(p, p);
        _mm_storel_epi64((__m128i *)(q + i), p);
    }
    float fq = (float)qmax;
    for (; i < n; i++) {
        float u = _mm_cvtss_f32(_mm_round_ss(_mm_setzero_ps(), _mm_set_ss(x[i] / delta),
                                             _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC)) + zero;
        u = u > fq ? fq : u;
        q[i] = (uint8_t)(u >= 0.0f ? u : 0.0f);
    }
}
/* Up to 15 thresholds (4-bit codes): 8 values at a time count the thresholds at or below them
   (cmp GE ordered: NaN counts none, as the scalar >=), the counts are packed to bytes and
   looked up with pshufb in the 16-byte table. */
AVX2 void int_lut_u8_avx2(uint8_t *q, const float *x, size_t n, const float *bound, int nb, const uint8_t *tab) {
    uint8_t t16[16] = {0};
    memcpy(t16, tab, (size_t)nb + 1);
    const __m128i tv = _mm_loadu_si128((const __m128i *)t16);
    __m256 b[15];
    for (int l = 0; l < nb; l++) b[l] = _mm256_set1_ps(bound[l]);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 v = _mm256_loadu_ps(x + i);
        __m256i c = _mm256_setzero_si256();
        for (int l = 0; l < nb; l++) c = _mm256_sub_epi32(c, _mm256_castps_si256(_mm256_cmp_ps(v, b[l], _CMP_GE_OQ)));
        __m128i p = _mm_packs_epi32(_mm256_castsi256_si128(c), _mm256_extracti128_si256(c, 1));
        p = _mm_packus_epi16(p, p);
        _mm_storel_epi64((__m128i *)(q + i), _mm_shuffle_epi8(tv, p));
    }
    for (; i < n; i++) {
        int c = 0;
        for (int l = 0; l < nb; l++) c += x[i] >= bound[l];
        q[i] = tab[c];
    }
}
#endif
