/* bench/qsample.c: sampling speed of exported low-bit models against their FP32 teacher, in
   one run: the teacher, and each export (a third with --extra) with the integer kernels and with the float
   reference path (EFFDM_KERNEL=float: fake-quantized input, W_eff dequantized per call).

       build/bench/qsample --w4a8 W4A8.safetensors --w4a4 W4A4.safetensors [--extra M.safetensors]
                           [--threads N] [--kernel vnni|avx2|ref] [--rounds R] [--no-split]

   Rows: ms per image of one UNet forward at batch 16 (class labels, timestep 500), the
   share of it spent in the quantized conv/linear layers (timed by a hook around each
   layer; for the teacher, the same layers run in FP32; --no-split only: the hooks are not
   for concurrent forwards), and seconds of a 20-step DDIM run
   with guidance 3 over 64 images at batch 16 (decode included), with ratios to the
   teacher. Times are process CPU time (the ratios to read on a shared machine, where wall
   time mostly measures the other jobs; exact at --threads 1), wall time is printed too.
   Cases are interleaved in R rounds (default 3); medians and minima are printed. The two
   exports may be any two (rows are named by their files: e.g. a uniform and a nupes W4A4). Before timing, each export's integer forward is
   checked against its float path (relative L2 printed). Also prints the memory of the
   quantized layers' weights (packed levels + per-channel values) against FP32. Every model
   runs with the batch split of effdm sample (models/ldm.h) unless --no-split.
   The last row, "free layers (bound)", is the teacher with the layers the --w4a4 export
   quantizes replaced by a zero output: the time of everything else (FP first stage, norms,
   activations, attention), so teacher / bound is the most a W4A4 kernel could gain. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ops/gemm_util.h"
#include "bench/benchutil.h"
#include "models/ldm.h"
#include "qalora/export.h"
#include "sample/generate.h"
#include "util/threads.h"

#define MAX_ROUNDS 9
#define BATCH 16

typedef struct {
    const char *label;
    Ldm *m;
    ExportModel *em;     // NULL: the teacher
    const char *kernel;  // export_set_kernel name
    double fwd[MAX_ROUNDS], share[MAX_ROUNDS], ddim[MAX_ROUNDS];        // CPU seconds
    double fwd_wall[MAX_ROUNDS], ddim_wall[MAX_ROUNDS];                  // wall seconds
} Case;

// Time spent inside hooked layers (the hook runs on the calling thread, outside OpenMP).
static double g_layer_seconds;  // CPU seconds (bench_cpu_now)

static Tensor *(*g_export_forward)(Ctx *, ModelLayer *, Tensor *);

static Tensor *timed_export_layer(Ctx *c, ModelLayer *l, Tensor *x) {
    double t0 = bench_cpu_now();
    Tensor *y = g_export_forward(c, l, x);
    g_layer_seconds += bench_cpu_now() - t0;
    return y;
}

// The teacher's layer as FP32 (quant_forward cleared for the call).
static Tensor *timed_fp_layer(Ctx *c, ModelLayer *l, Tensor *x) {
    double t0 = bench_cpu_now();
    l->quant_forward = NULL;
    Tensor *y = layer_forward(c, l, x);
    l->quant_forward = timed_fp_layer;
    g_layer_seconds += bench_cpu_now() - t0;
    return y;
}

/* The bound case: the teacher with every layer the W4A4 export quantizes costing nothing (its
   output a zero tensor of the right shape, the one write any layer must do). What is left is
   what no integer kernel can speed up: the FP first stage, norms, activations, attention, adds.
   teacher / bound is the most any W4A4 kernel could give end to end. */
static Tensor *free_layer(Ctx *c, ModelLayer *l, Tensor *x) {
    int shape[TENSOR_MAX_DIMS], nd = x->ndim;
    memcpy(shape, x->shape, sizeof shape);
    if (l->kind == LAYER_LINEAR) {
        shape[nd - 1] = l->weight.shape[0];
    } else {
        int kh = l->weight.shape[2], kw = l->weight.shape[3];
        shape[1] = l->weight.shape[0];
        shape[2] = (shape[2] + 2 * l->pad - kh) / l->stride + 1;
        shape[3] = (shape[3] + 2 * l->pad - kw) / l->stride + 1;
    }
    return tensor_zeros(c, nd, shape);
}

static int count_batch(const float *images, const int *shape, const float *z, const int *labels, int first, int count,
                       void *user, Err *e) {
    *(int *)user += count;
    return 0;
}

static double minimum(const double *v, int n) {
    double m = v[0];
    for (int i = 1; i < n; i++) m = v[i] < m ? v[i] : m;
    return m;
}


static void select_case(Case *k) {
    Err e = {0};
    if (k->em && export_set_kernel(k->em, k->kernel, &e)) {
        fprintf(stderr, "bench qsample: %s\n", e.msg);
        exit(2);
    }
}

// One forward at batch 16, a copy of the output (malloc).
static float *forward_copy(Ctx *c, Case *k, BenchFwd *f) {
    select_case(k);
    size_t mark = arena_mark(&c->arena);
    Tensor *y = ldm_apply_model(c, k->m, f->x, f->t, f->y);
    if (!y) {
        fprintf(stderr, "forward failed: %s\n", c->err.msg);
        exit(1);
    }
    float *r = malloc(y->n * sizeof(float));
    memcpy(r, y->data, y->n * sizeof(float));
    arena_release(&c->arena, mark);
    return r;
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);  // as effdm does (util/threads.h)
    int threads = 0, rounds = 3, split = 1;
    const char *w4a8 = NULL, *w4a4 = NULL, *extra = NULL, *kernel = "auto";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--w4a8") && i + 1 < argc) w4a8 = argv[++i];
        else if (!strcmp(argv[i], "--w4a4") && i + 1 < argc) w4a4 = argv[++i];
        else if (!strcmp(argv[i], "--extra") && i + 1 < argc) extra = argv[++i];
        else if (!strcmp(argv[i], "--kernel") && i + 1 < argc) kernel = argv[++i];
        else if (!strcmp(argv[i], "--rounds") && i + 1 < argc) rounds = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--no-split")) split = 0;
        else {
            fprintf(stderr, "usage: %s --w4a8 M.safetensors --w4a4 M.safetensors [--extra M.safetensors] "
                            "[--threads N] [--kernel K] [--rounds R] [--no-split]\n", argv[0]);
            return 2;
        }
    }
    if (!w4a8 || !w4a4 || rounds < 1 || rounds > MAX_ROUNDS) {
        fprintf(stderr, "bench qsample: --w4a8 and --w4a4 are required; --rounds 1..%d\n", MAX_ROUNDS);
        return 2;
    }
    threads_set(threads);
    Err e = {0};
    ExportModel *e8 = NULL, *e4 = NULL, *ex = NULL;
    if (export_load(&e8, w4a8, &e) || export_load(&e4, w4a4, &e) || (extra && export_load(&ex, extra, &e))) {
        fprintf(stderr, "bench qsample: %s\n", e.msg);
        return 2;
    }
    if (export_set_kernel(e8, kernel, &e)) {
        fprintf(stderr, "bench qsample: %s\n", e.msg);
        return 2;
    }
    // the teacher the exports name (effdm.source and its config)
    char cfg[PATH_MAX];
    snprintf(cfg, sizeof cfg, "%s", e8->source);
    char *slash = strrchr(cfg, '/');
    if (slash) snprintf(slash + 1, sizeof cfg - (size_t)(slash + 1 - cfg), "config.yaml");
    // the teacher, and a second copy of it for the bound row (below)
    Ldm *teacher = NULL, *bound = NULL;
    if (ldm_load(&teacher, cfg, e8->source, NULL, &e) || ldm_load(&bound, cfg, e8->source, NULL, &e)) {
        fprintf(stderr, "bench qsample: teacher: %s\n", e.msg);
        return 2;
    }
    const char *kname = export_kernel_name(e8);
    // rows named by the files (any exports: e.g. a uniform and a nupes W4A4)
    char lab[6][48];
    const char *files[3] = {w4a8, w4a4, extra};
    ExportModel *ems[3] = {e8, e4, ex};
    const int n_ems = extra ? 3 : 2;
    for (int j = 0; j < n_ems; j++) {
        const char *b = strrchr(files[j], '/');
        char base[32];
        snprintf(base, sizeof base, "%s", b ? b + 1 : files[j]);
        char *dot = strstr(base, ".safetensors");
        if (dot) *dot = '\0';
        snprintf(lab[2 * j], sizeof lab[0], "%s int", base);
        snprintf(lab[2 * j + 1], sizeof lab[0], "%s float", base);
    }
    {  // the bound: the teacher copy whose layers quantized in the W4A4 export are free
        int nb, n4;
        ModelLayer **B = unet_layers(bound->unet, &nb), **L4 = unet_layers(e4->ldm->unet, &n4);
        for (int i = 0; i < nb && i < n4; i++)
            if (L4[i]->quant) B[i]->quant_forward = free_layer;
    }
    Case cases[8] = {{"fp32 teacher", teacher, NULL, NULL, {0}, {0}, {0}}};
    int n_cases = 1 + 2 * n_ems;
    for (int j = 0; j < n_ems; j++) {
        cases[1 + 2 * j] = (Case){lab[2 * j], ems[j]->ldm, ems[j], kname, {0}, {0}, {0}};
        cases[2 + 2 * j] = (Case){lab[2 * j + 1], ems[j]->ldm, ems[j], "float", {0}, {0}, {0}};
    }
    // hooks: every quantized layer of the exports, the same layers of the teacher
    int n_all;
    ModelLayer **tl = unet_layers(teacher->unet, &n_all);
    for (int j = 0; j < n_ems && !split; j++) {
        int n;
        ModelLayer **L = unet_layers(ems[j]->ldm->unet, &n);
        for (int i = 0; i < n; i++) {
            if (!L[i]->quant) continue;
            g_export_forward = L[i]->quant_forward;
            L[i]->quant_forward = timed_export_layer;
            if (j == 0) tl[i]->quant_forward = timed_fp_layer;
        }
    }
    cases[n_cases++] = (Case){"free layers (bound)", bound, NULL, NULL, {0}, {0}, {0}};
    teacher->split_batch = split;
    bound->split_batch = split;
    for (int j = 0; j < n_ems; j++) ems[j]->ldm->split_batch = split;
    Ctx c;
    if (ctx_init(&c, (size_t)16 << 30, &e)) {
        fprintf(stderr, "bench qsample: %s\n", e.msg);
        return 1;
    }
    ctx_set_grad(&c, 0);
    printf("qsample bench  thr=%d blas=%s gemm=%s simd=%s kernel=%s rounds=%d batch split %s\n", threads_get(),
           threads_blas_name(), gemm_kernel_name(gemm_kernel_get()), bench_cpu_flags(), kname, rounds, split ? "on" : "off (--no-split)");
    printf("teacher %s\n", e8->source);
    for (int j = 0; j < n_ems; j++) {
        ExportModel *em = ems[j];
        printf("W%dA%d: %d/%d layers integer; quantized weights in memory: levels %zu + per-channel %zu bytes vs "
               "FP32 %zu bytes: 1/%.2f (levels alone 1/%.2f)\n", em->w_bits, em->a_bits, em->n_int_layers,
               em->n_layers, em->qlevel_bytes, em->qscale_bytes, em->qfp32_bytes,
               (double)em->qfp32_bytes / (double)(em->qlevel_bytes + em->qscale_bytes),
               (double)em->qfp32_bytes / (double)em->qlevel_bytes);
        printf("      the integer path's unpacked weight operands (built at load): %zu bytes more, in all 1/%.2f of FP32\n",
               em->qoperand_bytes,
               (double)em->qfp32_bytes / (double)(em->qlevel_bytes + em->qscale_bytes + em->qoperand_bytes));
    }

    int C, H, W;
    ldm_latent_shape(teacher, &C, &H, &W);
    float t[BATCH];
    int y[BATCH];
    for (int i = 0; i < BATCH; i++) {
        t[i] = 500.0f;
        y[i] = i % ldm_n_classes(teacher);
    }
    Tensor *x = tensor_zeros(&c, 4, (int[]){BATCH, C, H, W});
    for (size_t i = 0; i < x->n; i++) x->data[i] = (float)((i * 7919) % 201) / 100.0f - 1.0f;
    BenchFwd f = {&c, NULL, x, t, ldm_is_class_conditional(teacher) ? y : NULL};
    for (int j = 0; j < n_ems; j++) export_set_timestep(ems[j], 500);
    for (int k = 1; k < 1 + 2 * n_ems; k += 2) {
        float *yi = forward_copy(&c, &cases[k], &f), *yf = forward_copy(&c, &cases[k + 1], &f);
        printf("check: %s vs %s forward: relative L2 %.2g\n", cases[k].label, cases[k + 1].label,
               bench_rel_l2(yi, yf, (size_t)BATCH * C * H * W));
        free(yi);
        free(yf);
    }

    int *labels = malloc(64 * sizeof(int));
    if (sample_labels(teacher, 64, -1, labels, &e)) {
        fprintf(stderr, "bench qsample: %s\n", e.msg);
        return 1;
    }
    for (int r = 0; r < rounds; r++) {
        for (int k = 0; k < n_cases; k++) {
            Case *cs = &cases[k];
            select_case(cs);
            f.m = cs->m;
            if (cs->em) export_set_timestep(cs->em, 500);
            bench_fwd_run(&f);  // warm-up
            g_layer_seconds = 0;
            int reps = 0;
            double t0 = bench_now(), c0 = bench_cpu_now();
            while (reps < 3 || bench_cpu_now() - c0 < 1.0) {
                bench_fwd_run(&f);
                reps++;
            }
            double s = (bench_cpu_now() - c0) / reps;
            cs->fwd[r] = s / BATCH;
            cs->fwd_wall[r] = (bench_now() - t0) / reps / BATCH;
            cs->share[r] = g_layer_seconds / reps / s;
        }
        for (int k = 0; k < n_cases; k++) {
            Case *cs = &cases[k];
            select_case(cs);
            int done = 0;
            GenerateOpts g = {.sampler = {.kind = SAMPLER_DDIM, .steps = 20, .eta = 0.0f, .scale = 3.0f,
                                          .on_eval = cs->em ? export_on_eval : NULL, .user = cs->em},
                              .seed = 1, .batch = BATCH, .on_batch = count_batch, .user = &done};
            double t0 = bench_now(), c0 = bench_cpu_now();
            if (sample_generate(&c, cs->m, &g, labels, 64, &e)) {
                fprintf(stderr, "bench qsample: %s\n", e.msg);
                return 1;
            }
            cs->ddim[r] = bench_cpu_now() - c0;
            cs->ddim_wall[r] = bench_now() - t0;
        }
        fprintf(stderr, "round %d/%d done\n", r + 1, rounds);
    }
    double f0 = bench_median(cases[0].fwd, rounds), d0 = bench_median(cases[0].ddim, rounds);
    printf("CPU time (medians over rounds; ratios = teacher / model):\n");
    printf("%-30s %16s %8s %12s %18s %8s\n", "model", "fwd b=16 ms/img", "speedup", "layer share", "ddim20 64 img s",
           "speedup");
    for (int k = 0; k < n_cases; k++) {
        double fm = bench_median(cases[k].fwd, rounds), dm = bench_median(cases[k].ddim, rounds);
        char share[16] = "-";
        if (!split) snprintf(share, sizeof share, "%.0f%%", 100 * bench_median(cases[k].share, rounds));
        printf("%-30s %16.3f %7.2fx %12s %18.2f %7.2fx\n", cases[k].label, 1e3 * fm, f0 / fm, share, dm, d0 / dm);
    }
    double fw0 = bench_median(cases[0].fwd_wall, rounds), dw0 = bench_median(cases[0].ddim_wall, rounds);
    printf("wall time (medians; includes waiting for a core on a shared machine):\n");
    for (int k = 0; k < n_cases; k++) {
        double fm = bench_median(cases[k].fwd_wall, rounds), dm = bench_median(cases[k].ddim_wall, rounds);
        printf("%-30s %16.3f %7.2fx %12s %18.2f %7.2fx\n", cases[k].label, 1e3 * fm, fw0 / fm, "", dm, dw0 / dm);
    }
    double f1 = minimum(cases[0].fwd, rounds), d1 = minimum(cases[0].ddim, rounds);
    printf("CPU time, minima over rounds (ratios = teacher / model):\n");
    for (int k = 0; k < n_cases; k++) {
        double fm = minimum(cases[k].fwd, rounds), dm = minimum(cases[k].ddim, rounds);
        printf("%-30s %16.3f %7.2fx %12s %18.2f %7.2fx\n", cases[k].label, 1e3 * fm, f1 / fm, "", dm, d1 / dm);
    }
    printf("per round, CPU (fwd ms/img | ddim s):\n");
    for (int k = 0; k < n_cases; k++) {
        printf("  %-30s", cases[k].label);
        for (int r = 0; r < rounds; r++) printf("  %.3f | %.2f", 1e3 * cases[k].fwd[r], cases[k].ddim[r]);
        printf("\n");
    }
    printf("peak RSS %.1f MiB\n", bench_peak_rss_mib());
    free(labels);
    ctx_free(&c);
    for (int i = 0; i < n_all; i++) tl[i]->quant_forward = NULL;
    ldm_free(teacher);
    ldm_free(bound);
    for (int j = 0; j < n_ems; j++) export_free(ems[j]);
    return 0;
}
