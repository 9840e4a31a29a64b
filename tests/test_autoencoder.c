/* test_autoencoder.c: the first stage against upstream: tests/data/parity/ae_kl (CompVis
   AutoencoderKL, README there) posterior mean / logvar and decoder(post_quant_conv(z)); the
   parameter table against the checkpoint's own key order; load errors on edited copies; the
   VQ codebook lookup against a brute-force argmin; decode paths of the VQ classes; memory. */
#include "testutil.h"

#include <float.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ckpt_edit.h"
#include "models/autoencoder/ae_impl.h"
#include "models/autoencoder/autoencoder.h"
#include "models/ldm_config.h"

static const double TOL_FORWARD = 1e-4;  // tests/data/parity/README.md
static const char *PREFIX = "first_stage_model.";
static const size_t ARENA_BYTES = (size_t)1 << 30;

static AeModel *load_ae_kl(const char *ckpt_path, Err *e, int *rc) {
    char ckpt[4096];
    snprintf(ckpt, sizeof ckpt, "%s", ckpt_path);  // test_data_path's buffer is reused below
    LdmConfig cfg;
    Err ce = {0};
    if (ldm_config_load(&cfg, test_data_path("parity/ae_kl/config.yaml"), &ce)) {
        print_error("%s\n", ce.msg);
        fail();
    }
    assert_int_equal(cfg.has_first_stage, 1);
    AeModel *m = NULL;
    assert_int_equal(ae_new(&m, &cfg.first_stage, e), 0);
    WeightFile *f = NULL;
    *rc = weights_open(&f, ckpt, e);
    int unknown = -1;
    if (!*rc) *rc = ae_load(m, f, PREFIX, &unknown, e);
    if (!*rc) assert_int_equal(unknown, 0);
    weights_close(f);
    if (*rc) {
        ae_free(m);
        return NULL;
    }
    return m;
}

static void test_ae_kl_parity(void **state) {
    (void)state;
    Err e = {0};
    int rc;
    AeModel *m = load_ae_kl(test_data_path("parity/ae_kl/model.ckpt"), &e, &rc);
    if (!m) {
        print_error("%s\n", e.msg);
        fail();
    }
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Tensor *x = test_load_npy(&c, "parity/ae_kl/x.npy");
    Tensor *mean = NULL, *logvar = NULL;
    assert_int_equal(ae_encode(&c, m, x, &mean, &logvar), 0);
    Tensor *mref = test_load_npy(&c, "parity/ae_kl/mean.npy");
    Tensor *lref = test_load_npy(&c, "parity/ae_kl/logvar.npy");
    assert_true(tensor_same_shape(mean, mref) && tensor_same_shape(logvar, lref));
    assert_rel_l2(mean->data, mref->data, mref->n, TOL_FORWARD);
    assert_rel_l2(logvar->data, lref->data, lref->n, TOL_FORWARD);
    printf("ae_kl mean rel L2 %.3g, logvar %.3g\n", rel_l2(mean->data, mref->data, mref->n),
           rel_l2(logvar->data, lref->data, lref->n));

    Tensor *z = test_load_npy(&c, "parity/ae_kl/z.npy");
    Tensor *dec = ae_decode(&c, m, z);
    if (!dec) print_error("%s\n", c.err.msg);
    assert_non_null(dec);
    Tensor *dref = test_load_npy(&c, "parity/ae_kl/dec.npy");
    assert_true(tensor_same_shape(dec, dref));
    assert_rel_l2(dec->data, dref->data, dref->n, TOL_FORWARD);
    printf("ae_kl dec rel L2 %.3g\n", rel_l2(dec->data, dref->data, dref->n));
    ctx_free(&c);
    ae_free(m);
}

// The parameter table in registration order equals the checkpoint's first_stage_model.* keys in
// file order (torch state_dict order = named_parameters order), and every name resolves.
static void test_param_order(void **state) {
    (void)state;
    Err e = {0};
    int rc;
    AeModel *m = load_ae_kl(test_data_path("parity/ae_kl/model.ckpt"), &e, &rc);
    assert_non_null(m);
    WeightFile *f = NULL;
    assert_int_equal(weights_open(&f, test_data_path("parity/ae_kl/model.ckpt"), &e), 0);
    size_t plen = strlen(PREFIX), total = 0;
    int k = 0;
    for (int i = 0; i < weights_count(f); i++) {
        const WeightInfo *wi = weights_info(f, i);
        if (strncmp(wi->name, PREFIX, plen) != 0) continue;
        Tensor *t = ae_param(m, wi->name + plen);
        if (!t) print_error("no parameter %s\n", wi->name);
        assert_non_null(t);
        assert_true(k < m->n_params);
        assert_string_equal(m->params[k].name, wi->name + plen);
        assert_int_equal(t->n, wi->numel);
        total += wi->numel;
        k++;
    }
    assert_int_equal(total, ae_param_count(m));
    assert_int_equal(k, m->n_params);
    assert_true(k > 50);
    weights_close(f);
    ae_free(m);
}

static const char *DROP = "first_stage_model.decoder.up.1.block.0.nin_shortcut.weight";
static const char *RESHAPE = "first_stage_model.encoder.mid.attn_1.q.weight";

static int edit_drop(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)shape, (void)user;
    return strcmp(name, DROP) != 0;
}

static int edit_reshape(char *name, int *ndim, int64_t *shape, void *user) {
    (void)ndim, (void)user;
    if (!strcmp(name, RESHAPE)) shape[1] = 64;
    return 1;
}

static void test_load_errors(void **state) {
    (void)state;
    char dir[] = "/tmp/effdm_ae_XXXXXX", path[256];
    assert_non_null(mkdtemp(dir));
    Err e = {0};
    int rc;
    snprintf(path, sizeof path, "%s/missing.safetensors", dir);
    assert_int_equal(ckpt_edit_copy(test_data_path("parity/ae_kl/model.ckpt"), path, edit_drop, NULL, &e), 0);
    assert_null(load_ae_kl(path, &e, &rc));
    assert_int_equal(rc, ERR_KEY);
    assert_non_null(strstr(e.msg, DROP));
    assert_non_null(strstr(e.msg, "missing.safetensors"));
    unlink(path);

    memset(&e, 0, sizeof e);
    snprintf(path, sizeof path, "%s/shape.safetensors", dir);
    assert_int_equal(ckpt_edit_copy(test_data_path("parity/ae_kl/model.ckpt"), path, edit_reshape, NULL, &e), 0);
    assert_null(load_ae_kl(path, &e, &rc));
    assert_int_equal(rc, ERR_SHAPE);
    assert_non_null(strstr(e.msg, RESHAPE));
    assert_non_null(strstr(e.msg, "128, 128, 1, 1"));  // expected (from the YAML)
    assert_non_null(strstr(e.msg, "128, 64, 1, 1"));   // found
    unlink(path);
    rmdir(dir);
}

// Every block ends a ctx scope: a decode leaves only its output in the arena, and the peak stays
// at the widest conv's im2col buffer (up.0.block.0.conv1: 2 x (64 x 9) x (32 x 32) floats =
// 4.5 MiB) plus a few activations of the largest level (2 x 64 x 32 x 32 floats = 512 KiB each).
static void test_decode_memory(void **state) {
    (void)state;
    Err e = {0};
    int rc;
    AeModel *m = load_ae_kl(test_data_path("parity/ae_kl/model.ckpt"), &e, &rc);
    assert_non_null(m);
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Tensor *z = test_load_npy(&c, "parity/ae_kl/z.npy");
    size_t before = c.arena.used;
    c.arena.peak = before;
    Tensor *dec = ae_decode(&c, m, z);
    assert_non_null(dec);
    size_t kept = c.arena.used - before, act = (size_t)2 * 64 * 32 * 32 * sizeof(float);
    size_t im2col = (size_t)2 * 64 * 9 * 32 * 32 * sizeof(float);
    assert_true(kept <= dec->n * sizeof(float) + 4096);
    if (c.arena.peak - before > im2col + 6 * act) print_error("peak %zu bytes\n", c.arena.peak - before);
    assert_true(c.arena.peak - before <= im2col + 6 * act);
    ctx_free(&c);
    ae_free(m);
}

static AeConfig vq_config(AeKind kind) {
    AeConfig a;
    memset(&a, 0, sizeof a);
    a.kind = kind;
    a.embed_dim = 3;
    a.n_embed = 40;
    ae_ddconfig_defaults(&a.dd);
    a.dd.double_z = 0;
    a.dd.z_channels = 3;
    a.dd.resolution = 16;
    a.dd.in_channels = 1;
    a.dd.out_ch = 1;
    a.dd.ch = 32;
    a.dd.n_ch_mult = 2;
    a.dd.ch_mult[0] = 1;
    a.dd.ch_mult[1] = 1;
    a.dd.num_res_blocks = 1;
    return a;
}

// Fills every parameter with N(0, 0.2^2) values.
static void randomize(AeModel *m, Rng *r) {
    for (int i = 0; i < m->n_params; i++) {
        Tensor *t = m->params[i].t;
        rng_normal_fill(r, t->data, t->n);
        for (size_t k = 0; k < t->n; k++) t->data[k] *= 0.2f;
    }
}

// VectorQuantizer2: each vector -> its nearest codebook row (brute force in double here);
// ties go to the first index, as torch.argmin.
static void test_vq_quantize(void **state) {
    (void)state;
    Err e = {0};
    AeConfig a = vq_config(AE_VQ_INTERFACE);
    AeModel *m = NULL;
    assert_int_equal(ae_new(&m, &a, &e), 0);
    Tensor *cb = ae_param(m, "quantize.embedding.weight");
    Rng r;
    rng_seed(&r, 5, 1);
    test_fill_matrix_normal(cb, 40, 3, &r);
    // a duplicated row: the first copy must win
    memcpy(cb->data + 3 * 7, cb->data + 3 * 2, 3 * sizeof(float));
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Tensor *z = tensor_new4(&c, 2, 3, 4, 5);
    rng_normal_fill(&r, z->data, z->n);
    // one position exactly at the duplicated row
    for (int k = 0; k < 3; k++) z->data[k * 20 + 6] = cb->data[3 * 2 + k];
    Tensor *q = ae_quantize(&c, m, z);
    assert_non_null(q);
    for (int n = 0; n < 2; n++)
        for (int p = 0; p < 20; p++) {
            int best = -1;
            double bd = DBL_MAX;
            for (int j = 0; j < 40; j++) {
                double d = 0;
                for (int k = 0; k < 3; k++) {
                    double v = (double)z->data[(n * 3 + k) * 20 + p] - cb->data[j * 3 + k];
                    d += v * v;
                }
                if (d < bd) bd = d, best = j;
            }
            if (n == 0 && p == 6) assert_int_equal(best, 2);
            for (int k = 0; k < 3; k++)
                assert_true(fabsf(q->data[(n * 3 + k) * 20 + p] - cb->data[best * 3 + k]) <= 1e-6f);
        }
    ctx_free(&c);
    ae_free(m);
}

// decode_first_stage: VQModelInterface quantizes before post_quant_conv; VQModel does not.
static void test_vq_decode_paths(void **state) {
    (void)state;
    Err e = {0};
    Rng r;
    rng_seed(&r, 9, 2);
    for (int kind = AE_VQ; kind <= AE_VQ_INTERFACE; kind++) {
        AeConfig a = vq_config((AeKind)kind);
        AeModel *m = NULL;
        assert_int_equal(ae_new(&m, &a, &e), 0);
        randomize(m, &r);
        Ctx c;
        assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
        int C, H, W;
        ae_latent_shape(m, &C, &H, &W);
        assert_int_equal(C, 3);
        assert_int_equal(H, 8);
        Tensor *z = tensor_new4(&c, 1, C, H, W);
        rng_normal_fill(&r, z->data, z->n);
        Tensor *d = ae_decode(&c, m, z);
        Tensor *raw = ae_decode_noquant(&c, m, z);
        Tensor *viaq = ae_decode_noquant(&c, m, ae_quantize(&c, m, z));
        assert_non_null(d);
        assert_non_null(raw);
        assert_non_null(viaq);
        assert_int_equal(d->shape[2], 16);
        const Tensor *want = kind == AE_VQ_INTERFACE ? viaq : raw, *other = kind == AE_VQ_INTERFACE ? raw : viaq;
        assert_true(memcmp(d->data, want->data, d->n * sizeof(float)) == 0);
        assert_true(rel_l2(d->data, other->data, d->n) > 1e-3);
        ctx_free(&c);
        ae_free(m);
    }
}

// AttnBlock scores spread by more than 87 (e^-87 < FLT_MIN): the softmax must give exact zeros,
// and (under UBSan) its exp must not shift a negative exponent (autograd/ops/attention.c exp_nonpos).
static void test_attention_far_scores(void **state) {
    (void)state;
    Err e = {0};
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    ctx_set_grad(&c, 0);
    // one query, keys giving scores 100 and -100 (scale 1): weights 1 and e^-200 = 0
    Tensor *q = tensor_from(&c, (const float[]){10, 10}, 3, (const int[]){1, 1, 2});
    Tensor *k = tensor_from(&c, (const float[]){10, 0, -10, 0}, 3, (const int[]){1, 2, 2});
    Tensor *v = tensor_from(&c, (const float[]){3, 4, 5, 6}, 3, (const int[]){1, 2, 2});
    Tensor *o = t_attention(&c, q, k, v, 1, 1.0f);
    assert_non_null(o);
    assert_true(o->data[0] == 3.0f && o->data[1] == 4.0f);
    ctx_free(&c);
}

static void test_config_checks(void **state) {
    (void)state;
    Err e = {0};
    AeConfig a = vq_config(AE_KL);
    a.dd.double_z = 0;
    assert_int_equal(ae_config_check(&a, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "double_z"));
    a = vq_config(AE_VQ);
    a.n_embed = 0;
    memset(&e, 0, sizeof e);
    assert_int_equal(ae_config_check(&a, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "n_embed"));
    a = vq_config(AE_VQ);
    a.dd.ch = 16;
    memset(&e, 0, sizeof e);
    assert_int_equal(ae_config_check(&a, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "32"));
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ae_kl_parity),
        cmocka_unit_test(test_param_order),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_decode_memory),
        cmocka_unit_test(test_vq_quantize),
        cmocka_unit_test(test_vq_decode_paths),
        cmocka_unit_test(test_attention_far_scores),
        cmocka_unit_test(test_config_checks),
    };
    return cmocka_run_group_tests_name("autoencoder", tests, NULL, NULL);
}
