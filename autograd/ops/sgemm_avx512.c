/* sgemm_avx512.c: effdm's own single-thread FP32 GEMM for one tile of gemm_rm
   (gemm_util.h), compiled with target attributes and called only when the CPU has AVX-512F.

   Why not OpenBLAS here: OpenBLAS picks its kernels once per process, and OPENBLAS_CORETYPE
   (set by some environments to make runs comparable across machines) can hold it to its
   AVX2 kernels on an AVX-512 CPU: on a Zen 5 core that halves the rate of every FP conv
   (101 against 184 GFLOP/s at the teacher's 128x128x1152 shape, one thread). This kernel
   does not depend on that setting; EFFDM_SGEMM=blas goes back to OpenBLAS.

   The layout is the usual one (Goto / BLIS): op(B) is packed in KC x NC blocks of 32-column
   panels, op(A) in MC x KC blocks of 12-row panels (the transposes are taken in the
   packing, so the four cases share one kernel), and a 12 x 32 micro-tile of C lives in 24
   zmm registers while KC rank-1 updates go by: per k, two loads of B and 12 broadcasts of
   A feed 24 FMAs. Partial tiles are zero-padded in the packs and stored with masks. Each
   element of C is summed over k in the same order (depth blocks of KC from k = 0, one lane
   of one accumulator) whatever M, N or the tile it sits in: gemm_rm may cut a product any
   way (per thread) and the result is still the same bits. */
#include "autograd/ops/gemm_util.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define AVX512 __attribute__((target("avx512f")))
#define AVX512_INLINE __attribute__((target("avx512f"), always_inline)) static inline

#define MR 12    // rows of the micro-tile
#define NR 32    // columns of the micro-tile: two zmm
#define KC 256   // depth of one packed block: a 32-column panel of B is 32 kB (L1)
#define MC 144   // rows of one packed A block: 144 kB (L2)
#define NC 1024  // columns of one packed B block: 1 MB (L2 / L3)

/* Per-thread pack buffers, allocated on a thread's first call and kept: the hot loop never
   allocates. (Thread-local arrays of this size would sit in every thread's stack.) A thread's
   buffers are freed when it exits (a pthread key's destructor); until then they also hang
   from a global list, so leak checkers see them reachable from any thread. */
typedef struct PackBufs {
    float *a, *b;
    struct PackBufs *prev, *next;
} PackBufs;

static pthread_key_t g_pack_key;
static pthread_once_t g_pack_once = PTHREAD_ONCE_INIT;
static pthread_mutex_t g_pack_mu = PTHREAD_MUTEX_INITIALIZER;
static PackBufs *g_pack_list;
static int g_pack_key_ok;

static void pack_free(void *v) {
    PackBufs *p = v;
    pthread_mutex_lock(&g_pack_mu);
    if (p->prev) p->prev->next = p->next;
    else g_pack_list = p->next;
    if (p->next) p->next->prev = p->prev;
    pthread_mutex_unlock(&g_pack_mu);
    free(p->a);
    free(p->b);
    free(p);
}

static void pack_key_init(void) { g_pack_key_ok = pthread_key_create(&g_pack_key, pack_free) == 0; }

static PackBufs *pack_buffers(void) {
    pthread_once(&g_pack_once, pack_key_init);
    if (!g_pack_key_ok) return NULL;
    PackBufs *p = pthread_getspecific(g_pack_key);
    if (p) return p;
    p = calloc(1, sizeof *p);
    if (p) {
        p->a = aligned_alloc(64, sizeof(float) * MC * KC);
        p->b = aligned_alloc(64, sizeof(float) * KC * NC);
    }
    if (!p || !p->a || !p->b || pthread_setspecific(g_pack_key, p)) {
        if (p) {
            free(p->a);
            free(p->b);
        }
        free(p);
        return NULL;
    }
    pthread_mutex_lock(&g_pack_mu);
    p->next = g_pack_list;
    if (g_pack_list) g_pack_list->prev = p;
    g_pack_list = p;
    pthread_mutex_unlock(&g_pack_mu);
    return p;
}

AVX512_INLINE __mmask16 first_lanes(int n) {
    return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1u);
}

/* v[i] lane c = m[i][c] -> v[c] lane i = m[i][c]: a 16 x 16 transpose in registers (pairs of
   rows interleaved by 32 bits, then by 64 bits, then 128-bit blocks). The packs that
   transpose (op(A) rows into 12-row panels, op(B)^T rows into 32-column panels) take it
   16 depth values at a time: scalar, they were half of the kernel's own time on the
   training step's small products. */
AVX512_INLINE void transpose16(__m512 v[16]) {
    __m512 t[16], s[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_ps(v[2 * i], v[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_ps(v[2 * i], v[2 * i + 1]);
    }
    // s[4 i + j], 128-bit block L: column 4 L + j of rows 4 i .. 4 i + 3
    for (int i = 0; i < 4; i++) {
        __m512d a = _mm512_castps_pd(t[4 * i]), b = _mm512_castps_pd(t[4 * i + 2]);
        __m512d c = _mm512_castps_pd(t[4 * i + 1]), d = _mm512_castps_pd(t[4 * i + 3]);
        s[4 * i] = _mm512_castpd_ps(_mm512_unpacklo_pd(a, b));
        s[4 * i + 1] = _mm512_castpd_ps(_mm512_unpackhi_pd(a, b));
        s[4 * i + 2] = _mm512_castpd_ps(_mm512_unpacklo_pd(c, d));
        s[4 * i + 3] = _mm512_castpd_ps(_mm512_unpackhi_pd(c, d));
    }
    // column 4 L + j = block L of s[j], s[4 + j], s[8 + j], s[12 + j]: a 4 x 4 block transpose
    for (int j = 0; j < 4; j++) {
        __m512 p0 = _mm512_shuffle_f32x4(s[j], s[4 + j], 0x44), p1 = _mm512_shuffle_f32x4(s[j], s[4 + j], 0xEE);
        __m512 p2 = _mm512_shuffle_f32x4(s[8 + j], s[12 + j], 0x44);
        __m512 p3 = _mm512_shuffle_f32x4(s[8 + j], s[12 + j], 0xEE);
        v[j] = _mm512_shuffle_f32x4(p0, p2, 0x88);
        v[4 + j] = _mm512_shuffle_f32x4(p0, p2, 0xDD);
        v[8 + j] = _mm512_shuffle_f32x4(p1, p3, 0x88);
        v[12 + j] = _mm512_shuffle_f32x4(p1, p3, 0xDD);
    }
}

// dst[k ld + c] = src[c stride + k] for c < w (<= 16; w <= 0: none), k < kc; the other
// lanes of `lanes` (the floats written per dst row) are zero.
AVX512_INLINE void gather_rows(float *dst, size_t ld, __mmask16 lanes, const float *src, size_t stride, int w,
                               int kc) {
    if (w < 0) w = 0;
    int k = 0;
    for (; k + 16 <= kc; k += 16) {
        __m512 v[16];
        for (int c = 0; c < 16; c++)
            v[c] = c < w ? _mm512_loadu_ps(src + (size_t)c * stride + k) : _mm512_setzero_ps();
        transpose16(v);
        for (int t = 0; t < 16; t++) _mm512_mask_storeu_ps(dst + (size_t)(k + t) * ld, lanes, v[t]);
    }
    for (; k < kc; k++) {
        float *d = dst + (size_t)k * ld;
        for (int c = 0; c < w; c++) d[c] = src[(size_t)c * stride + k];
        for (int c = w; c < 16 && (lanes >> c & 1); c++) d[c] = 0.0f;
    }
}

// op(A) rows [i0, i0 + mc) x depth [p0, p0 + kc) into 12-row panels: dst[panel][k][r].
AVX512 static void pack_a(float *dst, int ta, const float *A, int lda, int i0, int mc, int p0, int kc) {
    for (int ir = 0; ir < mc; ir += MR) {
        int h = mc - ir < MR ? mc - ir : MR;
        float *d = dst + (size_t)ir * kc;
        if (ta) {  // op(A)(i, k) = A[k][i]: a row of the panel is contiguous in A
            for (int k = 0; k < kc; k++) {
                const float *s = A + (size_t)(p0 + k) * lda + i0 + ir;
                float *dk = d + (size_t)k * MR;
                for (int r = 0; r < h; r++) dk[r] = s[r];
                for (int r = h; r < MR; r++) dk[r] = 0.0f;
            }
        } else {
            gather_rows(d, MR, first_lanes(MR), A + (size_t)(i0 + ir) * lda + p0, (size_t)lda, h, kc);
        }
    }
}

// op(B) depth [p0, p0 + kc) x columns [j0, j0 + nc) into 32-column panels: dst[panel][k][c].
AVX512 static void pack_b(float *dst, int tb, const float *B, int ldb, int p0, int kc, int j0, int nc) {
    for (int jr = 0; jr < nc; jr += NR) {
        int w = nc - jr < NR ? nc - jr : NR;
        float *d = dst + (size_t)jr * kc;
        if (!tb) {  // op(B)(k, j) = B[k][j]: a panel row is contiguous in B (masked loads zero the tail)
            __mmask16 m0 = first_lanes(w), m1 = first_lanes(w - 16);
            const float *s = B + (size_t)p0 * ldb + j0 + jr;
            for (int k = 0; k < kc; k++, s += ldb) {
                _mm512_store_ps(d + (size_t)k * NR, _mm512_maskz_loadu_ps(m0, s));
                _mm512_store_ps(d + (size_t)k * NR + 16, _mm512_maskz_loadu_ps(m1, s + 16));
            }
        } else {  // op(B)(k, j) = B[j][k]: 16 columns at a time are rows of B
            const float *s = B + (size_t)(j0 + jr) * ldb + p0;
            gather_rows(d, NR, 0xFFFF, s, (size_t)ldb, w < 16 ? w : 16, kc);
            gather_rows(d + 16, NR, 0xFFFF, s + (size_t)16 * ldb, (size_t)ldb, w - 16, kc);
        }
    }
}

// C[0..mr) x [0..nr) = alpha * (a panel . b panel) + beta * C (beta == 0: C is not read).
AVX512_INLINE void store_row(float *c, __m512 lo, __m512 hi, __mmask16 m0, __mmask16 m1, __m512 alpha, float beta) {
    lo = _mm512_mul_ps(lo, alpha);
    hi = _mm512_mul_ps(hi, alpha);
    if (beta != 0.0f) {
        __m512 vb = _mm512_set1_ps(beta);
        lo = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m0, c), vb, lo);
        hi = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m1, c + 16), vb, hi);
    }
    _mm512_mask_storeu_ps(c, m0, lo);
    _mm512_mask_storeu_ps(c + 16, m1, hi);
}

AVX512 static void micro_12x32(int kc, const float *restrict a, const float *restrict b, float *c, int ldc, int mr,
                               int nr, float alpha, float beta) {
    __m512 c0l = _mm512_setzero_ps(), c0h = c0l, c1l = c0l, c1h = c0l, c2l = c0l, c2h = c0l, c3l = c0l, c3h = c0l,
           c4l = c0l, c4h = c0l, c5l = c0l, c5h = c0l, c6l = c0l, c6h = c0l, c7l = c0l, c7h = c0l, c8l = c0l,
           c8h = c0l, c9l = c0l, c9h = c0l, cal = c0l, cah = c0l, cbl = c0l, cbh = c0l;
    for (int k = 0; k < kc; k++, a += MR, b += NR) {
        __m512 bl = _mm512_load_ps(b), bh = _mm512_load_ps(b + 16), x;
#define ROW(i, l, h)                     \
    x = _mm512_set1_ps(a[i]);            \
    l = _mm512_fmadd_ps(x, bl, l);       \
    h = _mm512_fmadd_ps(x, bh, h);
        ROW(0, c0l, c0h) ROW(1, c1l, c1h) ROW(2, c2l, c2h) ROW(3, c3l, c3h)
        ROW(4, c4l, c4h) ROW(5, c5l, c5h) ROW(6, c6l, c6h) ROW(7, c7l, c7h)
        ROW(8, c8l, c8h) ROW(9, c9l, c9h) ROW(10, cal, cah) ROW(11, cbl, cbh)
#undef ROW
    }
    __mmask16 m0 = first_lanes(nr), m1 = first_lanes(nr - 16);
    __m512 va = _mm512_set1_ps(alpha);
    __m512 lo[MR] = {c0l, c1l, c2l, c3l, c4l, c5l, c6l, c7l, c8l, c9l, cal, cbl};
    __m512 hi[MR] = {c0h, c1h, c2h, c3h, c4h, c5h, c6h, c7h, c8h, c9h, cah, cbh};
    for (int i = 0; i < mr; i++) store_row(c + (size_t)i * ldc, lo[i], hi[i], m0, m1, va, beta);
}

int sgemm_avx512_tile(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    PackBufs *bufs = pack_buffers();
    if (!bufs) return 0;
    float *pa = bufs->a, *pb = bufs->b;
    for (int jc = 0; jc < N; jc += NC) {
        int nc = N - jc < NC ? N - jc : NC;
        for (int pc = 0; pc < K; pc += KC) {
            int kc = K - pc < KC ? K - pc : KC;
            float b_eff = pc == 0 ? beta : 1.0f;  // later depth blocks add to the first's sums
            pack_b(pb, trans_b, B, ldb, pc, kc, jc, nc);
            for (int ic = 0; ic < M; ic += MC) {
                int mc = M - ic < MC ? M - ic : MC;
                pack_a(pa, trans_a, A, lda, ic, mc, pc, kc);
                for (int jr = 0; jr < nc; jr += NR)
                    for (int ir = 0; ir < mc; ir += MR)
                        micro_12x32(kc, pa + (size_t)ir * kc, pb + (size_t)jr * kc,
                                    C + (size_t)(ic + ir) * ldc + jc + jr, ldc, mc - ir < MR ? mc - ir : MR,
                                    nc - jr < NR ? nc - jr : NR, alpha, b_eff);
            }
        }
    }
    return 1;
}

int sgemm_avx512_supported(void) {
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f");
}

#else
int sgemm_avx512_tile(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc) {
    return 0;
}
int sgemm_avx512_supported(void) { return 0; }
#endif
