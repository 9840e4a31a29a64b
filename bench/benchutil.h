/* benchutil.h: timing and machine description shared by the bench/ programs. */
#ifndef EFFDM_BENCHUTIL_H
#define EFFDM_BENCHUTIL_H

#include <stddef.h>

#include "models/ldm.h"

// Monotonic seconds.
double bench_now(void);
// CPU seconds used by this process (all its threads): on a machine shared with other jobs
// this counts the work done, not the time spent waiting for a core.
double bench_cpu_now(void);
// Peak resident set size of this process in MiB (VmHWM).
double bench_peak_rss_mib(void);
// Current resident set size of this process in MiB (VmRSS).
double bench_rss_mib(void);
// Resets the peak RSS to the current RSS (writes 5 to /proc/self/clear_refs); 0 or -1.
int bench_reset_peak_rss(void);
// "avx512f avx512_vnni avx2 fma" subset the CPU has, for the header line.
const char *bench_cpu_flags(void);
// Runs fn(arg) once to warm up, then repeatedly for at least min_seconds (and 3 runs);
// returns the median seconds per run.
double bench_time(void (*fn)(void *), void *arg, double min_seconds);
// The median of v[0..n) (n >= 1; the mean of the middle two for even n); v is left as it is.
double bench_median(const double *v, int n);
// ||a - b|| / ||b|| over n floats (in double); ||a - b|| when b is all zero.
double bench_rel_l2(const float *a, const float *b, size_t n);
// A comma-separated list of integers in 1..4096 ("1,8,32") into v (at most max): the count,
// or 0 when s is not such a list.
int bench_parse_list(const char *s, int *v, int max);
// Seconds of one cblas_sgemm of (M x K) x (K x N), median over >= min_seconds.
double bench_sgemm_seconds(int M, int N, int K, double min_seconds);

// One no-grad forward of m's UNet on x (N, C, H, W) at timesteps t with labels y (NULL for an
// unconditional model), its arena released after: a bench_time body. Exits on failure.
typedef struct {
    Ctx *c;
    Ldm *m;
    Tensor *x;
    float *t;
    int *y;
} BenchFwd;
void bench_fwd_run(void *p);

#endif
