/* test_ldm.c: LatentDiffusion loading (models/ldm.h). The EMA rules of docs/DESIGN.md on copies of
   the unet_cin fixture with LitEma buffers added (full, partial, --ema on/off, use_ema false);
   missing / misshapen / unknown tensors; apply_model with class labels against the fixture's
   eps (the ClassEmbedder context path); the schedule and scale_factor of the shipped teacher
   against the float64 CompVis schedule rounded to float32; the batch split (models/ldm_split.c)
   against the one-thread forward and decode, bit for bit. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_edit.h"
#include "models/ldm.h"
#include "models/ldm_schedule.h"
#include "util/threads.h"

static const double TOL_FORWARD = 1e-4;
static const size_t ARENA_BYTES = (size_t)1 << 30;
static char g_dir[64];

static int setup(void **state) { return test_tmpdir_make(g_dir, sizeof g_dir, "ldm"); }

static int teardown(void **state) { return test_tmpdir_remove(g_dir); }

static const char *tmp_path(const char *name) { return test_path_in(g_dir, name); }

static void load_cfg(LdmConfig *c, const char *rel) {
    Err e = {0};
    if (ldm_config_load(c, test_data_path(rel), &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
}

// Loads (cfg, weights file) with the given EMA mode; returns the code, *m on success.
static int load_with(const LdmConfig *cfg, const char *path, LdmEmaMode ema, Ldm **m, Err *e) {
    WeightFile *f = NULL;
    memset(e, 0, sizeof *e);
    *m = NULL;
    int rc = weights_open(&f, path, e);
    LdmLoadOpts o = {ema, LDM_PARTS_ALL};
    if (!rc) rc = ldm_load_from(m, cfg, f, &o, e);
    weights_close(f);
    return rc;
}

static const char *PROBE = "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight";
static const char *PROBE_EMA = "model_ema.diffusion_modelinput_blocks11transformer_blocks0attn2to_kweight";

static int drop_probe_ema(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    return strcmp(name, PROBE_EMA) != 0;
}

static void test_ema_rules(void **state) {
    (void)state;
    LdmConfig cfg;
    load_cfg(&cfg, "parity/unet_cin/config.yaml");
    assert_int_equal(cfg.use_ema, 1);  // absent: CompVis default
    const char *src = test_data_path("parity/unet_cin/model.ckpt");
    char full[256], partial[256], raw[256];
    snprintf(raw, sizeof raw, "%s", src);
    Err e = {0};
    snprintf(full, sizeof full, "%s", tmp_path("ema_full.safetensors"));
    assert_int_equal(ckpt_edit_copy_ema(raw, full, NULL, NULL, 0.5f, &e), 0);
    snprintf(partial, sizeof partial, "%s", tmp_path("ema_partial.safetensors"));
    assert_int_equal(ckpt_edit_copy_ema(raw, partial, drop_probe_ema, NULL, 0.5f, &e), 0);

    Ldm *r = NULL, *m = NULL;
    // the raw fixture has no EMA at all: raw weights, reported
    assert_int_equal(load_with(&cfg, raw, LDM_EMA_AUTO, &r, &e), 0);
    assert_int_equal(r->using_ema, 0);
    assert_non_null(strstr(r->warning, "no model_ema"));
    const float *w_raw = unet_param(r->unet, PROBE)->data;
    size_t n = unet_param(r->unet, PROBE)->n;

    // full set + use_ema true: EMA weights
    assert_int_equal(load_with(&cfg, full, LDM_EMA_AUTO, &m, &e), 0);
    assert_int_equal(m->using_ema, 1);
    // the fixture's scale_factor buffer (0.9) is not the config's (absent: 1.0): the file wins,
    // unreported here since there is no first stage to decode with
    assert_string_equal(m->warning, "");
    assert_true(m->scale_factor == (double)0.9f);
    assert_int_equal(m->n_unknown, 0);
    for (size_t i = 0; i < n; i++) assert_true(unet_param(m->unet, PROBE)->data[i] == 0.5f * w_raw[i]);
    ldm_free(m);

    // --ema off: raw
    assert_int_equal(load_with(&cfg, full, LDM_EMA_OFF, &m, &e), 0);
    assert_int_equal(m->using_ema, 0);
    assert_memory_equal(unet_param(m->unet, PROBE)->data, w_raw, n * sizeof(float));
    ldm_free(m);

    // partial set: reported, raw weights
    assert_int_equal(load_with(&cfg, partial, LDM_EMA_AUTO, &m, &e), 0);
    assert_int_equal(m->using_ema, 0);
    assert_non_null(strstr(m->warning, "partial EMA set"));
    assert_non_null(strstr(m->warning, PROBE_EMA));
    assert_memory_equal(unet_param(m->unet, PROBE)->data, w_raw, n * sizeof(float));
    ldm_free(m);

    // --ema on with a partial set: error naming the missing buffer
    assert_int_equal(load_with(&cfg, partial, LDM_EMA_ON, &m, &e), ERR_KEY);
    assert_null(m);
    assert_non_null(strstr(e.msg, PROBE_EMA));
    assert_non_null(strstr(e.msg, "ema_partial.safetensors"));

    // use_ema: false in the config: the raw weights even with a full set (LitEma is not built)
    cfg.use_ema = 0;
    assert_int_equal(load_with(&cfg, full, LDM_EMA_AUTO, &m, &e), 0);
    assert_int_equal(m->using_ema, 0);
    assert_string_equal(m->warning, "");
    ldm_free(m);
    // ... unless asked for
    assert_int_equal(load_with(&cfg, full, LDM_EMA_ON, &m, &e), 0);
    assert_int_equal(m->using_ema, 1);
    ldm_free(m);
    ldm_free(r);
}

// EMA of a model with Conv1d weights: unet_uncond's AttentionBlock qkv / proj_out are stored
// (Cout, Cin, 1) and held (Cout, Cin, 1, 1); the cin model has none.
static void test_ema_conv1d(void **state) {
    (void)state;
    LdmConfig cfg;
    load_cfg(&cfg, "parity/unet_uncond/config.yaml");
    char src[256], dst[256];
    snprintf(src, sizeof src, "%s", test_data_path("parity/unet_uncond/model.ckpt"));
    snprintf(dst, sizeof dst, "%s", tmp_path("uncond_ema.safetensors"));
    Err e = {0};
    assert_int_equal(ckpt_edit_copy_ema(src, dst, NULL, NULL, 2.0f, &e), 0);
    Ldm *m = NULL;
    if (load_with(&cfg, dst, LDM_EMA_ON, &m, &e)) print_error("%s\n", e.msg);
    assert_non_null(m);
    assert_int_equal(m->using_ema, 1);
    ldm_free(m);
}

static int drop_embedding(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    return strcmp(name, "cond_stage_model.embedding.weight") != 0;
}

static int reshape_embedding(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)user;
    if (!strcmp(name, "cond_stage_model.embedding.weight")) shape[0] = 10;
    return 1;
}

static int rename_extra(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    if (!strcmp(name, "scale_factor")) strcpy(name, "foo.scale_factor");
    return 1;
}

static int drop_unet_tensor(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    return strcmp(name, "model.diffusion_model.out.2.weight") != 0;
}

static void test_load_errors_and_unknown(void **state) {
    (void)state;
    LdmConfig cfg;
    load_cfg(&cfg, "parity/unet_cin/config.yaml");
    char src[256];
    snprintf(src, sizeof src, "%s", test_data_path("parity/unet_cin/model.ckpt"));
    Err e = {0};
    Ldm *m = NULL;

    assert_int_equal(ckpt_edit_copy(src, tmp_path("noemb.safetensors"), drop_embedding, NULL, &e), 0);
    assert_int_equal(load_with(&cfg, tmp_path("noemb.safetensors"), LDM_EMA_AUTO, &m, &e), ERR_KEY);
    assert_non_null(strstr(e.msg, "cond_stage_model.embedding.weight"));
    assert_non_null(strstr(e.msg, "noemb.safetensors"));

    assert_int_equal(ckpt_edit_copy(src, tmp_path("embshape.safetensors"), reshape_embedding, NULL, &e), 0);
    assert_int_equal(load_with(&cfg, tmp_path("embshape.safetensors"), LDM_EMA_AUTO, &m, &e), ERR_SHAPE);
    assert_non_null(strstr(e.msg, "cond_stage_model.embedding.weight"));
    assert_non_null(strstr(e.msg, "11, 32"));  // expected, from n_classes / embed_dim in the YAML
    assert_non_null(strstr(e.msg, "10, 32"));  // found

    assert_int_equal(ckpt_edit_copy(src, tmp_path("nounet.safetensors"), drop_unet_tensor, NULL, &e), 0);
    assert_int_equal(load_with(&cfg, tmp_path("nounet.safetensors"), LDM_EMA_AUTO, &m, &e), ERR_KEY);
    assert_non_null(strstr(e.msg, "model.diffusion_model.out.2.weight"));

    assert_int_equal(ckpt_edit_copy(src, tmp_path("extra.safetensors"), rename_extra, NULL, &e), 0);
    assert_int_equal(load_with(&cfg, tmp_path("extra.safetensors"), LDM_EMA_OFF, &m, &e), 0);
    assert_int_equal(m->n_unknown, 1);
    assert_non_null(strstr(m->warning, "foo.scale_factor"));
    assert_int_equal(m->scale_factor_from_file, 0);
    assert_true(m->scale_factor == 1.0);
    ldm_free(m);

    // a config whose UNet disagrees with the file: ERR_SHAPE naming the tensor
    cfg.unet.model_channels = 64;
    cfg.unet.context_dim = 32;
    assert_int_equal(load_with(&cfg, src, LDM_EMA_AUTO, &m, &e), ERR_SHAPE);
    assert_non_null(strstr(e.msg, "model.diffusion_model."));
}

// The model of a tests/data folder holding config.yaml and model.ckpt (fails the test if it
// does not load). ldm_load gets its own copy of the config path: test_data_path's buffer is static.
static Ldm *load_folder(const char *dir) {
    char cfg[256], name[256];
    snprintf(name, sizeof name, "%s/config.yaml", dir);
    snprintf(cfg, sizeof cfg, "%s", test_data_path(name));
    snprintf(name, sizeof name, "%s/model.ckpt", dir);
    Ldm *m = NULL;
    Err e = {0};
    if (ldm_load(&m, cfg, test_data_path(name), NULL, &e)) fail_msg("%s", e.msg);
    return m;
}

// eps = model(x, t, c) with c = ClassEmbedder(y): the fixture's eps (labels incl. 10 = uncond),
// and the embedding equals the fixture's context.
static void test_apply_model_labels(void **state) {
    (void)state;
    Ldm *m = load_folder("parity/unet_cin");
    Err e = {0};
    assert_int_equal(ldm_is_class_conditional(m), 1);
    assert_int_equal(ldm_uncond_label(m), 10);
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Tensor *x = test_load_npy(&c, "parity/unet_cin/x.npy");
    Tensor *t = test_load_npy(&c, "parity/unet_cin/t.npy");
    Tensor *yf = test_load_npy(&c, "parity/unet_cin/y.npy");
    Tensor *ctx_ref = test_load_npy(&c, "parity/unet_cin/context.npy");
    Tensor *eps_ref = test_load_npy(&c, "parity/unet_cin/eps.npy");
    int y[3];
    for (int i = 0; i < 3; i++) y[i] = (int)yf->data[i];
    Tensor *ctx = ldm_context(&c, m, y, 3);
    assert_non_null(ctx);
    assert_true(tensor_same_shape(ctx, ctx_ref));
    assert_memory_equal(ctx->data, ctx_ref->data, ctx->n * sizeof(float));
    Tensor *eps = ldm_apply_model(&c, m, x, t->data, y);
    assert_non_null(eps);
    assert_rel_l2(eps->data, eps_ref->data, eps_ref->n, TOL_FORWARD);
    int bad[3] = {0, 11, 2};
    assert_null(ldm_apply_model(&c, m, x, t->data, bad));
    assert_int_equal(c.err.code, ERR_VALUE);
    ctx_free(&c);
    ldm_free(m);
}

// The teacher's betas / alphas_cumprod buffers equal make_beta_schedule(linear, 1000, 0.0015, 0.0195)
// computed in float64 and rounded to float32 (register_buffer), and its scale_factor buffer the
// config's value in float32.
static void test_teacher_schedule(void **state) {
    (void)state;
    Ldm *m = load_folder("../../models/zoo/fmnist-ldm");
    assert_string_equal(m->warning, "");
    assert_int_equal(m->using_ema, 0);  // use_ema: false (the shipped UNet weights are the EMA)
    assert_int_equal(m->n_unknown, 0);
    assert_int_equal(m->schedule_from_file, 1);
    assert_int_equal(m->T, 1000);
    double acp = 1.0;
    int exact = 0;
    for (int i = 0; i < 1000; i++) {
        double v = sqrt(0.0015) + (sqrt(0.0195) - sqrt(0.0015)) * i / 999.0;
        double beta = v * v;
        acp *= 1.0 - beta;
        float fb = (float)beta, fa = (float)acp;
        assert_true(fabsf(m->betas[i] - fb) <= 1.2e-7f * fb);
        assert_true(fabsf(m->alphas_cumprod[i] - fa) <= 1.2e-7f * fa);
        exact += m->alphas_cumprod[i] == fa && m->betas[i] == fb;
    }
    // 984 are bit-equal; the other 16 sit within 0.1 ulp of a float32 rounding midpoint and land one
    // ulp away: the file's buffer is the float64 cumprod of the float32-rounded betas (as when
    // register_schedule gets given_betas from a float32 tensor), not of the float64 ones.
    printf("teacher schedule: %d of 1000 (beta, alphas_cumprod) pairs bit-equal to the float64 formula\n", exact);
    assert_true(exact >= 980);
    assert_int_equal(m->scale_factor_from_file, 1);
    assert_true(m->scale_factor == (double)(float)0.5935243180872978);
    ldm_free(m);

    // no schedule buffers in the file: the config's (ae_kl)
    m = load_folder("parity/ae_kl");
    assert_int_equal(m->schedule_from_file, 0);
    assert_int_equal(m->scale_factor_from_file, 0);
    double b64[1000], a64[1000];
    Err e = {0};
    assert_int_equal(ldm_make_beta_schedule(LDM_BETA_LINEAR, 1000, 0.0015, 0.0195, 8e-3, b64, &e), 0);
    ldm_alphas_cumprod(b64, 1000, a64);
    for (int i = 0; i < 1000; i++) assert_true(m->alphas_cumprod[i] == (float)a64[i]);
    assert_non_null(m->ae);
    ldm_free(m);
}

// x (N, C, H, W) filled with a fixed pattern in [-1, 1].
static Tensor *pattern(Ctx *c, int N, int C, int H, int W) {
    Tensor *x = tensor_new4(c, N, C, H, W);
    for (size_t i = 0; i < x->n; i++) x->data[i] = (float)((i * 7919) % 201) / 100.0f - 1.0f;
    return x;
}

// One forward (or decode when t is NULL) of x on c; a malloc'd copy of its output, n set.
static float *run_copy(Ctx *c, Ldm *m, Tensor *x, const float *t, const int *y, size_t *n) {
    ctx_reset(c);
    ctx_set_grad(c, 0);
    Tensor *xin = tensor_from(c, x->data, x->ndim, x->shape);
    Tensor *out = t ? ldm_apply_model(c, m, xin, t, y) : ldm_decode_first_stage(c, m, xin);
    if (!out) fail_msg("%s", c->err.msg);
    float *r = malloc(out->n * sizeof(float));
    memcpy(r, out->data, out->n * sizeof(float));
    *n = out->n;
    return r;
}

// Rows [i0, i1) of x as their own tensor in c.
static Tensor *rows(Ctx *c, const Tensor *x, int i0, int i1) {
    int shape[TENSOR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = i1 - i0;
    return tensor_from(c, x->data + (size_t)i0 * (x->n / x->shape[0]), x->ndim, shape);
}

// The batch split (models/ldm_split.c) against its definition: the batch cut into
// max(2, ceil(N / 8)) parts at i N / parts, each part's output that of a plain forward (or
// decode) over the part alone, bit for bit, on 1, 2 or 3 threads (odd batches: uneven
// parts); for the class-conditional teacher, an unconditional UNet and the decoder. Never
// split: grad mode on, one image, not asked for. A bad label inside a part fails the call
// with the part's error.
static void test_split_bit_exact(void **state) {
    (void)state;
    Ldm *models[2] = {load_folder("../../models/zoo/fmnist-ldm"), load_folder("parity/unet_uncond")};
    const int batches[2] = {20, 7}, n_parts[2] = {3, 2};
    Ctx c, keep;
    Err e = {0};
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    assert_int_equal(ctx_init(&keep, ARENA_BYTES, &e), 0);
    for (int k = 0; k < 2; k++) {
        Ldm *m = models[k];
        int C, H, W, N = batches[k], parts = n_parts[k];
        ldm_latent_shape(m, &C, &H, &W);
        Tensor *x = pattern(&keep, N, C, H, W);
        float t[20];
        int y[20];
        for (int i = 0; i < N; i++) {
            t[i] = (float)(1 + 37 * i);
            y[i] = ldm_is_class_conditional(m) ? (3 * i) % ldm_n_classes(m) : 0;
        }
        const int *yl = ldm_is_class_conditional(m) ? y : NULL;
        // the reference: each part alone, unsplit, one thread
        threads_set(1);
        size_t n1, n2, per_out = 0;
        float *ref = NULL;
        for (int p = 0; p < parts; p++) {
            int i0 = p * N / parts, i1 = (p + 1) * N / parts;
            float *part = run_copy(&c, m, rows(&keep, x, i0, i1), t + i0, yl ? yl + i0 : NULL, &n1);
            if (!ref) {
                per_out = n1 / (size_t)(i1 - i0);
                ref = malloc((size_t)N * per_out * sizeof(float));
            }
            memcpy(ref + (size_t)i0 * per_out, part, n1 * sizeof(float));
            free(part);
        }
        m->split_batch = 1;
        for (int threads = 1; threads <= 3; threads++) {
            threads_set(threads);
            assert_int_equal(ldm_split_applies(&c, m, N), 1);
            float *split = run_copy(&c, m, x, t, yl, &n2);
            assert_int_equal(n2, (size_t)N * per_out);
            assert_memory_equal(ref, split, n2 * sizeof(float));
            free(split);
        }
        free(ref);
        ctx_set_grad(&c, 1);
        assert_int_equal(ldm_split_applies(&c, m, N), 0);
        ctx_set_grad(&c, 0);
        assert_int_equal(ldm_split_applies(&c, m, 1), 0);
        if (yl) {  // label 11 (of 0..10) in the last part
            int bad[20];
            memcpy(bad, y, sizeof bad);
            bad[N - 1] = 11;
            threads_set(2);
            ctx_reset(&c);
            assert_null(ldm_apply_model(&c, m, tensor_from(&c, x->data, 4, x->shape), t, bad));
            assert_int_equal(c.err.code, ERR_VALUE);
            c.err = (Err){0};
        }
        if (m->ae) {  // the decoder, 3 latents: parts [0, 1) and [1, 3)
            Tensor *z = pattern(&keep, 3, C, H, W);
            m->split_batch = 0;
            threads_set(1);
            float *d0 = run_copy(&c, m, rows(&keep, z, 0, 1), NULL, NULL, &n1);
            float *d1 = run_copy(&c, m, rows(&keep, z, 1, 3), NULL, NULL, &n2);
            m->split_batch = 1;
            threads_set(2);
            size_t n3;
            float *d = run_copy(&c, m, z, NULL, NULL, &n3);
            assert_parts_equal(d, n3, d0, n1, d1, n2);
            free(d0);
            free(d1);
            free(d);
        }
        m->split_batch = 0;
        assert_int_equal(ldm_split_applies(&c, m, N), 0);
        ldm_free(m);
    }
    threads_set(1);
    ctx_free(&c);
    ctx_free(&keep);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ema_rules),
        cmocka_unit_test(test_ema_conv1d),
        cmocka_unit_test(test_load_errors_and_unknown),
        cmocka_unit_test(test_apply_model_labels),
        cmocka_unit_test(test_teacher_schedule),
        cmocka_unit_test(test_split_bit_exact),
    };
    return cmocka_run_group_tests_name("ldm", tests, setup, teardown);
}
