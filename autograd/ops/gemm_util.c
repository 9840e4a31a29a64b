/* gemm_util.c: the cblas_sgemm wrapper and the deterministic bias-gradient sums. */
#include "autograd/ops/gemm_util.h"

#include <cblas.h>
#include <string.h>

// Columns summed by one OpenMP task: wide enough for unit-stride inner loops, narrow
// enough that 512 columns still make several tasks for two threads.
#define COLSUM_BLOCK 64

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
    cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans, trans_b ? CblasTrans : CblasNoTrans, M, N,
                K, alpha, A, lda, B, ldb, beta, C, ldc);
}

void gemm_colsum_add(float *db, const float *dy, size_t rows, int cols) {
    int nblocks = (cols + COLSUM_BLOCK - 1) / COLSUM_BLOCK;
#pragma omp parallel for schedule(static) if (rows * (size_t)cols >= GEMM_OMP_MIN_WORK)
    for (int blk = 0; blk < nblocks; blk++) {
        int j0 = blk * COLSUM_BLOCK, w = cols - j0 < COLSUM_BLOCK ? cols - j0 : COLSUM_BLOCK;
        double acc[COLSUM_BLOCK] = {0};
        for (size_t r = 0; r < rows; r++) {
            const float *row = dy + r * (size_t)cols + j0;
            for (int j = 0; j < w; j++) acc[j] += row[j];
        }
        for (int j = 0; j < w; j++) db[j0 + j] += (float)acc[j];
    }
}

void gemm_channel_sum_add(float *db, const float *dy, int N, int C, size_t P) {
#pragma omp parallel for schedule(static) if ((size_t)N * C * P >= GEMM_OMP_MIN_WORK)
    for (int ch = 0; ch < C; ch++) {
        double s = 0;
        for (int n = 0; n < N; n++) {
            const float *p = dy + ((size_t)n * C + ch) * P;
            for (size_t i = 0; i < P; i++) s += p[i];
        }
        db[ch] += (float)s;
    }
}
