/* threads.h: the single thread-count setting. OpenBLAS threads one big GEMM, OpenMP
   threads the element-wise, norm and im2col loops; both use the same count.
   The CLI calls threads_set once (from --threads, else EFFDM_THREADS, else all cores);
   nothing else touches thread counts. */
#ifndef EFFDM_THREADS_H
#define EFFDM_THREADS_H

// Sets OpenMP and OpenBLAS thread counts; n <= 0 means threads_default().
void threads_set(int n);
// Current thread count.
int threads_get(void);
// EFFDM_THREADS if set to a positive integer, else the number of online cores.
int threads_default(void);
// Short description of the BLAS build ("openblas-pthread" / "openblas-openmp" / ...), for benches.
const char *threads_blas_name(void);

#endif
