/* gemm_util.h: internal helpers of the GEMM-based op families (matmul.c, conv.c,
   attention.c); not part of the engine's public contract (that is autograd/ops.h).

       gemm_rm(0, 1, M, N, K, 1.0f, x, K, w, K, 0.0f, y, N);   // y (M,N) = x (M,K) w^T
       gemm_colsum_add(db, dy, rows, N);                       // db[j] += sum_r dy[r][j]

   gemm_rm's result does not depend on the thread count. It cuts C into parts, each one
   single-thread kernel call (GemmKernel), and spreads them over the OpenMP threads (inside
   a parallel region they run in order on the calling thread):
   - OpenBLAS rounds a part differently for different part shapes, so its cut (tiles)
     depends on the shape alone;
   - effdm's AVX-512 kernel sums each element the same way whatever the cut, so its cut
     follows the thread count (one part per thread, one call inside a parallel region).
   Row-major only.
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

// The single-thread kernel every tile of gemm_rm runs: OpenBLAS's cblas_sgemm, or
// effdm's AVX-512 kernel (sgemm_avx512.c). Picked once: EFFDM_SGEMM=auto|blas|avx512, auto
// (the default) takes avx512 when the CPU has AVX-512F. Different kernels add in different
// orders, so results agree to float rounding, not in every bit; one kernel is
// deterministic for any thread count.
typedef enum { GEMM_KERNEL_BLAS, GEMM_KERNEL_AVX512 } GemmKernel;
const char *gemm_kernel_name(GemmKernel k);
int gemm_kernel_supported(GemmKernel k);
// Reads EFFDM_SGEMM and sets the kernel; on a bad value or a kernel this CPU lacks, writes a
// one-line message to msg and returns -1 (nothing set). Entry points call it first; without
// it the first gemm_rm does the same and exits with status 2 on a bad value.
int gemm_kernel_init(char *msg, size_t msg_len);
GemmKernel gemm_kernel_get(void);
void gemm_kernel_set(GemmKernel k);  // tests and benches: k must be supported

// One tile with the AVX-512 kernel; returns 0 when its pack buffers cannot be allocated
// (gemm_rm then uses cblas_sgemm for the tile, with a note on stderr) or the build has no
// x86 kernel.
int sgemm_avx512_tile(int trans_a, int trans_b, int M, int N, int K, float alpha, const float *A, int lda,
                      const float *B, int ldb, float beta, float *C, int ldc);
int sgemm_avx512_supported(void);

// db[j] += sum over r of dy[r * cols + j], for dy (rows, cols). Each column is summed in
// double in row order, so the result does not depend on the thread count.
void gemm_colsum_add(float *db, const float *dy, size_t rows, int cols);

// db[c] += sum over n, p of dy[(n * C + c) * P + p], for dy (N, C, P) (a conv bias
// gradient). Sums in double in (n, p) order: bit-identical for any thread count.
void gemm_channel_sum_add(float *db, const float *dy, int N, int C, size_t P);

#endif
