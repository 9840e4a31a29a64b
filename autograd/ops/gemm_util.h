/* gemm_util.h: internal helpers of the GEMM-based op families (matmul.c, conv.c,
   attention.c); not part of the engine's public contract (that is autograd/ops.h).

       gemm_rm(0, 1, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);   // y (M,N) = x (M,K) w^T
       gemm_colsum_add(db, dy, rows, N);                       // db[j] += sum_r dy[r][j]

   gemm_rm's result does not depend on the thread count: it cuts C into tiles by the shape
   alone and spreads them over the OpenMP threads (OpenBLAS itself runs one thread). Inside
   an OpenMP parallel region it runs the same tiles in order. Row-major only.
*/
#ifndef EFFDM_GEMM_UTIL_H
#define EFFDM_GEMM_UTIL_H

#include <stddef.h>

// Elements a loop must touch before it is worth waking OpenMP threads for: below this,
// the hand-over costs more than the loop (parallel regions use `if (work >= ...)`).
#define GEMM_OMP_MIN_WORK 32768

// C (M,N) = alpha op(A) op(B) + beta C, row-major, op(X) = X^T when trans_x != 0, as
// cblas_sgemm, bit-identical for any thread count. Also correct for empty shapes, which cblas rejects (lda >= 1): M or N == 0
// does nothing; K == 0 leaves beta C (zeros when beta == 0).
void gemm_rm(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
             const float *B, int ldb, float beta, float *C, int ldc);

// db[j] += sum over r of dy[r * cols + j], for dy (rows, cols). Each column is summed in
// double in row order, so the result does not depend on the thread count.
void gemm_colsum_add(float *db, const float *dy, size_t rows, int cols);

// db[c] += sum over n, p of dy[(n * C + c) * P + p], for dy (N, C, P) (a conv bias
// gradient). Sums in double in (n, p) order: bit-identical for any thread count.
void gemm_channel_sum_add(float *db, const float *dy, int N, int C, size_t P);

#endif
