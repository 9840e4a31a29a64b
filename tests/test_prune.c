/* test_prune.c: FeedForward pruning with UDFC (prune/prune.h, effdm compress).
   - UDFC's closed form against an independent least-squares solve (Householder QR, double);
   - the unit choice by L1 / L2 norm on hand-computable weights;
   - effdm compress on the shipped teacher: ratio 0 is bit-identical to no pruning; at 0.5
     the tensors shrink, the widths are read back by the loader, and the UDFC model's
     sampled latents are closer to the unpruned model's than pruning without it; the moments count
     every token the sampler showed the FeedForwards; bad input exits 2 with no file;
   - UDFC for quantization error (--quant-udfc): its moments' FP part equals the pruning
     moments, and with ff.net.0.proj quantized the corrected model samples closer to FP. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "testutil.h"
#include "io/weights.h"
#include "models/ldm.h"
#include "prune/prune.h"
#include "qalora/export.h"
#include "sample/sampler.h"

static char g_dir[256];

static double normal(Rng *r) {
    float v;
    rng_normal_fill(r, &v, 1);
    return v;
}
static int setup(void **state) {
    (void)state;
    return test_tmpdir_make(g_dir, sizeof g_dir, "prune");
}
static int teardown(void **state) {
    (void)state;
    return test_tmpdir_remove(g_dir);
}

// min ||U c - b|| by Householder QR of U (n x p, row-major; destroyed), into c (p).
static void lstsq_qr(double *U, int n, int p, double *b, double *c) {
    for (int j = 0; j < p; j++) {
        double norm = 0;
        for (int i = j; i < n; i++) norm += U[(size_t)i * p + j] * U[(size_t)i * p + j];
        norm = sqrt(norm);
        double alpha = U[(size_t)j * p + j] > 0 ? -norm : norm;
        double *v = malloc((size_t)n * sizeof *v), vv = 0;
        for (int i = 0; i < n; i++) v[i] = i < j ? 0 : U[(size_t)i * p + j];
        v[j] -= alpha;
        for (int i = j; i < n; i++) vv += v[i] * v[i];
        for (int k = j; k < p && vv > 0; k++) {  // U <- (I - 2 v v^T / v^T v) U
            double s = 0;
            for (int i = j; i < n; i++) s += v[i] * U[(size_t)i * p + k];
            for (int i = j; i < n; i++) U[(size_t)i * p + k] -= 2 * s / vv * v[i];
        }
        double s = 0;
        for (int i = j; i < n; i++) s += v[i] * b[i];
        for (int i = j; i < n && vv > 0; i++) b[i] -= 2 * s / vv * v[i];
        free(v);
    }
    for (int j = p - 1; j >= 0; j--) {  // R c = Q^T b
        double s = b[j];
        for (int k = j + 1; k < p; k++) s -= U[(size_t)j * p + k] * c[k];
        c[j] = s / U[(size_t)j * p + j];
    }
}

// Correlated hidden units with nonzero means: h = z A + mu (+ noise), n tokens of m units.
static void test_udfc_closed_form(void **state) {
    (void)state;
    enum { N = 400, M = 12, R = 5, NK = 8 };
    const int keep[NK] = {0, 2, 3, 5, 7, 8, 10, 11}, drop[M - NK] = {1, 4, 6, 9};
    Rng r;
    rng_seed(&r, 7, 0);
    double A[R][M], H[N][M];
    for (int a = 0; a < R; a++)
        for (int k = 0; k < M; k++) A[a][k] = normal(&r);
    for (int i = 0; i < N; i++) {
        double z[R];
        for (int a = 0; a < R; a++) z[a] = normal(&r);
        for (int k = 0; k < M; k++) {
            H[i][k] = 0.3 * k - 1 + 0.05 * normal(&r);
            for (int a = 0; a < R; a++) H[i][k] += z[a] * A[a][k];
        }
    }
    double sum[(M + 1) * (M + 1)] = {0};
    for (int i = 0; i < N; i++)
        for (int a = 0; a <= M; a++)
            for (int b = 0; b <= M; b++) sum[a * (M + 1) + b] += (a < M ? H[i][a] : 1.0) * (b < M ? H[i][b] : 1.0);
    double C[(M - NK) * (NK + 1)];
    Err e = {0};
    assert_int_equal(prune_udfc_solve(sum, M, keep, NK, 1e-14, C, &e), 0);
    for (int p = 0; p < M - NK; p++) {
        double *U = malloc((size_t)N * (NK + 1) * sizeof *U), b[N], c[NK + 1];
        for (int i = 0; i < N; i++) {
            for (int k = 0; k < NK; k++) U[(size_t)i * (NK + 1) + k] = H[i][keep[k]];
            U[(size_t)i * (NK + 1) + NK] = 1.0;
            b[i] = H[i][drop[p]];
        }
        lstsq_qr(U, N, NK + 1, b, c);
        for (int k = 0; k <= NK; k++) {
            double got = C[p * (NK + 1) + k];
            if (fabs(got - c[k]) > 1e-7 * (1 + fabs(c[k])))
                fail_msg("unit %d coefficient %d: closed form %.12g, least squares %.12g", drop[p], k, got, c[k]);
        }
        free(U);
    }
    // moments that are no second moments (a NaN): refused, not solved
    sum[0] = NAN;
    assert_int_equal(prune_udfc_solve(sum, M, keep, NK, 1e-14, C, &e), ERR_VALUE);
}

// Units scored by ||[value; gate]||_p * ||out column||_p on hand-made weights:
//   unit 0: value (3, 0), out 1        L2 3,   L1 3
//   unit 1: value (1, 1), gate (1, 1)  L2 2,   L1 4
//   unit 2: value (0.5, 0), out 10     L2 5,   L1 5
//   unit 3: value (0.1, 0)             L2 0.1, L1 0.1
static void test_select_by_norm(void **state) {
    (void)state;
    float wp[8 * 2] = {3, 0, 1, 1, 0.5f, 0, 0.1f, 0, /* gates */ 0, 0, 1, 1, 0, 0, 0, 0};
    float wo[4] = {1, 1, 10, 1};
    ModelLayer proj = {0}, out = {0};
    tensor_init_param(&proj.weight, wp, NULL, 2, (int[]){8, 2});
    tensor_init_param(&out.weight, wo, NULL, 2, (int[]){1, 4});
    int keep[4];
    Err e = {0};
    assert_int_equal(prune_ff_select(&proj, &out, 2, PRUNE_L2, keep, &e), 0);
    assert_int_equal(keep[0], 0);
    assert_int_equal(keep[1], 2);
    assert_int_equal(prune_ff_select(&proj, &out, 2, PRUNE_L1, keep, &e), 0);
    assert_int_equal(keep[0], 1);
    assert_int_equal(keep[1], 2);
    assert_int_equal(prune_ff_select(&proj, &out, 3, PRUNE_L2, keep, &e), 0);
    assert_int_equal(keep[2], 2);  // ascending: 0, 1, 2
}

static const char *zoo(const char *name) { return test_path_in(TEST_DATA_DIR "/../../models/zoo/fmnist-ldm", name); }

static Ldm *load(const char *ckpt) {
    Ldm *m = NULL;
    Err e = {0};
    LdmLoadOpts lo = {LDM_EMA_AUTO, LDM_PART_UNET | LDM_PART_COND_STAGE};
    if (ldm_load(&m, zoo("config.yaml"), ckpt, &lo, &e)) fail_msg("%s", e.msg);
    return m;
}

// Final latents of 6 guided DDIM trajectories (10 steps, seeds other than the moments'),
// malloc'ed: what the pruned model is for.
static float *sample_latents(Ldm *m, size_t *n) {
    Ctx *c = test_ctx_new((size_t)512 << 20);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    enum { B = 6 };
    size_t per = (size_t)C * H * W;
    float *z = malloc(B * per * sizeof *z);
    Rng rng[B];
    int y[B];
    for (int i = 0; i < B; i++) {
        rng_seed(&rng[i], 99, (uint64_t)i);
        rng_normal_fill(&rng[i], z + i * per, per);
        y[i] = i;
    }
    SamplerOpts so = {.kind = SAMPLER_DDIM, .steps = 10, .eta = 0, .scale = 3};
    Err e = {0};
    if (sampler_run(c, m, &so, z, B, y, rng, &e)) fail_msg("%s", e.msg);
    *n = B * per;
    test_ctx_delete(c);
    return z;
}

static const char *tmp(const char *name) { return test_path_in(g_dir, name); }

static void compress(const char *args, const char *out) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "compress %s --steps 10 --samples 16 --threads 2 --out '%s'", args, tmp(out));
    int rc = test_run_cli(g_dir, cmd);
    if (rc) fail_msg("effdm %s: exit %d: %s", cmd, rc, test_slurp(tmp("stderr.txt")));
}

static void test_compress_cli(void **state) {
    (void)state;
    compress("--ff 0", "ff0.safetensors");
    compress("--ff 0.5", "ff50.safetensors");
    compress("--ff 0.5 --reconstruct none", "ff50n.safetensors");
    Ldm *full = load(zoo("model.ckpt")), *p0 = load(tmp("ff0.safetensors"));
    // ratio 0: every UNet tensor bit-identical
    assert_int_equal(unet_param_tensors(full->unet), unet_param_tensors(p0->unet));
    for (int i = 0; i < unet_param_tensors(full->unet); i++) {
        const char *na, *nb;
        Tensor *a = unet_param_at(full->unet, i, &na), *b = unet_param_at(p0->unet, i, &nb);
        assert_string_equal(na, nb);
        assert_int_equal(a->n, b->n);
        assert_memory_equal(a->data, b->data, a->n * sizeof(float));
    }
    // 0.5: the widths are half, read back from the file; fewer parameters
    Ldm *pu = load(tmp("ff50.safetensors")), *pn = load(tmp("ff50n.safetensors"));
    for (int k = 0; k < unet_ff_blocks(full->unet); k++) {
        ModelLayer *fp, *fo, *pp, *po;
        unet_ff_layers(full->unet, k, &fp, &fo);
        unet_ff_layers(pu->unet, k, &pp, &po);
        assert_int_equal(po->weight.shape[1], fo->weight.shape[1] / 2);
        assert_int_equal(pp->weight.shape[0], fp->weight.shape[0] / 2);
    }
    assert_true(unet_param_count(pu->unet) < unet_param_count(full->unet));
    size_t n;
    float *of = sample_latents(full, &n), *ou = sample_latents(pu, &n), *on = sample_latents(pn, &n);
    double eu = rel_l2(ou, of, n), en = rel_l2(on, of, n);
    print_message("  sampled latents vs unpruned, 50%% of the FeedForward units: UDFC rel L2 %.4g, none %.4g\n", eu, en);
    assert_true(eu < en);
    assert_true(en > 0);
    free(of), free(ou), free(on);
    ldm_free(full), ldm_free(p0), ldm_free(pu), ldm_free(pn);
}

// The moments see every FeedForward input token: trajectories x 2 (guidance) x 4 steps x the
// block's tokens; the constant's entry counts them too.
static void test_moments_count(void **state) {
    (void)state;
    Ldm *m = load(zoo("model.ckpt"));
    PruneSampling ps = {4, 3.0, 5, 2, 11, NULL, NULL};
    FfMoments mom;
    Err e = {0};
    assert_int_equal(prune_ff_moments(m, &ps, &mom, &e), 0);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    double tokens_full = 0;
    for (int k = 0; k < mom.n_blocks; k++) {
        int M = mom.m[k];
        double per_token = mom.count[k] / (5.0 * 2 * 4);
        assert_true(per_token == floor(per_token) && per_token >= 1 && per_token <= (double)H * W);
        assert_true(mom.sum[k][(size_t)M * (M + 1) + M] == mom.count[k]);  // sum of 1 * 1
        if (per_token == (double)H * W) tokens_full++;
        for (int a = 0; a < M; a += 37)  // symmetric
            for (int b = 0; b < M; b += 41) assert_true(mom.sum[k][(size_t)a * (M + 1) + b] == mom.sum[k][(size_t)b * (M + 1) + a]);
    }
    assert_true(mom.n_blocks > 0);
    ff_moments_free(&mom);
    // the hooks are gone: the teacher runs as before
    for (int k = 0; k < unet_ff_blocks(m->unet); k++) {
        ModelLayer *p, *o;
        unet_ff_layers(m->unet, k, &p, &o);
        assert_null(o->quant_forward);
    }
    ldm_free(m);
    (void)tokens_full;
}

// A pruned checkpoint quantizes and exports like any other: naive W4A8 PTQ (tiny calibration,
// no gain fits), export, and the export's FeedForwards have the pruned widths; it samples.
static void test_pruned_exports(void **state) {
    (void)state;
    compress("--ff 0.5 --reconstruct none", "ff50q.safetensors");
    char args[4096];
    snprintf(args, sizeof args, "finetune --config '%s/../../configs/fmnist-ldm-w4a8.yaml' --set train.epochs=0 "
             "--set model.ckpt='%s' --set run.out='%s' --set calib.steps=4 --set calib.n_samples=2 "
             "--set calib.n_inputs=4 --set train.val_inputs=4 --set train.guidance_gain=off --set train.eps_gain=off --threads 2",
             TEST_DATA_DIR, tmp("ff50q.safetensors"), tmp("run"));
    if (test_run_cli(g_dir, args)) fail_msg("effdm %s: %s", args, test_slurp(tmp("stderr.txt")));
    snprintf(args, sizeof args, "export --run '%s' --out '%s'", tmp("run"), tmp("q.safetensors"));
    if (test_run_cli(g_dir, args)) fail_msg("effdm %s: %s", args, test_slurp(tmp("stderr.txt")));
    ExportModel *em;
    Err e = {0};
    if (export_load(&em, tmp("q.safetensors"), &e)) fail_msg("%s", e.msg);
    Ldm *full = load(zoo("model.ckpt"));
    for (int k = 0; k < unet_ff_blocks(em->ldm->unet); k++) {
        ModelLayer *p, *o, *fp, *fo;
        unet_ff_layers(em->ldm->unet, k, &p, &o);
        unet_ff_layers(full->unet, k, &fp, &fo);
        assert_int_equal(o->weight.shape[1], fo->weight.shape[1] / 2);
        assert_non_null(o->quant_forward);  // quantized, not left FP
    }
    export_free(em);
    ldm_free(full);
    snprintf(args, sizeof args, "sample --model '%s' --n 2 --steps 4 --out '%s'", tmp("q.safetensors"), tmp("s"));
    if (test_run_cli(g_dir, args)) fail_msg("effdm %s: %s", args, test_slurp(tmp("stderr.txt")));
}

static void expect_bad(const char *args, const char *needle) {
    char cmd[2048];
    snprintf(cmd, sizeof cmd, "compress %s --out '%s'", args, tmp("bad.safetensors"));
    assert_int_equal(test_run_cli(g_dir, cmd), 2);
    char *err = test_slurp(tmp("stderr.txt"));
    if (!strstr(err, needle)) fail_msg("effdm %s: stderr lacks '%s': %s", cmd, needle, err);
    free(err);
    struct stat st;
    assert_int_not_equal(stat(tmp("bad.safetensors"), &st), 0);
}

// Uniform per-row quantization with min/max ranges including 0, written out here (METHOD.md's
// quant.weight_init max): W -> (clamp(rint(W/Δ) + z, 0, 2^b - 1) - z) Δ, z = rint(-lo/Δ).
static void fake_quant_rows(Tensor *w, int bits) {
    const int rows = w->shape[0], len = (int)(w->n / (size_t)rows), qmax = (1 << bits) - 1;
    for (int r = 0; r < rows; r++) {
        float *x = w->data + (size_t)r * len;
        double lo = 0, hi = 0;
        for (int i = 0; i < len; i++) lo = x[i] < lo ? x[i] : lo, hi = x[i] > hi ? x[i] : hi;
        double d = (hi - lo) / qmax, z = rint(-lo / d);
        for (int i = 0; i < len; i++) {
            double q = rint(x[i] / d) + z;
            q = q < 0 ? 0 : q > qmax ? qmax : q;
            x[i] = (float)((q - z) * d);
        }
    }
}

static void fake_quant_ff_proj(Ldm *m, int bits) {
    for (int k = 0; k < unet_ff_blocks(m->unet); k++) {
        ModelLayer *p, *o;
        unet_ff_layers(m->unet, k, &p, &o);
        fake_quant_rows(&p->weight, bits);
    }
}

// UDFC for quantization error: the moments' h block is the FP hidden units (the same sums as
// the pruning moments, taken at ff.net.2's input by another hook); with ff.net.0.proj
// quantized to 3 bits (by the loop above, not effdm's quantizer), the model whose ff.net.2
// absorbed the error samples closer to the FP teacher than the one without; every tensor but
// ff.net.2's is untouched.
static void test_quant_udfc(void **state) {
    (void)state;
    Ldm *m = load(zoo("model.ckpt"));
    PruneSampling ps = {4, 3.0, 3, 3, 5, NULL, NULL};
    FfMoments mh, mq;
    Err e = {0};
    if (prune_ff_moments(m, &ps, &mh, &e)) fail_msg("%s", e.msg);
    if (prune_ff_quant_moments(m, &ps, 3, &mq, &e)) fail_msg("%s", e.msg);
    assert_int_equal(mq.n_blocks, mh.n_blocks);
    for (int k = 0; k < mh.n_blocks; k++) {
        const int M = mh.m[k], L = 2 * M + 1;
        assert_int_equal(mq.m[k], 2 * M);
        assert_true(mq.count[k] == mh.count[k]);
        double scale = 0, worst = 0;
        for (int a = 0; a < M; a++) scale = fmax(scale, fabs(mh.sum[k][(size_t)a * (M + 1) + a]));
        for (int a = 0; a <= M; a++)
            for (int b = 0; b <= M; b++) {
                int qa = a < M ? a : 2 * M, qb = b < M ? b : 2 * M;  // the constant is the last entry of both
                worst = fmax(worst, fabs(mq.sum[k][(size_t)qa * L + qb] - mh.sum[k][(size_t)a * (M + 1) + b]));
            }
        if (worst > 1e-5 * scale) fail_msg("block %d: h moments differ by %g (scale %g)", k, worst, scale);
    }
    ff_moments_free(&mh), ff_moments_free(&mq);
    ldm_free(m);

    compress("--quant-udfc 3", "q3.safetensors");
    Ldm *fp = load(zoo("model.ckpt")), *plain = load(zoo("model.ckpt")), *fixed = load(tmp("q3.safetensors"));
    for (int i = 0; i < unet_param_tensors(fp->unet); i++) {
        const char *na;
        Tensor *a = unet_param_at(fp->unet, i, &na), *b = unet_param_at(fixed->unet, i, NULL);
        assert_int_equal(a->n, b->n);
        if (!strstr(na, "ff.net.2.")) assert_memory_equal(a->data, b->data, a->n * sizeof(float));
    }
    fake_quant_ff_proj(plain, 3);
    fake_quant_ff_proj(fixed, 3);
    size_t n;
    float *of = sample_latents(fp, &n), *op = sample_latents(plain, &n), *ox = sample_latents(fixed, &n);
    double ep = rel_l2(op, of, n), ex = rel_l2(ox, of, n);
    print_message("  sampled latents vs FP, ff.net.0.proj at W3: with quantization UDFC rel L2 %.4g, without %.4g\n", ex, ep);
    assert_true(ex < ep);
    free(of), free(op), free(ox);
    ldm_free(fp), ldm_free(plain), ldm_free(fixed);
}

static void test_compress_bad_input(void **state) {
    (void)state;
    expect_bad("--ff 1", "--ff");
    expect_bad("", "nothing to do");
    expect_bad("--quant-udfc 1", "--quant-udfc");
    expect_bad("--ff 0.3 --reconstruct magic", "--reconstruct");
    expect_bad("--ff 0.3 --ldm-config x.yaml", "--ldm-config and --ckpt");
    char args[1200];
    snprintf(args, sizeof args, "--ff 0.3 --ldm-config '%s' --ckpt /nonexistent.ckpt", zoo("config.yaml"));
    expect_bad(args, "/nonexistent.ckpt");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_udfc_closed_form), cmocka_unit_test(test_select_by_norm),
        cmocka_unit_test(test_moments_count),    cmocka_unit_test(test_compress_cli),
        cmocka_unit_test(test_pruned_exports),   cmocka_unit_test(test_quant_udfc),
        cmocka_unit_test(test_compress_bad_input),
    };
    return cmocka_run_group_tests_name("prune", tests, setup, teardown);
}
