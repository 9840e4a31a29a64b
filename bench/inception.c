/* bench/inception.c: images/s of the FID Inception forward (eval/inception.h, what `effdm eval
   --features inception` runs: 299 x 299 input, pool3 features only, no logits), at several
   batch sizes and thread counts.

       build/bench/inception [--weights W.pth] [--batches 1,8,32] [--threads-list 1,2] [--seconds S]

   Weights: --weights, else the upstream parity fixture (random fp16 weights with the real
   file's names and shapes; the speed does not depend on the values) at
   $EFFDM_SHARED_DIR/fixtures/fid/inception/inception_random_fp16.pth (CMake's EFFDM_SHARED_DIR,
   default <source>/../shared, the folder the tests read). When that fixture
   folder is there, the forward is first checked against its pytorch-fid outputs (x299.npy,
   x32.npy): max |difference| and relative L2 of pool3 and logits are printed, and the bench
   stops on a relative L2 above 1e-4 (test_inception's bar).
   Each case: one warm-up forward, then forwards for at least S seconds (default 3) and 3 runs;
   the medians are printed: wall time as images/s, and the process CPU time per forward (at one
   thread the work done, not the waiting for a core on a shared machine). Input: a fixed
   299 x 299 pattern in [0, 1]. */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ops/gemm_util.h"
#include "bench/benchutil.h"
#include "eval/inception.h"
#include "io/npy.h"
#include "util/threads.h"

#define MAX_LIST 8
#define MAX_RUNS 200


typedef struct {
    Inception *net;
    Ctx *c;
    const float *x;
    int n;
    float *pool3;
} IncRun;

static void inc_run(void *p) {
    IncRun *r = p;
    Err e = {0};
    if (inception_forward(r->net, r->c, r->x, r->n, INCEPTION_SIZE, INCEPTION_SIZE, r->pool3, NULL, NULL, NULL, NULL,
                          &e)) {
        fprintf(stderr, "bench inception: %s\n", e.msg);
        exit(1);
    }
}

static double max_abs_diff(const float *a, const float *b, size_t n) {
    double m = 0;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        if (d > m) m = d;
    }
    return m;
}

// One fixture case: pool3 and logits against pytorch-fid's. Returns the worse relative L2.
static double check_case(Inception *net, Ctx *c, const char *dir, const char *in, const char *pool, const char *lg) {
    char p1[PATH_MAX], p2[PATH_MAX], p3[PATH_MAX];
    snprintf(p1, sizeof p1, "%s/%s", dir, in);
    snprintf(p2, sizeof p2, "%s/%s", dir, pool);
    snprintf(p3, sizeof p3, "%s/%s", dir, lg);
    NpyArray x = {0}, rp = {0}, rl = {0};
    Err e = {0};
    double worst = 0;
    if (npy_read(p1, &x, &e) || npy_read(p2, &rp, &e) || npy_read(p3, &rl, &e)) {
        printf("check: skipped (%s)\n", e.msg);
        goto done;
    }
    int N = x.shape[0];
    float *p = malloc(rp.n * sizeof(float)), *l = malloc(rl.n * sizeof(float));
    if (!p || !l || rp.n != (size_t)N * INCEPTION_FEATURES || rl.n != (size_t)N * INCEPTION_CLASSES) {
        fprintf(stderr, "bench inception: fixture %s: unexpected sizes\n", dir);
        exit(1);
    }
    if (inception_forward(net, c, x.data, N, x.shape[2], x.shape[3], p, l, NULL, NULL, NULL, &e)) {
        fprintf(stderr, "bench inception: %s\n", e.msg);
        exit(1);
    }
    double r1 = bench_rel_l2(p, rp.data, rp.n), r2 = bench_rel_l2(l, rl.data, rl.n);
    printf("check: %-8s (%d images %dx%d) vs pytorch-fid: pool3 max|diff| %.3g rel L2 %.3g; logits max|diff| %.3g "
           "rel L2 %.3g\n", in, N, x.shape[2], x.shape[3], max_abs_diff(p, rp.data, rp.n), r1,
           max_abs_diff(l, rl.data, rl.n), r2);
    worst = r1 > r2 ? r1 : r2;
    free(p);
    free(l);
done:
    npy_free(&x);
    npy_free(&rp);
    npy_free(&rl);
    return worst;
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);  // as effdm does (util/threads.h)
    int batches[MAX_LIST] = {1, 8, 32}, nb = 3, thr[MAX_LIST] = {1, 2}, nt = 2;
    double seconds = 3.0;
    const char *weights = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--weights") && i + 1 < argc) weights = argv[++i];
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc && (nb = bench_parse_list(argv[i + 1], batches, MAX_LIST))) i++;
        else if (!strcmp(argv[i], "--threads-list") && i + 1 < argc && (nt = bench_parse_list(argv[i + 1], thr, MAX_LIST))) i++;
        else if (!strcmp(argv[i], "--seconds") && i + 1 < argc && (seconds = atof(argv[i + 1])) >= 0) i++;
        else {
            fprintf(stderr, "usage: %s [--weights W.pth] [--batches 1,8,32] [--threads-list 1,2] [--seconds S]\n",
                    argv[0]);
            return 2;
        }
    }
    char fix_dir[PATH_MAX], fix_w[PATH_MAX];
    snprintf(fix_dir, sizeof fix_dir, "%s/fixtures/fid/inception", SHARED_DIR);
    snprintf(fix_w, sizeof fix_w, "%s/inception_random_fp16.pth", fix_dir);
    if (!weights) weights = fix_w;

    Err e = {0};
    Inception *net = NULL;
    if (inception_load(&net, weights, &e)) {
        fprintf(stderr, "bench inception: %s\n", e.msg);
        return 2;
    }
    Ctx c;
    if (ctx_init(&c, (size_t)32 << 30, &e)) {
        fprintf(stderr, "bench inception: %s\n", e.msg);
        return 1;
    }
    threads_set(thr[nt - 1]);
    printf("inception bench  weights=%s  blas=%s gemm=%s simd=%s\n", weights, threads_blas_name(), gemm_kernel_name(gemm_kernel_get()), bench_cpu_flags());
    if (access(fix_w, R_OK) == 0) {
        double r = check_case(net, &c, fix_dir, "x299.npy", "pool3_299.npy", "logits_299.npy");
        double r2 = check_case(net, &c, fix_dir, "x32.npy", "pool3_32.npy", "logits_32.npy");
        if (r2 > r) r = r2;
        if (r > 1e-4) {
            fprintf(stderr, "bench inception: parity check failed (relative L2 %.3g > 1e-4)\n", r);
            return 1;
        }
    } else {
        printf("check: skipped (no fixture at %s)\n", fix_dir);
    }

    int bmax = 0;
    for (int k = 0; k < nb; k++)
        if (batches[k] > bmax) bmax = batches[k];
    const size_t per = (size_t)3 * INCEPTION_SIZE * INCEPTION_SIZE;
    float *x = malloc((size_t)bmax * per * sizeof(float));
    float *pool3 = malloc((size_t)bmax * INCEPTION_FEATURES * sizeof(float));
    if (!x || !pool3) {
        fprintf(stderr, "bench inception: out of memory\n");
        return 1;
    }
    for (size_t i = 0; i < (size_t)bmax * per; i++) x[i] = (float)((i * 7919) % 256) / 255.0f;
    for (int j = 0; j < nt; j++) {
        threads_set(thr[j]);
        for (int k = 0; k < nb; k++) {
            IncRun r = {net, &c, x, batches[k], pool3};
            inc_run(&r);  // warm-up: page faults of the arena
            double wall[MAX_RUNS], cpu[MAX_RUNS], t_start = bench_now();
            int n = 0;
            while (n < MAX_RUNS && (n < 3 || bench_now() - t_start < seconds)) {
                double w0 = bench_now(), c0 = bench_cpu_now();
                inc_run(&r);
                cpu[n] = bench_cpu_now() - c0;
                wall[n++] = bench_now() - w0;
            }
            double s = bench_median(wall, n), sc = bench_median(cpu, n);
            printf("inception  threads %d  batch %-3d  %8.3f s/forward  %7.2f images/s  (CPU %.3f s: %.2f images/CPU-s)"
                   "  %d runs  peak arena %.0f MiB\n", threads_get(), batches[k], s, batches[k] / s, sc,
                   batches[k] / sc, n, (double)c.arena.peak / (1 << 20));
            fflush(stdout);
        }
    }
    printf("peak RSS %.1f MiB\n", bench_peak_rss_mib());
    free(x);
    free(pool3);
    ctx_free(&c);
    inception_free(net);
    return 0;
}
