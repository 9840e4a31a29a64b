/* int_gemm_vnni.c: the AVX-512 VNNI variant of int_gemm (int_gemm.h), compiled with target
   attributes and called only when the CPU has avx512f, avx512bw and avx512vnni.

   _mm512_dpbusd_epi32 adds, per 32-bit lane, the 4 products of u8 activations and s8
   weights into int32 without intermediate saturation (that would be dpbusds), so every
   weight width (2, 4, 8 bits) takes the same path and the result is exact. A lane is one
   column of a k-group in the col4 layout; the 4 weights of a row are broadcast. Micro-tile:
   8 rows x 32 columns = 16 accumulators (then 4-row and 1-row tiles for the rest);
   column tails are masked. */
#include "qalora/int_gemm.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <string.h>

#define VNNI __attribute__((target("avx512f,avx512bw,avx512vnni")))
#define VNNI_INLINE __attribute__((target("avx512f,avx512bw,avx512vnni"), always_inline)) static inline

VNNI_INLINE int32_t load_w4(const int8_t *w) {
    int32_t v;
    memcpy(&v, w, 4);
    return v;
}

VNNI_INLINE __mmask16 first_lanes(int n) { return n >= 16 ? (__mmask16)0xFFFF : (__mmask16)((1u << n) - 1u); }

/* Rows [0, MR) x 32 columns (n valid), MR <= 8: 16 accumulators + 2 activation vectors
   + 1 broadcast weight fit the 32 zmm registers. */
VNNI_INLINE void micro(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda, int MR,
                       int n, int K4) {
    __mmask16 m0 = first_lanes(n), m1 = first_lanes(n > 16 ? n - 16 : 0);
    __m512i acc[8][2];
    for (int r = 0; r < MR; r++) acc[r][0] = acc[r][1] = _mm512_setzero_si512();
    for (int g = 0; g < K4; g++) {
        const uint8_t *ap = A + (size_t)g * lda * 4;
        __m512i a0 = _mm512_maskz_loadu_epi32(m0, ap), a1 = _mm512_maskz_loadu_epi32(m1, ap + 64);
        for (int r = 0; r < MR; r++) {
            __m512i w = _mm512_set1_epi32(load_w4(W + r * ldw + 4 * g));
            acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], a0, w);
            acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], a1, w);
        }
    }
    for (int r = 0; r < MR; r++) {
        _mm512_mask_storeu_epi32(C + r * ldc, m0, acc[r][0]);
        _mm512_mask_storeu_epi32(C + r * ldc + 16, m1, acc[r][1]);
    }
}

VNNI void int_gemm_vnni_tile(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda, int M,
                             int N, int K4) {
    for (int n0 = 0; n0 < N; n0 += 32) {
        int n = N - n0 < 32 ? N - n0 : 32;
        const uint8_t *a = A + (size_t)n0 * 4;
        int m = 0;
        for (; m + 8 <= M; m += 8) micro(C + (size_t)m * ldc + n0, ldc, W + (size_t)m * ldw, ldw, a, lda, 8, n, K4);
        for (; m + 4 <= M; m += 4) micro(C + (size_t)m * ldc + n0, ldc, W + (size_t)m * ldw, ldw, a, lda, 4, n, K4);
        for (; m < M; m++) micro(C + (size_t)m * ldc + n0, ldc, W + (size_t)m * ldw, ldw, a, lda, 1, n, K4);
    }
}

/* int_gemm_taps (int_gemm.h): rows [0, MR) x 32 columns, MR <= 6: 12 int32 sums (one tap's)
   + 12 float accumulators + the tap's A, E and Z vectors and a broadcast weight fit the 32
   registers. Wu is the u8 operand here, A the s8 one. */
VNNI_INLINE void taps_micro(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz, const int8_t *A,
                            size_t lda, const int32_t *Z, const float *E, size_t lde, const float *scale,
                            const float *bias, int MR, int n, int taps, int G) {
    __mmask16 m0 = first_lanes(n), m1 = first_lanes(n > 16 ? n - 16 : 0);
    __m512 f[6][2];
    for (int r = 0; r < MR; r++) f[r][0] = f[r][1] = _mm512_setzero_ps();
    for (int t = 0; t < taps; t++) {
        const int32_t *zt = Z + (size_t)t * lde;
        __m512i z0 = _mm512_maskz_loadu_epi32(m0, zt), z1 = _mm512_maskz_loadu_epi32(m1, zt + 16);
        __m512i acc[6][2];
        for (int r = 0; r < MR; r++) {
            __m512i k = _mm512_set1_epi32(kz[r]);
            acc[r][0] = _mm512_mullo_epi32(k, z0);
            acc[r][1] = _mm512_mullo_epi32(k, z1);
        }
        for (int g = t * G; g < (t + 1) * G; g++) {
            const int8_t *ap = A + (size_t)g * lda * 4;
            __m512i a0 = _mm512_maskz_loadu_epi32(m0, ap), a1 = _mm512_maskz_loadu_epi32(m1, ap + 64);
            for (int r = 0; r < MR; r++) {
                int32_t wv;
                memcpy(&wv, Wu + r * ldw + 4 * g, 4);
                __m512i w = _mm512_set1_epi32(wv);
                acc[r][0] = _mm512_dpbusd_epi32(acc[r][0], w, a0);
                acc[r][1] = _mm512_dpbusd_epi32(acc[r][1], w, a1);
            }
        }
        const float *et = E + (size_t)t * lde;
        __m512 e0 = _mm512_maskz_loadu_ps(m0, et), e1 = _mm512_maskz_loadu_ps(m1, et + 16);
        for (int r = 0; r < MR; r++) {
            f[r][0] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][0]), e0, f[r][0]);
            f[r][1] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[r][1]), e1, f[r][1]);
        }
    }
    for (int r = 0; r < MR; r++) {
        __m512 sc = _mm512_set1_ps(scale[r]), b = _mm512_set1_ps(bias ? bias[r] : 0.0f);
        _mm512_mask_storeu_ps(Y + r * ldy, m0, _mm512_fmadd_ps(sc, f[r][0], b));
        _mm512_mask_storeu_ps(Y + r * ldy + 16, m1, _mm512_fmadd_ps(sc, f[r][1], b));
    }
}

VNNI void int_gemm_taps_vnni_tile(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz,
                                  const int8_t *A, size_t lda, const int32_t *Z, const float *E, size_t lde,
                                  const float *scale, const float *bias, int M, int N, int taps, int G) {
    for (int n0 = 0; n0 < N; n0 += 32) {
        int n = N - n0 < 32 ? N - n0 : 32;
        const int8_t *a = A + (size_t)n0 * 4;
        for (int m = 0; m < M;) {
            int mr = M - m >= 6 ? 6 : M - m >= 4 ? 4 : M - m >= 2 ? 2 : 1;
            const float *b = bias ? bias + m : NULL;
            float *y = Y + (size_t)m * ldy + n0;
            const uint8_t *w = Wu + (size_t)m * ldw;
            if (mr == 6) taps_micro(y, ldy, w, ldw, kz + m, a, lda, Z + n0, E + n0, lde, scale + m, b, 6, n, taps, G);
            else if (mr == 4) taps_micro(y, ldy, w, ldw, kz + m, a, lda, Z + n0, E + n0, lde, scale + m, b, 4, n, taps, G);
            else if (mr == 2) taps_micro(y, ldy, w, ldw, kz + m, a, lda, Z + n0, E + n0, lde, scale + m, b, 2, n, taps, G);
            else taps_micro(y, ldy, w, ldw, kz + m, a, lda, Z + n0, E + n0, lde, scale + m, b, 1, n, taps, G);
            m += mr;
        }
    }
}
#endif
