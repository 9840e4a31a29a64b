/* test_prune.c: FeedForward unit and attention head pruning with UDFC (prune/prune.h, effdm
   compress).
   - UDFC's closed form, on single features (units) and on groups of 3 (heads), against an
     independent least-squares solve (Householder QR, double);
   - the unit and head choice by L1 / L2 norm on hand-computable weights;
   - effdm compress on the shipped teacher (FeedForwards) and on its weights read as 4 heads a
     attention (heads; the shipped teacher has 1): ratio 0 is bit-identical to no pruning; at
     0.5 the tensors shrink, the widths / head counts are read back by the loader, the kept
     heads' rows are those of largest score, and the UDFC model's sampled latents are closer to
     the unpruned model's than pruning without it; the moments count every token the sampler
     showed each site; a head-pruned checkpoint calibrates at W4A8, exports, and the export's
     forward equals the fake-quant student's; bad input exits 2 with no file;
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
#include "test_export_fixture.h"

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

// Correlated hidden features with nonzero means: h = z A + mu (+ noise), N tokens of M = 12
// features; the features kept (keep_f[0..nk), ascending) and removed (drop_f), written out by
// hand for groups of g from the kept groups keep[0..n_keep).
static void check_closed_form(int g, const int *keep, int n_keep, const int *keep_f, int nk, const int *drop_f) {
    enum { N = 400, M = 12, R = 5 };
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
    double *C = malloc((size_t)(M - nk) * (nk + 1) * sizeof *C);
    Err e = {0};
    assert_int_equal(prune_udfc_solve(sum, M, g, keep, n_keep, 1e-14, C, &e), 0);
    for (int p = 0; p < M - nk; p++) {
        double *U = malloc((size_t)N * (nk + 1) * sizeof *U), b[N], c[M + 1];
        for (int i = 0; i < N; i++) {
            for (int k = 0; k < nk; k++) U[(size_t)i * (nk + 1) + k] = H[i][keep_f[k]];
            U[(size_t)i * (nk + 1) + nk] = 1.0;
            b[i] = H[i][drop_f[p]];
        }
        lstsq_qr(U, N, nk + 1, b, c);
        for (int k = 0; k <= nk; k++) {
            double got = C[p * (nk + 1) + k];
            if (fabs(got - c[k]) > 1e-7 * (1 + fabs(c[k])))
                fail_msg("g %d: feature %d coefficient %d: closed form %.12g, least squares %.12g", g, drop_f[p], k, got,
                         c[k]);
        }
        free(U);
    }
    // moments that are no second moments (a NaN in E[u u^T]): refused, not solved
    sum[keep_f[0] * (M + 1) + keep_f[0]] = NAN;
    assert_int_equal(prune_udfc_solve(sum, M, g, keep, n_keep, 1e-14, C, &e), ERR_VALUE);
    free(C);
}

// FeedForward units: groups of 1.
static void test_udfc_closed_form(void **state) {
    (void)state;
    const int keep[] = {0, 2, 3, 5, 7, 8, 10, 11}, drop[] = {1, 4, 6, 9};
    check_closed_form(1, keep, 8, keep, 8, drop);
}

// Heads of 3 features: 4 heads, heads 1 and 3 kept.
static void test_udfc_closed_form_heads(void **state) {
    (void)state;
    const int keep[] = {1, 3}, keep_f[] = {3, 4, 5, 9, 10, 11}, drop_f[] = {0, 1, 2, 6, 7, 8};
    check_closed_form(3, keep, 2, keep_f, 6, drop_f);
    const int keep1[] = {2}, keep1_f[] = {6, 7, 8}, drop1_f[] = {0, 1, 2, 3, 4, 5, 9, 10, 11};
    check_closed_form(3, keep1, 1, keep1_f, 3, drop1_f);
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

// Heads (d = 2 rows each of to_q, to_k, to_v; 2 columns of to_out.0, one output row) scored by
// ||[q; k; v rows]||_p * ||to_out.0 columns||_p on hand-made weights:
//   head 0: q (1, 0),               out (2, 0)      L2 1 * 2 = 2,         L1 1 * 2 = 2
//   head 1: q (1, 1), (1, 1)         out (0.5, 0.5)  L2 2 * 0.707 = 1.41,  L1 4 * 1 = 4
//   head 2: v (3, 0)                 out (0.1, 0)    L2 0.3,               L1 0.3
//   head 3: k (1, 0)                 out (2, 0)      L2 2 (ties head 0),   L1 2
static void test_heads_select(void **state) {
    (void)state;
    float wq[8 * 2] = {1, 0, 0, 0, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0};
    float wk[8 * 2] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0};
    float wv[8 * 2] = {0, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0};
    float wo[8] = {2, 0, 0.5f, 0.5f, 0.1f, 0, 2, 0};
    ModelLayer q = {0}, k = {0}, v = {0}, o = {0};
    tensor_init_param(&q.weight, wq, NULL, 2, (int[]){8, 2});
    tensor_init_param(&k.weight, wk, NULL, 2, (int[]){8, 2});
    tensor_init_param(&v.weight, wv, NULL, 2, (int[]){8, 2});
    tensor_init_param(&o.weight, wo, NULL, 2, (int[]){1, 8});
    ModelLayer *const l[4] = {&q, &k, &v, &o};
    int keep[4];
    Err e = {0};
    assert_int_equal(prune_heads_select(l, 2, 1, PRUNE_L2, keep, &e), 0);
    assert_int_equal(keep[0], 0);  // the tie with head 3: the lower index
    assert_int_equal(prune_heads_select(l, 2, 2, PRUNE_L2, keep, &e), 0);
    assert_int_equal(keep[0], 0);
    assert_int_equal(keep[1], 3);
    assert_int_equal(prune_heads_select(l, 2, 3, PRUNE_L2, keep, &e), 0);
    assert_int_equal(keep[0], 0);
    assert_int_equal(keep[1], 1);
    assert_int_equal(keep[2], 3);
    assert_int_equal(prune_heads_select(l, 2, 1, PRUNE_L1, keep, &e), 0);
    assert_int_equal(keep[0], 1);
    assert_int_equal(prune_heads_select(l, 2, 2, PRUNE_L1, keep, &e), 0);
    assert_int_equal(keep[0], 0);
    assert_int_equal(keep[1], 1);
    // heads of 3 rows do not divide 8
    assert_int_equal(prune_heads_select(l, 3, 1, PRUNE_L2, keep, &e), ERR_INTERNAL);
}

static const char *zoo(const char *name) { return test_path_in(TEST_DATA_DIR "/../../models/zoo/fmnist-ldm", name); }

static Ldm *load_with(const char *yaml, const char *ckpt) {
    Ldm *m = NULL;
    Err e = {0};
    LdmLoadOpts lo = {LDM_EMA_AUTO, LDM_PART_UNET | LDM_PART_COND_STAGE};
    if (ldm_load(&m, yaml, ckpt, &lo, &e)) fail_msg("%s", e.msg);
    return m;
}

static Ldm *load(const char *ckpt) { return load_with(zoo("config.yaml"), ckpt); }

// Every UNet tensor of a and b bit-identical, name by name.
static void assert_same_unet(UNet *a, UNet *b) {
    assert_int_equal(unet_param_tensors(a), unet_param_tensors(b));
    for (int i = 0; i < unet_param_tensors(a); i++) {
        const char *na, *nb;
        Tensor *ta = unet_param_at(a, i, &na), *tb = unet_param_at(b, i, &nb);
        assert_string_equal(na, nb);
        assert_int_equal(ta->n, tb->n);
        assert_memory_equal(ta->data, tb->data, ta->n * sizeof(float));
    }
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

// The pruned models pu (UDFC) and pn (none) have fewer parameters than full, and pu's sampled
// latents are closer to full's than pn's.
static void assert_udfc_closer(Ldm *full, Ldm *pu, Ldm *pn, const char *what) {
    assert_true(unet_param_count(pu->unet) < unet_param_count(full->unet));
    size_t n;
    float *of = sample_latents(full, &n), *ou = sample_latents(pu, &n), *on = sample_latents(pn, &n);
    double eu = rel_l2(ou, of, n), en = rel_l2(on, of, n);
    print_message("  sampled latents vs unpruned, %s: UDFC rel L2 %.4g, none %.4g\n", what, eu, en);
    assert_true(eu < en);
    assert_true(en > 0);
    free(of), free(ou), free(on);
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
    assert_same_unet(full->unet, p0->unet);  // ratio 0: every UNet tensor bit-identical
    // 0.5: the widths are half, read back from the file; fewer parameters
    Ldm *pu = load(tmp("ff50.safetensors")), *pn = load(tmp("ff50n.safetensors"));
    for (int k = 0; k < unet_ff_blocks(full->unet); k++) {
        ModelLayer *fp, *fo, *pp, *po;
        unet_ff_layers(full->unet, k, &fp, &fo);
        unet_ff_layers(pu->unet, k, &pp, &po);
        assert_int_equal(po->weight.shape[1], fo->weight.shape[1] / 2);
        assert_int_equal(pp->weight.shape[0], fp->weight.shape[0] / 2);
    }
    assert_udfc_closer(full, pu, pn, "50%% of the FeedForward units");
    ldm_free(full), ldm_free(p0), ldm_free(pu), ldm_free(pn);
}

// The shipped teacher's YAML with 4 heads of 16 a SpatialTransformer attention instead of 1 of
// 64 (the tensors have the same shapes): a model with heads to prune. Its path.
static const char *four_heads(void) {
    static char path[1100];
    char *y = test_slurp(zoo("config.yaml")), *at = strstr(y, "num_heads: 1\n");
    assert_non_null(at);
    at[11] = '4';
    snprintf(path, sizeof path, "%s", tmp("four_heads.yaml"));
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(y, f);
    fclose(f);
    free(y);
    return path;
}

// The moments see every input token of each site pruned: trajectories x 2 (guidance) x 4 steps
// x the block's tokens (to_out.0 sees the query tokens, attn2 too); the constant's entry counts
// them too. The sites not pruned are not measured.
static void test_moments_count(void **state) {
    (void)state;
    Ldm *m = load_with(four_heads(), zoo("model.ckpt"));
    PruneSampling ps = {4, 3.0, 5, 2, 11, NULL, NULL};
    PruneOpts o = {.ff_ratio = 0.5, .head_ratio = 0.5};
    PruneMoments mom;
    Err e = {0};
    assert_int_equal(prune_moments(m, &ps, &o, &mom, &e), 0);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    assert_int_equal(mom.n_sites, PRUNE_SITES * unet_ff_blocks(m->unet));
    for (int k = 0; k < mom.n_sites; k++) {
        int M = mom.m[k];
        ModelLayer *out;
        int groups, g;
        prune_site(m->unet, k, &out, &groups, &g);
        assert_int_equal(M, out->weight.shape[1]);
        assert_int_equal(g, k % PRUNE_SITES == PRUNE_FF ? 1 : 16);
        assert_non_null(mom.sum[k]);
        double per_token = mom.count[k] / (5.0 * 2 * 4);
        assert_true(per_token == floor(per_token) && per_token >= 1 && per_token <= (double)H * W);
        assert_true(mom.count[k] == mom.count[k - k % PRUNE_SITES]);  // the block's tokens, at each site
        assert_true(mom.sum[k][(size_t)M * (M + 1) + M] == mom.count[k]);  // sum of 1 * 1
        for (int a = 0; a < M; a += 37)  // symmetric
            for (int b = 0; b < M; b += 41) assert_true(mom.sum[k][(size_t)a * (M + 1) + b] == mom.sum[k][(size_t)b * (M + 1) + a]);
    }
    assert_true(mom.n_sites > 0);
    prune_moments_free(&mom);
    // the hooks are gone: the teacher runs as before
    for (int k = 0; k < PRUNE_SITES * unet_ff_blocks(m->unet); k++) {
        ModelLayer *out;
        int groups, g;
        prune_site(m->unet, k, &out, &groups, &g);
        assert_null(out->quant_forward);
    }
    ldm_free(m);
    // heads only, on the shipped teacher (1 head an attention): nothing to measure
    m = load(zoo("model.ckpt"));
    o = (PruneOpts){.head_ratio = 0.5};
    assert_int_equal(prune_moments(m, &ps, &o, &mom, &e), 0);
    for (int k = 0; k < mom.n_sites; k++) assert_null(mom.sum[k]);
    prune_moments_free(&mom);
    ldm_free(m);
}

// The heads of attention j of block k of full that an independent L2 score keeps (n_keep of
// 4, ascending): ||q, k, v rows||_2 * ||to_out.0 columns||_2, ties to the lower index.
static void heads_by_score(UNet *full, int k, int j, int n_keep, int *keep) {
    ModelLayer *l[4];
    int heads, d;
    unet_attn_layers(full, k, j, l, &heads, &d);
    assert_int_equal(heads, 4);
    double sc[4];
    for (int h = 0; h < 4; h++) {
        double in = 0, out = 0;
        for (int i = 0; i < 3; i++) {
            const int cols = l[i]->weight.shape[1];
            for (int r = h * d; r < (h + 1) * d; r++)
                for (int c = 0; c < cols; c++) in += (double)l[i]->weight.data[r * cols + c] * l[i]->weight.data[r * cols + c];
        }
        const int rows = l[3]->weight.shape[0], cols = l[3]->weight.shape[1];
        for (int r = 0; r < rows; r++)
            for (int c = h * d; c < (h + 1) * d; c++) out += (double)l[3]->weight.data[r * cols + c] * l[3]->weight.data[r * cols + c];
        sc[h] = sqrt(in * out);
    }
    int taken[4] = {0};
    for (int i = 0; i < n_keep; i++) {
        int best = -1;
        for (int h = 0; h < 4; h++)
            if (!taken[h] && (best < 0 || sc[h] > sc[best])) best = h;
        taken[best] = 1;
    }
    for (int h = 0, i = 0; h < 4; h++)
        if (taken[h]) keep[i++] = h;
}

// --heads on the 4-head model: 0 is bit-identical; 0.5 keeps 2 heads an attention, the rows and
// columns of the heads of largest score, read back by the loader; UDFC's latents are closer.
static void test_compress_heads(void **state) {
    (void)state;
    const char *y = four_heads();
    char args[2600];
    snprintf(args, sizeof args, "--ldm-config '%s' --ckpt '%s' --heads 0", y, zoo("model.ckpt"));
    compress(args, "h0.safetensors");
    snprintf(args, sizeof args, "--ldm-config '%s' --ckpt '%s' --heads 0.5", y, zoo("model.ckpt"));
    compress(args, "h50.safetensors");
    snprintf(args, sizeof args, "--ldm-config '%s' --ckpt '%s' --heads 0.5 --reconstruct none", y, zoo("model.ckpt"));
    compress(args, "h50n.safetensors");
    Ldm *full = load_with(y, zoo("model.ckpt")), *p0 = load_with(y, tmp("h0.safetensors"));
    assert_same_unet(full->unet, p0->unet);
    Ldm *pu = load_with(y, tmp("h50.safetensors")), *pn = load_with(y, tmp("h50n.safetensors"));
    for (int k = 0; k < unet_ff_blocks(full->unet); k++)
        for (int j = 0; j < 2; j++) {
            ModelLayer *lf[4], *lu[4], *ln[4];
            int hf, hu, hn, d;
            unet_attn_layers(full->unet, k, j, lf, &hf, &d);
            unet_attn_layers(pu->unet, k, j, lu, &hu, &d);
            unet_attn_layers(pn->unet, k, j, ln, &hn, &d);
            assert_int_equal(hu, 2);
            assert_int_equal(hn, 2);
            assert_int_equal(d, 16);
            int keep[2];
            heads_by_score(full->unet, k, j, 2, keep);
            for (int i = 0; i < 3; i++) {  // to_q, to_k, to_v: the kept heads' rows, with and without UDFC
                const int cols = lf[i]->weight.shape[1];
                assert_int_equal(lu[i]->weight.shape[0], 2 * d);
                for (int h = 0; h < 2; h++) {
                    const float *want = lf[i]->weight.data + (size_t)keep[h] * d * cols;
                    assert_memory_equal(ln[i]->weight.data + (size_t)h * d * cols, want, (size_t)d * cols * sizeof(float));
                    assert_memory_equal(lu[i]->weight.data + (size_t)h * d * cols, want, (size_t)d * cols * sizeof(float));
                }
            }
            // to_out.0 without UDFC: the kept heads' columns and the bias as they were
            const int rows = lf[3]->weight.shape[0];
            assert_int_equal(ln[3]->weight.shape[1], 2 * d);
            for (int r = 0; r < rows; r++)
                for (int c = 0; c < 2 * d; c++)
                    assert_true(ln[3]->weight.data[r * 2 * d + c] == lf[3]->weight.data[r * 4 * d + keep[c / d] * d + c % d]);
            assert_memory_equal(ln[3]->bias.data, lf[3]->bias.data, (size_t)rows * sizeof(float));
        }
    assert_udfc_closer(full, pu, pn, "50%% of the heads");
    ldm_free(full), ldm_free(p0), ldm_free(pu), ldm_free(pn);
}

// effdm finetune's naive W4A8 PTQ of (yaml, ckpt) (tiny calibration, no gain fits) into g_dir/run,
// then effdm export into g_dir/out.
static void ptq_export(const char *yaml, const char *ckpt, const char *run, const char *out) {
    char args[4096];
    snprintf(args, sizeof args, "finetune --config '%s/../../configs/fmnist-ldm-w4a8.yaml' --set train.epochs=0 "
             "--set model.ldm_config='%s' --set model.ckpt='%s' --set run.out='%s' --set calib.steps=4 "
             "--set calib.n_samples=2 --set calib.n_inputs=4 --set train.val_inputs=4 --set train.guidance_gain=off "
             "--set train.eps_gain=off --threads 2", TEST_DATA_DIR, yaml, ckpt, tmp(run));
    if (test_run_cli(g_dir, args)) fail_msg("effdm %s: %s", args, test_slurp(tmp("stderr.txt")));
    snprintf(args, sizeof args, "export --run '%s' --out '%s'", tmp(run), tmp(out));
    if (test_run_cli(g_dir, args)) fail_msg("effdm %s: %s", args, test_slurp(tmp("stderr.txt")));
}

// effdm sample --model g_dir/export: 2 images, 4 steps.
static void sample_export(const char *export, const char *dir) {
    char args[2200];
    snprintf(args, sizeof args, "sample --model '%s' --n 2 --steps 4 --out '%s'", tmp(export), tmp(dir));
    if (test_run_cli(g_dir, args)) fail_msg("effdm %s: %s", args, test_slurp(tmp("stderr.txt")));
}

// A pruned checkpoint quantizes and exports like any other: naive W4A8 PTQ (tiny calibration,
// no gain fits), export, and the export's FeedForwards have the pruned widths; it samples.
static void test_pruned_exports(void **state) {
    (void)state;
    compress("--ff 0.5 --reconstruct none", "ff50q.safetensors");
    ptq_export(zoo("config.yaml"), tmp("ff50q.safetensors"), "run", "q.safetensors");
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
    sample_export("q.safetensors", "s");
}

// A head-pruned checkpoint (4-head model, 50%, UDFC) is a teacher like any other: a W4A8 student
// of it calibrates; its export reads the head counts back from the tensors, and the export's
// forward equals the fake-quant student's (float kernels: exactly, as test_export; the integer
// kernels: close). Then the CLI: finetune's calibration, export, sample --model.
static void test_heads_export(void **state) {
    (void)state;
    const char *y = four_heads();
    char args[4096];
    snprintf(args, sizeof args, "--ldm-config '%s' --ckpt '%s' --heads 0.5", y, zoo("model.ckpt"));
    compress(args, "h50q.safetensors");
    Teacher T = teacher_open_from(y, tmp("h50q.safetensors"));
    Err e = {0};
    Ctx *c = test_ctx_new((size_t)1 << 30);
    RunConfig rc = student_config(4, 8, 20);
    QModel q;
    student_make(&q, c, &T, &rc, 1);
    ExportSummary es;
    char *path = student_export(&q, &T, &es);
    ExportModel *em = NULL;
    if (export_load(&em, path, &e)) fail_msg("%s", e.msg);
    for (int k = 0; k < unet_ff_blocks(em->ldm->unet); k++)
        for (int j = 0; j < 2; j++) {
            ModelLayer *l[4];
            int heads, d;
            unet_attn_layers(em->ldm->unet, k, j, l, &heads, &d);
            assert_int_equal(heads, 2);
            assert_int_equal(l[0]->weight.shape[0], 2 * d);
            assert_non_null(l[3]->quant_forward);  // quantized, not left FP
        }
    int C, H, W, ts[] = {q.train_sched.timesteps[0], 500};
    ldm_latent_shape(T.m, &C, &H, &W);
    enum { N_IN = 3 };
    float x[N_IN * 4 * 8 * 8], t[N_IN];
    int yl[N_IN];
    assert_true((size_t)C * H * W <= 4 * 8 * 8);
    const size_t n = (size_t)N_IN * C * H * W;
    for (int i = 0; i < 2; i++) {
        inputs(T.m, N_IN, ts[i], 300 + i, x, t, yl);
        float *ys = student_forward(&q, c, T.m, x, t, yl, N_IN, ts[i]);
        export_set_timestep(em, ts[i]);
        assert_int_equal(export_set_kernel(em, "auto", &e), 0);
        float *yi = forward(c, em->ldm, x, t, yl, N_IN);
        assert_int_equal(export_set_kernel(em, "float", &e), 0);
        float *yf = forward(c, em->ldm, x, t, yl, N_IN);
        print_message("  t = %d: head-pruned export vs student rel L2: float %.3g, integer kernels %.3g\n", ts[i],
                      rel_l2(yf, ys, n), rel_l2(yi, ys, n));
        assert_rel_l2(yf, ys, n, 1e-5);
        assert_rel_l2(yi, ys, n, 1e-2);
        free(ys), free(yf), free(yi);
    }
    export_free(em);
    unlink(path);
    free(path);
    qmodel_free(&q);
    test_ctx_delete(c);
    teacher_close(&T);
    ptq_export(y, tmp("h50q.safetensors"), "hrun", "hq.safetensors");
    sample_export("hq.safetensors", "hs");
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
    PruneMoments mh, mq;
    PruneOpts o = {.ff_ratio = 0.5};  // the FF sites measured (nothing pruned here)
    Err e = {0};
    if (prune_moments(m, &ps, &o, &mh, &e)) fail_msg("%s", e.msg);
    if (prune_ff_quant_moments(m, &ps, 3, &mq, &e)) fail_msg("%s", e.msg);
    assert_int_equal(mq.n_sites * PRUNE_SITES, mh.n_sites);
    for (int k = 0; k < mq.n_sites; k++) {
        const int f = k * PRUNE_SITES + PRUNE_FF, M = mh.m[f], L = 2 * M + 1;
        assert_int_equal(mq.m[k], 2 * M);
        assert_true(mq.count[k] == mh.count[f]);
        double scale = 0, worst = 0;
        for (int a = 0; a < M; a++) scale = fmax(scale, fabs(mh.sum[f][(size_t)a * (M + 1) + a]));
        for (int a = 0; a <= M; a++)
            for (int b = 0; b <= M; b++) {
                int qa = a < M ? a : 2 * M, qb = b < M ? b : 2 * M;  // the constant is the last entry of both
                worst = fmax(worst, fabs(mq.sum[k][(size_t)qa * L + qb] - mh.sum[f][(size_t)a * (M + 1) + b]));
            }
        if (worst > 1e-5 * scale) fail_msg("block %d: h moments differ by %g (scale %g)", k, worst, scale);
    }
    prune_moments_free(&mh), prune_moments_free(&mq);
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
    expect_bad("--heads 1", "--heads");
    expect_bad("--heads -0.1 --ff 0.3", "--heads");
    expect_bad("--reconstruct none", "nothing to do");
    expect_bad("--quant-udfc 1", "--quant-udfc");
    expect_bad("--ff 0.3 --reconstruct magic", "--reconstruct");
    expect_bad("--ff 0.3 --ldm-config x.yaml", "--ldm-config and --ckpt");
    char args[1200];
    snprintf(args, sizeof args, "--ff 0.3 --ldm-config '%s' --ckpt /nonexistent.ckpt", zoo("config.yaml"));
    expect_bad(args, "/nonexistent.ckpt");
    // a UNet without SpatialTransformer (the legacy AttentionBlock; no context_dim then): no
    // heads to prune, said so
    char *y = test_slurp(zoo("config.yaml"));
    FILE *f = fopen(tmp("legacy.yaml"), "w");
    assert_non_null(f);
    int edits = 0;
    for (char *line = strtok(y, "\n"); line; line = strtok(NULL, "\n")) {
        char *at = strstr(line, "use_spatial_transformer: true");
        if (strstr(line, "context_dim:")) edits++;
        else if (at) fprintf(f, "%.*suse_spatial_transformer: false\n", (int)(at - line), line), edits++;
        else fprintf(f, "%s\n", line);
    }
    fclose(f);
    free(y);
    assert_int_equal(edits, 2);
    snprintf(args, sizeof args, "--heads 0.5 --ldm-config '%s' --ckpt '%s'", tmp("legacy.yaml"), zoo("model.ckpt"));
    expect_bad(args, "AttentionBlock");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_udfc_closed_form), cmocka_unit_test(test_udfc_closed_form_heads),
        cmocka_unit_test(test_select_by_norm),   cmocka_unit_test(test_heads_select),
        cmocka_unit_test(test_moments_count),    cmocka_unit_test(test_compress_cli),
        cmocka_unit_test(test_compress_heads),   cmocka_unit_test(test_pruned_exports),
        cmocka_unit_test(test_heads_export),     cmocka_unit_test(test_quant_udfc),
        cmocka_unit_test(test_compress_bad_input),
    };
    return cmocka_run_group_tests_name("prune", tests, setup, teardown);
}
