/* gemm_util.c: gemm_rm (the FP32 GEMM kernel pick and the cut of a product over the threads)
   and the deterministic bias-gradient sums. */
#include "autograd/ops/gemm_util.h"

#include <cblas.h>
#include <omp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/par.h"

// Columns summed by one OpenMP task: wide enough for unit-stride inner loops, narrow
// enough that 512 columns still make several tasks for two threads.
#define COLSUM_BLOCK 64

/* The tiling of one GEMM: C is cut into pm x pn tiles, each one single-threaded cblas_sgemm
   call, the tiles spread over the OpenMP threads. The cut depends on M, N, K only, never on
   the thread count: OpenBLAS's own threading (and even one thread on a sub-block) rounds
   differently for different partitions, so a model computed on 1, 2 or 16 threads, or on
   2 MPI ranks of 1 thread, gives bit-identical results only when every run makes the same
   calls. Tiles hold at least GEMM_TILE_WORK multiply-adds and are cut at multiples of
   GEMM_TILE_ALIGN rows / columns (the kernels' register blocks). */
#define GEMM_TILE_WORK ((size_t)1 << 17)
#define GEMM_TILE_MAX 64
#define GEMM_TILE_ALIGN 16

// -1 until the first gemm_kernel_init / gemm_kernel_set / gemm_rm; then a GemmKernel
static _Atomic int g_kernel = -1;

const char *gemm_kernel_name(GemmKernel k) { return k == GEMM_KERNEL_AVX512 ? "avx512" : "blas"; }

int gemm_kernel_supported(GemmKernel k) { return k == GEMM_KERNEL_BLAS || sgemm_avx512_supported(); }

int gemm_kernel_init(char *msg, size_t msg_len) {
    const char *s = getenv("EFFDM_SGEMM");
    GemmKernel k;
    if (!s || !*s || !strcmp(s, "auto")) k = sgemm_avx512_supported() ? GEMM_KERNEL_AVX512 : GEMM_KERNEL_BLAS;
    else if (!strcmp(s, "blas")) k = GEMM_KERNEL_BLAS;
    else if (!strcmp(s, "avx512")) k = GEMM_KERNEL_AVX512;
    else {
        snprintf(msg, msg_len, "EFFDM_SGEMM '%s': expected auto, blas or avx512", s);
        return -1;
    }
    if (!gemm_kernel_supported(k)) {
        snprintf(msg, msg_len, "EFFDM_SGEMM '%s': this CPU has no AVX-512F (use auto or blas)", s);
        return -1;
    }
    g_kernel = (int)k;
    return 0;
}

GemmKernel gemm_kernel_get(void) {
    if (g_kernel < 0) {
        char msg[160];
        if (gemm_kernel_init(msg, sizeof msg)) {
            fprintf(stderr, "effdm: %s\n", msg);
            exit(2);
        }
    }
    return (GemmKernel)g_kernel;
}

void gemm_kernel_set(GemmKernel k) { g_kernel = (int)k; }

typedef struct {
    int pm, pn;  // tiles along M and N
} GemmTiles;

static GemmTiles gemm_tiles(int M, int N, int K) {
    GemmTiles t = {1, 1};
    size_t work = (size_t)M * (size_t)N * (size_t)K, want = work / GEMM_TILE_WORK;
    if (want > GEMM_TILE_MAX) want = GEMM_TILE_MAX;
    // split the dimension whose tiles are longer, while both halves keep >= 2 aligned blocks
    while ((size_t)t.pm * t.pn * 2 <= want) {
        int em = M / t.pm, en = N / t.pn;
        if (en >= em && en >= 4 * GEMM_TILE_ALIGN) t.pn *= 2;
        else if (em >= 4 * GEMM_TILE_ALIGN) t.pm *= 2;
        else if (en >= 4 * GEMM_TILE_ALIGN) t.pn *= 2;
        else break;
    }
    return t;
}

// Start of part i of n over [0, len), at a multiple of GEMM_TILE_ALIGN (part n: len).
static int tile_start(int i, int n, int len) {
    if (i >= n) return len;
    int s = (int)((int64_t)len * i / n);
    return s / GEMM_TILE_ALIGN * GEMM_TILE_ALIGN;
}

static void gemm_tile(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc, GemmTiles t, int tile) {
    int im = tile / t.pn, in = tile % t.pn;
    int m0 = tile_start(im, t.pm, M), m1 = tile_start(im + 1, t.pm, M);
    int n0 = tile_start(in, t.pn, N), n1 = tile_start(in + 1, t.pn, N);
    if (m1 <= m0 || n1 <= n0) return;
    // op(A) rows m0..m1: A's rows (no transpose) or columns (transposed); op(B) likewise
    const float *a = trans_a ? A + m0 : A + (size_t)m0 * lda;
    const float *b = trans_b ? B + (size_t)n0 * ldb : B + n0;
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m1 - m0,
                n1 - n0, K, alpha, a, lda, b, ldb, beta, C + (size_t)m0 * ldc + n0, ldc);
}

/* The AVX-512 kernel sums every element of C in the same order wherever the element sits in
   a tile (its depth blocks start at k = 0, its lanes never mix), so here the cut may follow
   the thread count: one part per thread along the longer side, in whole micro-tiles, and
   one call for the whole product on one thread or inside a parallel region. Bits are the
   same for any cut. */
// Cuts at whole micro-tiles of the AVX-512 kernel (12 rows x 32 columns): any cut gives the
// same bits, these waste no lanes.
#define OWN_CUT_ROWS 12
#define OWN_CUT_COLS 32

static void gemm_rm_own(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                        const float *B, int ldb, float beta, float *C, int ldc) {
    int along_n = N >= M, len = along_n ? N : M, align = along_n ? OWN_CUT_COLS : OWN_CUT_ROWS;
    size_t work = (size_t)M * (size_t)N * (size_t)K, parts = work / GEMM_TILE_WORK;
    size_t threads = omp_in_parallel() ? 1 : (size_t)omp_get_max_threads();
    if (parts > threads) parts = threads;
    if (parts > (size_t)(len / align)) parts = (size_t)(len / align);
    if (parts < 1) parts = 1;
    int np = (int)parts;
    PAR_FOR(schedule(static), np > 1,
    for (int i = 0; i < np; i++) {
        int s0 = (int)((int64_t)len * i / np) / align * align;
        int s1 = i + 1 == np ? len : (int)((int64_t)len * (i + 1) / np) / align * align;
        if (s1 <= s0) continue;
        const float *a = A, *b = B;
        float *c = C;
        int m = M, n = N;
        if (along_n) {
            b = trans_b ? B + (size_t)s0 * ldb : B + s0;
            c = C + s0;
            n = s1 - s0;
        } else {
            a = trans_a ? A + s0 : A + (size_t)s0 * lda;
            c = C + (size_t)s0 * ldc;
            m = s1 - s0;
        }
        if (!sgemm_avx512_tile(trans_a, trans_b, m, n, K, alpha, a, lda, b, ldb, beta, c, ldc)) {
            // no memory for this thread's pack buffers: OpenBLAS computes the part (same values,
            // other rounding), and the user is told once
            static _Atomic int told;
            if (!told++) fprintf(stderr, "effdm: note: out of memory for the AVX-512 GEMM's pack buffers: "
                                         "OpenBLAS computes those products (results not bit-identical)\n");
            cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, m,
                        n, K, alpha, a, lda, b, ldb, beta, c, ldc);
        }
    });
}

void gemm_rm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc) {
    if (M <= 0 || N <= 0) return;
    if (K <= 0) {
        if (beta == 1.0f) return;
        for (int i = 0; i < M; i++) {
            float *row = C + (size_t)i * ldc;
            if (beta == 0.0f) memset(row, 0, (size_t)N * sizeof(float));
            else for (int j = 0; j < N; j++) row[j] *= beta;
        }
        return;
    }
    GemmKernel kern = gemm_kernel_get();
    if (kern == GEMM_KERNEL_AVX512) {
        gemm_rm_own(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    GemmTiles t = gemm_tiles(M, N, K);
    int n = t.pm * t.pn;
    // inside a parallel region (attention's per-head loop) the same tiles run in order
    PAR_FOR(schedule(static), n > 1 && !omp_in_parallel(),
    for (int i = 0; i < n; i++) gemm_tile(trans_a, trans_b, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc, t, i););
}

void gemm_colsum_add(float *db, const float *dy, size_t rows, int cols) {
    int nblocks = (cols + COLSUM_BLOCK - 1) / COLSUM_BLOCK;
    PAR_FOR(schedule(static), rows * (size_t)cols >= GEMM_OMP_MIN_WORK,
    for (int blk = 0; blk < nblocks; blk++) {
        int j0 = blk * COLSUM_BLOCK, w = cols - j0 < COLSUM_BLOCK ? cols - j0 : COLSUM_BLOCK;
        double acc[COLSUM_BLOCK] = {0};
        for (size_t r = 0; r < rows; r++) {
            const float *row = dy + r * (size_t)cols + j0;
            for (int j = 0; j < w; j++) acc[j] += row[j];
        }
        for (int j = 0; j < w; j++) db[j0 + j] += (float)acc[j];
    });
}

void gemm_channel_sum_add(float *db, const float *dy, int N, int C, size_t P) {
    PAR_FOR(schedule(static), (size_t)N * C * P >= GEMM_OMP_MIN_WORK,
    for (int ch = 0; ch < C; ch++) {
        double s = 0;
        for (int n = 0; n < N; n++) {
            const float *p = dy + ((size_t)n * C + ch) * P;
            for (size_t i = 0; i < P; i++) s += p[i];
        }
        db[ch] += (float)s;
    });
}
