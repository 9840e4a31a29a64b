/* int_gemm.c: the variant switch, the portable reference kernel and the tiling of int_gemm
   over OpenMP threads (int_gemm.h). */
#include "qalora/int_gemm.h"

#include <math.h>
#include <string.h>

#include "autograd/ops/fastmath.h"
#include "autograd/ops/gemm_util.h"
#include "util/par.h"

// Tile of one OpenMP work item: INT_TILE_N columns x INT_TILE_M rows. A 64-column strip of
// A is K*64 bytes (37 kB at K = 576, the teacher's largest), so it stays in L1/L2 while
// the tile's rows pass over it; 64 rows keep all of a small layer's outputs in one tile.
#define INT_TILE_N 64
#define INT_TILE_M 64

const char *int_gemm_name(IntGemmKind k) {
    switch (k) {
    case INT_GEMM_REF: return "ref";
    case INT_GEMM_AVX2: return "avx2";
    case INT_GEMM_VNNI: return "vnni";
    default: return "?";
    }
}

int int_gemm_supported(IntGemmKind k) {
    switch (k) {
    case INT_GEMM_REF: return 1;
#if defined(__x86_64__) && defined(__GNUC__)
    case INT_GEMM_AVX2: __builtin_cpu_init(); return __builtin_cpu_supports("avx2");
    case INT_GEMM_VNNI:
        __builtin_cpu_init();
        return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
               __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("avx2");
#endif
    default: return 0;
    }
}

IntGemmKind int_gemm_best(void) {
    if (int_gemm_supported(INT_GEMM_VNNI)) return INT_GEMM_VNNI;
    if (int_gemm_supported(INT_GEMM_AVX2)) return INT_GEMM_AVX2;
    return INT_GEMM_REF;
}

void int_gemm_ref(int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda, int M, int N,
                  int K4) {
    for (int m = 0; m < M; m++) {
        const int8_t *w = W + (size_t)m * ldw;
        int32_t *c = C + (size_t)m * ldc;
        for (int n = 0; n < N; n++) c[n] = 0;
        for (int g = 0; g < K4; g++) {
            const uint8_t *a = A + (size_t)g * lda * 4;
            int w0 = w[4 * g], w1 = w[4 * g + 1], w2 = w[4 * g + 2], w3 = w[4 * g + 3];
            for (int n = 0; n < N; n++)
                c[n] += a[4 * n] * w0 + a[4 * n + 1] * w1 + a[4 * n + 2] * w2 + a[4 * n + 3] * w3;
        }
    }
}

// Tile (i, j) of int_gemm: rows m0.. of W and C, columns n0.. of A and C.
static void int_gemm_tile(IntGemmKind k, int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A,
                          size_t lda, int M, int N, int K4, int wide, int i, int j) {
    int n0 = j * INT_TILE_N, m0 = i * INT_TILE_M;
    int nn = N - n0 < INT_TILE_N ? N - n0 : INT_TILE_N, mm = M - m0 < INT_TILE_M ? M - m0 : INT_TILE_M;
    int32_t *c = C + (size_t)m0 * ldc + n0;
    const int8_t *w = W + (size_t)m0 * ldw;
    const uint8_t *a = A + (size_t)n0 * 4;
    switch (k) {
#if defined(__x86_64__) && defined(__GNUC__)
    case INT_GEMM_VNNI: int_gemm_vnni_tile(c, ldc, w, ldw, a, lda, mm, nn, K4); break;
    case INT_GEMM_AVX2: int_gemm_avx2_tile(c, ldc, w, ldw, a, lda, mm, nn, K4, wide); break;
#endif
    default: int_gemm_ref(c, ldc, w, ldw, a, lda, mm, nn, K4); break;
    }
}

void int_gemm(IntGemmKind k, int32_t *C, size_t ldc, const int8_t *W, size_t ldw, const uint8_t *A, size_t lda,
              int M, int N, int K4, int wmax, int amax) {
    int wide = 4L * amax * wmax > 32767;
    int tn = (N + INT_TILE_N - 1) / INT_TILE_N, tm = (M + INT_TILE_M - 1) / INT_TILE_M;
    size_t work = (size_t)M * N * (size_t)K4;
    PAR_FOR(schedule(static) collapse(2), work >= 4 * GEMM_OMP_MIN_WORK,
    for (int j = 0; j < tn; j++)
        for (int i = 0; i < tm; i++) int_gemm_tile(k, C, ldc, W, ldw, A, lda, M, N, K4, wide, i, j););
}

int int_gemm_taps_ok(int amax) { return amax >= 0 && amax <= 64; }

void int_gemm_taps_ref(float *Y, size_t ldy, const uint8_t *Wu, size_t ldw, const int32_t *kz, const int8_t *A,
                       size_t lda, const int32_t *Z, const float *E, size_t lde, const float *scale, const float *bias,
                       int M, int N, int taps, int G) {
    for (int m = 0; m < M; m++) {
        const uint8_t *w = Wu + (size_t)m * ldw;
        for (int n = 0; n < N; n++) {
            float f = 0.0f;
            for (int t = 0; t < taps; t++) {
                int32_t s = kz[m] * Z[(size_t)t * lde + n];
                for (int g = t * G; g < (t + 1) * G; g++) {
                    const int8_t *a = A + ((size_t)g * lda + n) * 4;
                    s += w[4 * g] * a[0] + w[4 * g + 1] * a[1] + w[4 * g + 2] * a[2] + w[4 * g + 3] * a[3];
                }
                f = fmaf((float)s, E[(size_t)t * lde + n], f);
            }
            Y[(size_t)m * ldy + n] = fmaf(scale[m], f, bias ? bias[m] : 0.0f);
        }
    }
}

// The side table of rows [m0, m0 + mm) on one tile's nn columns (Y, A, E at the tile's first
// column): byte k % 4 of each column's word of group k / 4, sign-extended.
FASTMATH_CLONES static void taps_side_tile(float *restrict Y, size_t ldy, const int8_t *restrict A, size_t lda,
                                           const float *restrict E, size_t lde, const IntTapsSide *side, int m0,
                                           int mm, int nn) {
    for (int m = 0; m < mm; m++) {
        float *restrict y = Y + (size_t)m * ldy;
        const int32_t *kpos = side->kpos + (size_t)(m0 + m) * side->n;
        const float *coef = side->coef + (size_t)(m0 + m) * side->n;
        for (int s = 0; s < side->n; s++) {
            size_t kp = (size_t)kpos[s];
            const uint32_t *col = (const uint32_t *)(const void *)A + (kp / 4) * lda;
            const float *e = E + (kp / (size_t)side->cp) * lde;
            int sh = 24 - 8 * (int)(kp % 4);
            float cf = coef[s];
            for (int i = 0; i < nn; i++) y[i] += cf * e[i] * (float)((int32_t)(col[i] << sh) >> 24);
        }
    }
}

void int_gemm_taps(IntGemmKind k, float *Y, size_t ldy, size_t ldimg, int P, const uint8_t *Wu, size_t ldw,
                   const int32_t *kz, const int8_t *A, size_t lda, const int32_t *Z, const float *E, size_t lde,
                   const float *scale, const float *bias, int M, int N, int taps, int G, const IntTapsSide *side) {
    if (M <= 0 || N <= 0 || P <= 0) return;
    // tiles never cross an image: each image's P columns are cut alone
    int tpi = (P + INT_TILE_N - 1) / INT_TILE_N, tn = N / P * tpi, tm = (M + INT_TILE_M - 1) / INT_TILE_M;
    size_t work = (size_t)M * N * (size_t)taps * G;
    PAR_FOR(schedule(static) collapse(2), work >= 4 * GEMM_OMP_MIN_WORK,
    for (int j = 0; j < tn; j++)
        for (int i = 0; i < tm; i++) {
            int g = j / tpi, c0 = j % tpi * INT_TILE_N, n0 = g * P + c0, m0 = i * INT_TILE_M;
            int nn = P - c0 < INT_TILE_N ? P - c0 : INT_TILE_N, mm = M - m0 < INT_TILE_M ? M - m0 : INT_TILE_M;
            float *y = Y + (size_t)g * ldimg + (size_t)m0 * ldy + c0;
            const uint8_t *w = Wu + (size_t)m0 * ldw;
            const int8_t *a = A + (size_t)n0 * 4;
            const float *b = bias ? bias + m0 : NULL;
            switch (k) {
#if defined(__x86_64__) && defined(__GNUC__)
            case INT_GEMM_VNNI:
                int_gemm_taps_vnni_tile(y, ldy, w, ldw, kz + m0, a, lda, Z + n0, E + n0, lde, scale + m0, b, mm, nn,
                                        taps, G);
                break;
            case INT_GEMM_AVX2:
                int_gemm_taps_avx2_tile(y, ldy, w, ldw, kz + m0, a, lda, Z + n0, E + n0, lde, scale + m0, b, mm, nn,
                                        taps, G);
                break;
#endif
            default:
                int_gemm_taps_ref(y, ldy, w, ldw, kz + m0, a, lda, Z + n0, E + n0, lde, scale + m0, b, mm, nn, taps,
                                  G);
                break;
            }
            if (side && side->n) taps_side_tile(y, ldy, a, lda, E + n0, lde, side, m0, mm, nn);
        });
}

void int_quant_u8(IntGemmKind k, uint8_t *q, const float *x, size_t n, float delta, float zero, int qmax) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (k != INT_GEMM_REF) {
        int_quant_u8_avx2(q, x, n, delta, zero, qmax);
        return;
    }
#endif
    float fq = (float)qmax;
    for (size_t i = 0; i < n; i++) {
        float u = rintf(x[i] / delta) + zero;
        u = u > fq ? fq : u;
        q[i] = (uint8_t)(u >= 0.0f ? u : 0.0f);  // NaN fails the test: level 0
    }
}

// c(x) by a branch-free binary search over the thresholds (ascending; a NaN threshold, a code
// no x reaches, compares false as +inf would): the portable variant.
static void lut_u8_ref(uint8_t *q, const float *x, size_t n, const float *bound, int nb, const uint8_t *tab) {
    int top = 1;
    while (top <= nb) top <<= 1;  // the search's first step: the power of two above nb
    for (size_t i = 0; i < n; i++) {
        int c = 0;
        for (int s = top >> 1; s; s >>= 1)
            if (c + s <= nb && x[i] >= bound[c + s - 1]) c += s;
        q[i] = tab[c];
    }
}

void int_lut_u8(IntGemmKind k, uint8_t *q, const float *x, size_t n, const float *bound, int nb, const uint8_t *tab) {
#if defined(__x86_64__) && defined(__GNUC__)
    if (k != INT_GEMM_REF && nb <= 15) {
        int_lut_u8_avx2(q, x, n, bound, nb, tab);
        return;
    }
#endif
    lut_u8_ref(q, x, n, bound, nb, tab);
}
