/* bench/qlut.c: what the level tables of an export's non-affine layers cost in accuracy
   (qalora/export_int.h "level tables", e.g. nupes), per layer, on real inputs.

       build/bench/qlut --model M.safetensors [--n 16] [--steps 20] [--threads N]

   Samples n images (DDIM, guidance 3, seed 1) with a hook around every quantized layer that
   runs both the integer path and the float path (EFFDM_KERNEL=float: the student exactly) on
   the layer's input and records the relative L2 of the two outputs; the sampler goes on with
   the float output, so every layer sees the inputs the student would. Prints per layer its
   path, the tables' worst relative level error (weights / activations) and the worst and
   mean relative L2 over the calls, then the range over the table layers. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench/benchutil.h"
#include "qalora/export.h"
#include "qalora/export_int.h"
#include "sample/generate.h"
#include "util/threads.h"

typedef struct {
    double worst, sum;
    int calls;
} Stat;

static ExportModel *g_em;
static Stat *g_stat;

static Tensor *both_paths(Ctx *c, ModelLayer *l, Tensor *x) {
    ExportLayer *q = l->quant;
    g_em->use_float = 0;
    Tensor *yi = export_layer_forward(c, l, x);
    g_em->use_float = 1;
    Tensor *yf = export_layer_forward(c, l, x);
    if (!yi || !yf) return NULL;
    double r = bench_rel_l2(yi->data, yf->data, yf->n);
    Stat *s = &g_stat[q - g_em->layers];
    s->worst = r > s->worst ? r : s->worst;
    s->sum += r;
    s->calls++;
    return yf;
}

static int count_batch(const float *images, const int *shape, const float *z, const int *labels, int first, int count,
                       void *user, Err *e) {
    *(int *)user += count;
    return 0;
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);
    const char *path = NULL;
    int n = 16, steps = 20, threads = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--model") && i + 1 < argc) path = argv[++i];
        else if (!strcmp(argv[i], "--n") && i + 1 < argc) n = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--steps") && i + 1 < argc) steps = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) threads = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: %s --model M.safetensors [--n N] [--steps S] [--threads T]\n", argv[0]);
            return 2;
        }
    }
    if (!path || n < 1 || steps < 1) {
        fprintf(stderr, "bench qlut: --model is required; --n, --steps >= 1\n");
        return 2;
    }
    threads_set(threads);
    Err e = {0};
    ExportModel *em = NULL;
    if (export_load(&em, path, &e)) {
        fprintf(stderr, "bench qlut: %s\n", e.msg);
        return 2;
    }
    g_em = em;
    g_stat = calloc((size_t)em->n_layers, sizeof *g_stat);
    int *labels = malloc((size_t)n * sizeof(int));
    if (!g_stat || !labels || sample_labels(em->ldm, n, -1, labels, &e)) {
        fprintf(stderr, "bench qlut: %s\n", e.code ? e.msg : "out of memory");
        return 1;
    }
    for (int k = 0; k < em->n_layers; k++) em->layers[k].layer->quant_forward = both_paths;
    Ctx c;
    if (ctx_init(&c, (size_t)16 << 30, &e)) {
        fprintf(stderr, "bench qlut: %s\n", e.msg);
        return 1;
    }
    ctx_set_grad(&c, 0);
    int done = 0;
    GenerateOpts g = {.sampler = {.kind = SAMPLER_DDIM, .steps = steps, .eta = 0.0f, .scale = 3.0f,
                                  .on_eval = export_on_eval, .user = em},
                      .seed = 1, .batch = 16, .on_batch = count_batch, .user = &done};
    if (sample_generate(&c, em->ldm, &g, labels, n, &e)) {
        fprintf(stderr, "bench qlut: %s\n", e.msg);
        return 1;
    }
    printf("qlut %s: %d images, DDIM %d steps, guidance 3; integer (%s) vs float path per layer call\n", path, done,
           steps, int_gemm_name(em->kernel));
    printf("%-58s %-7s %-9s %-9s %11s %11s\n", "layer", "path", "W tab err", "A tab err", "worst relL2", "mean relL2");
    double lo = INFINITY, hi = 0, mlo = INFINITY, mhi = 0;
    int nl = 0;
    for (int k = 0; k < em->n_layers; k++) {
        const ExportLayer *L = &em->layers[k];
        const Stat *s = &g_stat[k];
        double mean = s->calls ? s->sum / s->calls : 0;
        printf("%-58s %-7s %-9.2g %-9.2g %11.3g %11.3g\n", L->layer->name, !L->int_ok ? "float" : L->lut ? "int-lut"
               : "int", L->w_lut_err, L->a_lut_err, s->worst, mean);
        if (!L->lut) continue;
        nl++;
        lo = s->worst < lo ? s->worst : lo;
        hi = s->worst > hi ? s->worst : hi;
        mlo = mean < mlo ? mean : mlo;
        mhi = mean > mhi ? mean : mhi;
    }
    printf("quantized layers in memory: levels %zu + per-channel values and tables %zu bytes vs FP32 %zu: 1/%.2f\n",
           em->qlevel_bytes, em->qscale_bytes, em->qfp32_bytes,
           (double)em->qfp32_bytes / (double)(em->qlevel_bytes + em->qscale_bytes));
    if (nl)
        printf("%d table layers: worst relative L2 per layer %.3g .. %.3g, mean per layer %.3g .. %.3g\n", nl, lo, hi,
               mlo, mhi);
    ctx_free(&c);
    free(labels);
    free(g_stat);
    export_free(em);
    return 0;
}
