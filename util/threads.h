/* threads.h: the single thread-count setting. OpenMP threads every loop, GEMMs included
   (gemm_rm cuts a GEMM into parts whose sums do not depend on the cut, each part one
   single-threaded kernel call: OpenBLAS or effdm's AVX-512 kernel, autograd/ops/gemm_util.h),
   so every result is bit-identical for any thread count.
   The CLI calls threads_set once (from --threads, else EFFDM_THREADS, else all cores);
   nothing else touches thread counts. */
#ifndef EFFDM_THREADS_H
#define EFFDM_THREADS_H

// Sets OpenMP and OpenBLAS thread counts; n <= 0 means threads_default().
void threads_set(int n);
// Current thread count.
int threads_get(void);
// EFFDM_THREADS if set to a positive integer, else the number of online cores (divided
// among the MPI ranks started on this machine).
int threads_default(void);
// Short description of the BLAS build ("openblas-pthread" / "openblas-openmp" / ...), for benches.
const char *threads_blas_name(void);

// Every parallel loop is OpenMP's, and a UNet forward is hundreds of short parallel
// regions; waking sleeping threads costs more than a small region (measured on 2 cores: the
// shipped teacher's distillation step 0.064 s with libgomp's default spin, 0.049 s with
// GOMP_SPINCOUNT=30000000; docs/PERFORMANCE.md "Thread hand-over"). libgomp still spins
// only briefly when there are more threads than CPUs (mpirun ranks bound to a core each).
// It reads the variables when it loads, so this sets GOMP_SPINCOUNT and re-executes the
// program once, from main, before anything else; a user's OMP_WAIT_POLICY or GOMP_SPINCOUNT
// wins (OMP_WAIT_POLICY=PASSIVE on a machine shared with other jobs). Returns when nothing
// was to be done or exec failed (then only slower).
void threads_reexec_spinning(char **argv);

#endif
