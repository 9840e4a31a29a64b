/* bench/sample.c: sampling speed of a CompVis LDM (default: the shipped teacher fmnist-ldm):
   seconds per UNet forward (no grad, class labels) at batch 1, 16, 64, and images/s of a
   50-step DDIM run with guidance 3 over 64 images (decode included; the median of --reps
   runs, default 3, each run's seconds printed after it), peak RSS.

       build/bench/sample [--threads N] [--ldm-config C.yaml --ckpt M.ckpt] [--reps R]

   The teacher is found as `effdm sample` finds it: $EFFDM_ZOO/fmnist-ldm, else
   <bench dir>/../../models/zoo/fmnist-ldm. Before timing, when the source tree's
   tests/data/teacher/ddim_ref is next to it, the 20-step guidance-1.5 run is checked against
   the CompVis fixture (relative L2 printed). */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ops/gemm_util.h"
#include "bench/benchutil.h"
#include "io/npy.h"
#include "models/ldm.h"
#include "sample/generate.h"
#include "util/threads.h"

// DDIM 20 steps, guidance 1.5 from the fixture's x_T against its z: the check before timing.
static void check_ddim_ref(Ctx *c, Ldm *m, const char *dir) {
    char p1[PATH_MAX], p2[PATH_MAX], p3[PATH_MAX];
    snprintf(p1, sizeof p1, "%s/xT.npy", dir);
    snprintf(p2, sizeof p2, "%s/y.npy", dir);
    snprintf(p3, sizeof p3, "%s/z_S20_scale1.5.npy", dir);
    NpyArray xT = {0}, y = {0}, z = {0};
    Err e = {0};
    if (npy_read(p1, &xT, &e) || npy_read(p2, &y, &e) || npy_read(p3, &z, &e)) {
        printf("check: skipped (%s)\n", e.msg);
        goto done;
    }
    int N = xT.shape[0], labels[64];
    for (int i = 0; i < N && i < 64; i++) labels[i] = (int)y.data[i];
    SamplerOpts o = {.kind = SAMPLER_DDIM, .steps = 20, .eta = 0.0f, .scale = 1.5f};
    if (sampler_run(c, m, &o, xT.data, N, labels, NULL, &e)) {
        fprintf(stderr, "check failed: %s\n", e.msg);
        exit(1);
    }
    double r = bench_rel_l2(xT.data, z.data, z.n);
    printf("check: DDIM 20 steps, guidance 1.5 vs CompVis ddim_ref z: relative L2 %.2g %s\n", r,
           r <= 1e-4 ? "(ok)" : "(MISMATCH)");
    if (r > 1e-4) exit(1);
done:
    npy_free(&xT);
    npy_free(&y);
    npy_free(&z);
}

static int count_batch(const float *images, const int *shape, const float *z, const int *labels, int first, int count,
                       void *user, Err *e) {
    (void)images, (void)shape, (void)z, (void)labels, (void)first, (void)e;
    *(int *)user += count;
    return 0;
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);  // as effdm does (util/threads.h)
    int threads = 0, split = 1, batches[16] = {1, 16, 64}, n_batches = 3, reps = 3;
    const char *cfg = NULL, *ckpt = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--ldm-config") && i + 1 < argc) cfg = argv[++i];
        else if (!strcmp(argv[i], "--ckpt") && i + 1 < argc) ckpt = argv[++i];
        else if (!strcmp(argv[i], "--no-split")) split = 0;
        else if (!strcmp(argv[i], "--reps") && i + 1 < argc && (reps = atoi(argv[i + 1])) >= 1 && reps <= 9) i++;
        else if (!strcmp(argv[i], "--batches") && i + 1 < argc && (n_batches = bench_parse_list(argv[i + 1], batches, 16)))
            i++;
        else {
            fprintf(stderr, "usage: %s [--threads N] [--ldm-config C.yaml --ckpt M.ckpt] [--no-split] [--batches 1,16,64] [--reps 1..9]\n", argv[0]);
            return 2;
        }
    }
    threads_set(threads);
    char exe_dir[PATH_MAX], tcfg[PATH_MAX], tckpt[PATH_MAX], ref[PATH_MAX];
    ssize_t len = readlink("/proc/self/exe", exe_dir, sizeof exe_dir - 1);
    exe_dir[len > 0 ? len : 0] = '\0';
    if (strrchr(exe_dir, '/')) *strrchr(exe_dir, '/') = '\0';
    if (!cfg) {
        const char *zoo = getenv("EFFDM_ZOO");
        if (zoo && *zoo) {
            snprintf(tcfg, sizeof tcfg, "%s/fmnist-ldm/config.yaml", zoo);
            snprintf(tckpt, sizeof tckpt, "%s/fmnist-ldm/model.ckpt", zoo);
        } else {
            snprintf(tcfg, sizeof tcfg, "%s/../../models/zoo/fmnist-ldm/config.yaml", exe_dir);
            snprintf(tckpt, sizeof tckpt, "%s/../../models/zoo/fmnist-ldm/model.ckpt", exe_dir);
        }
        cfg = tcfg;
        ckpt = tckpt;
    }
    Err e = {0};
    Ldm *m = NULL;
    if (ldm_load(&m, cfg, ckpt, NULL, &e)) {
        fprintf(stderr, "bench sample: %s\n", e.msg);
        return 2;
    }
    m->split_batch = split;  // as effdm sample (ldm.h)
    Ctx c;
    if (ctx_init(&c, (size_t)16 << 30, &e)) {
        fprintf(stderr, "bench sample: %s\n", e.msg);
        return 1;
    }
    ctx_set_grad(&c, 0);
    printf("sample bench  model=%s  thr=%d blas=%s gemm=%s simd=%s  batch split %s\n", cfg, threads_get(), threads_blas_name(), gemm_kernel_name(gemm_kernel_get()),
           bench_cpu_flags(), split ? "on" : "off (--no-split)");
    if (cfg == tcfg) {
        snprintf(ref, sizeof ref, "%s/../../tests/data/teacher/ddim_ref", exe_dir);
        if (access(ref, R_OK) == 0) check_ddim_ref(&c, m, ref);
    }

    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    for (int k = 0; k < n_batches; k++) {
        int B = batches[k];
        float *t = malloc((size_t)B * sizeof(float));
        int *y = malloc((size_t)B * sizeof(int));
        for (int i = 0; i < B; i++) {
            t[i] = (float)(1 + 20 * (i % 50));
            y[i] = ldm_is_class_conditional(m) ? i % ldm_n_classes(m) : 0;
        }
        Tensor *x = tensor_zeros(&c, 4, (int[]){B, C, H, W});
        for (size_t i = 0; i < x->n; i++) x->data[i] = (float)((i * 7919) % 201) / 100.0f - 1.0f;
        BenchFwd f = {&c, m, x, t, ldm_is_class_conditional(m) ? y : NULL};
        double s = bench_time(bench_fwd_run, &f, 1.0);
        printf("unet forward  batch %-3d  %9.2f ms  %8.2f ms/image  peak arena %.1f MiB\n", B, 1e3 * s, 1e3 * s / B,
               (double)c.arena.peak / (1 << 20));
        free(t);
        free(y);
    }

    const int run_batches[2] = {64, 16};
    for (int k = 0; k < 2; k++) {
        int n = 64, done = 0;
        int *y = malloc((size_t)n * sizeof(int));
        if (sample_labels(m, n, -1, y, &e)) {
            fprintf(stderr, "bench sample: %s\n", e.msg);
            return 1;
        }
        double ts[9];
        for (int r = 0; r < reps; r++) {
            GenerateOpts g = {.sampler = {.kind = SAMPLER_DDIM, .steps = 50, .eta = 0.0f, .scale = 3.0f},
                              .seed = 1, .batch = run_batches[k], .on_batch = count_batch, .user = &done};
            done = 0;
            double t0 = bench_now();
            if (sample_generate(&c, m, &g, ldm_is_class_conditional(m) ? y : NULL, n, &e)) {
                fprintf(stderr, "bench sample: %s\n", e.msg);
                return 1;
            }
            ts[r] = bench_now() - t0;
        }
        double s = bench_median(ts, reps);
        printf("ddim 50 steps guidance 3  %d images  batch %-3d  %7.2f s  %6.2f images/s  peak arena %.1f MiB  "
               "(median of %d:", done, run_batches[k], s, done / s, (double)c.arena.peak / (1 << 20), reps);
        for (int r = 0; r < reps; r++) printf(" %.2f", ts[r]);
        printf(")\n");
        free(y);
    }
    printf("peak RSS %.1f MiB\n", bench_peak_rss_mib());
    ctx_free(&c);
    ldm_free(m);
    return 0;
}
