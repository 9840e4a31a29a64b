/* test_unet.c: the CompVis UNetModel against the upstream fixtures of tests/data/parity
   (README there): eps and every hooked block output of the cin-style model, the
   num_head_channels variant, the LSUN-style model (scale-shift norm, resblock up/down,
   legacy AttentionBlock), gradients of sum(eps * G); the layer list against the checkpoint's
   own key order; load errors; config checks; options without a fixture of their own checked
   through weight transformations that must reproduce a fixture; the no-grad scope; the
   shipped teacher (loads completely; prints a timing line). One file per module (STYLE.md). */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "io/safetensors.h"
#include "io/weights.h"
#include "models/unet/unet.h"
#include "models/unet/unet_impl.h"
#include "util/threads.h"

static const double TOL_FORWARD = 1e-4;  // tests/data/parity/README.md
static const double TOL_GRAD = 1e-3;
static const char *PREFIX = "model.diffusion_model.";
static const size_t ARENA_BYTES = (size_t)1 << 30;

/* ---- configs, by hand from each case's config.yaml (model.params.unet_config.params) ---- */

static void cfg_cin(UNetConfig *c) { test_unet_config_cin(c); }

static void cfg_cin_head_channels(UNetConfig *c) {
    cfg_cin(c);
    c->num_heads = -1;
    c->num_head_channels = 16;
}

// attention at 2 and 4, one residual block a level, mult (1, 2, 2), 2 heads
static void cfg_uncond(UNetConfig *c) {
    test_unet_config_parity(c, (const int[]){2, 4}, 2, 1, (const int[]){1, 2, 2}, 3, 2);
    c->use_scale_shift_norm = 1;
    c->resblock_updown = 1;
}

/* ---- helpers ---- */

static WeightFile *open_case(const char *dir) {
    char rel[256];
    snprintf(rel, sizeof rel, "parity/%s/model.ckpt", dir);
    WeightFile *f = NULL;
    Err e = {0};
    if (weights_open(&f, test_data_path(rel), &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    return f;
}

// A UNet for cfg with the weights of case `dir`; fails the test on any error.
static UNet *load_model(const char *dir, const UNetConfig *cfg) {
    UNet *m = NULL;
    Err e = {0};
    if (unet_new(&m, cfg, &e)) {
        print_error("unet_new: %s\n", e.msg);
        fail();
    }
    WeightFile *f = open_case(dir);
    int unknown = -1;
    if (unet_load(m, f, PREFIX, &unknown, &e)) {
        print_error("unet_load: %s\n", e.msg);
        fail();
    }
    assert_int_equal(unknown, 0);
    weights_close(f);
    return m;
}

static Tensor *npy(Ctx *c, const char *dir, const char *name) {
    char rel[256];
    snprintf(rel, sizeof rel, "parity/%s/%s", dir, name);
    return test_load_npy(c, rel);
}

// Inputs of a case: x, t, and context when the case has one.
typedef struct {
    Tensor *x, *t, *context;
} Inputs;

static Inputs case_inputs(Ctx *c, const char *dir, int with_context) {
    Inputs in = {npy(c, dir, "x.npy"), npy(c, dir, "t.npy"), NULL};
    if (with_context) in.context = npy(c, dir, "context.npy");
    return in;
}

static Tensor *forward_or_fail(Ctx *c, UNet *m, Inputs in, const int *y) {
    Tensor *eps = unet_forward(c, m, in.x, in.t->data, in.context, y);
    if (!eps) {
        print_error("unet_forward: %s\n", c->err.msg);
        fail();
    }
    return eps;
}

static void check_eps(const char *dir, const UNetConfig *cfg, int with_context, UNet *m_given) {
    UNet *m = m_given ? m_given : load_model(dir, cfg);
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    ctx_set_grad(&c, 0);
    Inputs in = case_inputs(&c, dir, with_context);
    Tensor *eps = forward_or_fail(&c, m, in, NULL);
    Tensor *ref = npy(&c, dir, "eps.npy");
    assert_int_equal(eps->n, ref->n);
    assert_true(tensor_same_shape(eps, ref));
    assert_rel_l2(eps->data, ref->data, ref->n, TOL_FORWARD);
    print_message("  %s: eps rel L2 %.3g\n", dir, rel_l2(eps->data, ref->data, ref->n));
    ctx_free(&c);
    if (!m_given) unet_free(m);
}

/* ---- forward parity ---- */

typedef struct {
    Ctx *c;
    int checked;
} ActCheck;

// Compares each hooked block output with the forward-hook fixture act_<block>.npy.
static void act_hook(const char *block, const Tensor *out, void *user) {
    ActCheck *ac = user;
    char file[128];
    snprintf(file, sizeof file, "parity/unet_cin/act_%s.npy", block);
    for (char *p = file + strlen("parity/unet_cin/act_"); *p; p++)
        if (*p == '.' && strcmp(p, ".npy") != 0) *p = '_';
    FILE *fp = fopen(test_data_path(file), "rb");
    if (!fp) return;  // no fixture for this block (input_blocks.1.. are not dumped)
    fclose(fp);
    Tensor *ref = test_load_npy(ac->c, file);
    assert_true(tensor_same_shape(out, ref));
    assert_rel_l2(out->data, ref->data, ref->n, TOL_FORWARD);
    print_message("  act %-16s rel L2 %.3g\n", block, rel_l2(out->data, ref->data, ref->n));
    ac->checked++;
}

static void test_cin_eps_and_activations(void **state) {
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *m = load_model("unet_cin", &cfg);
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    ctx_set_grad(&c, 0);
    ActCheck ac = {&c, 0};
    unet_set_act_hook(m, act_hook, &ac);
    Inputs in = case_inputs(&c, "unet_cin", 1);
    Tensor *eps = forward_or_fail(&c, m, in, NULL);
    Tensor *ref = npy(&c, "unet_cin", "eps.npy");
    assert_rel_l2(eps->data, ref->data, ref->n, TOL_FORWARD);
    print_message("  unet_cin: eps rel L2 %.3g\n", rel_l2(eps->data, ref->data, ref->n));
    assert_int_equal(ac.checked, 9);  // time_embed, input_blocks_0, middle_block, output_blocks_0..5
    ctx_free(&c);
    unet_free(m);
}

static void test_cin_head_channels_eps(void **state) {
    UNetConfig cfg;
    cfg_cin_head_channels(&cfg);
    check_eps("unet_cin_head_channels", &cfg, 1, NULL);
}

static void test_uncond_eps(void **state) {
    UNetConfig cfg;
    cfg_uncond(&cfg);
    check_eps("unet_uncond", &cfg, 0, NULL);
}

/* ---- gradients ---- */

static void test_grad(void **state) {
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *m = load_model("unet_cin", &cfg);
    Err e = {0};
    assert_int_equal(unet_set_trainable(m, 1, &e), 0);
    unet_zero_grad(m);
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Inputs in = case_inputs(&c, "unet_cin", 1);
    in.x->requires_grad = 1;
    Tensor *eps = forward_or_fail(&c, m, in, NULL);
    Tensor *G = npy(&c, "unet_grad", "G.npy");
    assert_int_equal(G->n, eps->n);
    if (tape_backward(&c, eps, G->data)) {  // loss = sum(eps * G)
        print_error("tape_backward: %s\n", c.err.msg);
        fail();
    }
    Tensor *dx = npy(&c, "unet_grad", "dx.npy");
    assert_non_null(in.x->grad);
    assert_rel_l2(in.x->grad, dx->data, dx->n, TOL_GRAD);
    print_message("  dx rel L2 %.3g\n", rel_l2(in.x->grad, dx->data, dx->n));
    // (The attn2.to_k fixture is exactly zero: the context is one token, so softmax over one
    // key is constant in k.)
    static const char *names[] = {
        "input_blocks.1.0.in_layers.2.weight", "input_blocks.1.1.transformer_blocks.0.attn1.to_q.weight",
        "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight", "out.2.weight", "time_embed.0.weight",
        "middle_block.0.out_layers.3.weight"};
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        char file[256];
        int k = snprintf(file, sizeof file, "grad_%s", names[i]);
        for (char *p = file; p < file + k; p++)
            if (*p == '.') *p = '_';
        strcat(file, ".npy");
        Tensor *ref = npy(&c, "unet_grad", file);
        Tensor *p = unet_param(m, names[i]);
        assert_non_null(p);
        assert_non_null(p->grad);
        assert_int_equal(p->n, ref->n);
        assert_rel_l2(p->grad, ref->data, ref->n, TOL_GRAD);
        print_message("  d %-56s rel L2 %.3g\n", names[i], rel_l2(p->grad, ref->data, ref->n));
    }
    // Frozen again: no gradient buffers at all.
    assert_int_equal(unet_set_trainable(m, 0, &e), 0);
    assert_null(unet_param(m, "out.2.weight")->grad);
    assert_null(unet_grads(m));
    ctx_free(&c);
    unet_free(m);
}

/* ---- the layer list ---- */

// The checkpoint itself is the reference: torch.save writes the state dict in
// named_parameters() order, so its conv/linear weights under PREFIX (2-D linear, 3-D Conv1d,
// 4-D Conv2d; label_emb is an Embedding, not a layer) are the registration order.
static void check_layers_against_file(UNet *m, const char *dir, int expect_count) {
    WeightFile *f = open_case(dir);
    int n;
    ModelLayer **layers = unet_layers(m, &n);
    assert_int_equal(n, expect_count);
    int j = 0;
    for (int i = 0; i < weights_count(f); i++) {
        const WeightInfo *wi = weights_info(f, i);
        size_t len = strlen(wi->name), plen = strlen(PREFIX);
        if (strncmp(wi->name, PREFIX, plen) != 0 || len < plen + 7 || strcmp(wi->name + len - 7, ".weight") != 0 ||
            wi->ndim < 2 || strcmp(wi->name + plen, "label_emb.weight") == 0)
            continue;
        assert_true(j < n);
        char name[256];
        snprintf(name, sizeof name, "%s%s.weight", PREFIX, layers[j]->name);
        if (strcmp(name, wi->name) != 0) {
            print_error("layer %d: ours '%s', file order '%s'\n", j, name, wi->name);
            fail();
        }
        LayerKind kind = wi->ndim == 4 ? LAYER_CONV2D : wi->ndim == 3 ? LAYER_CONV1D : LAYER_LINEAR;
        assert_int_equal(layers[j]->kind, kind);
        assert_int_equal(layers[j]->index, j);
        // bias: present exactly when the file has one
        snprintf(name, sizeof name, "%s%s.bias", PREFIX, layers[j]->name);
        assert_int_equal(layers[j]->bias.data != NULL, weights_find(f, name) != NULL);
        j++;
    }
    assert_int_equal(j, n);
    weights_close(f);
}

static void test_layer_list(void **state) {
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *m = load_model("unet_cin", &cfg);
    int n;
    ModelLayer **l = unet_layers(m, &n);
    // Counted by hand from UNetModel.__init__: time_embed 2, input blocks 63 (conv_in 1,
    // 2 x (ResBlock 3 + SpatialTransformer 12), op 1, ResBlock 4 (skip) + 12, ResBlock 3 + 12),
    // middle 18, output blocks 97, out.2 1.
    assert_int_equal(n, 181);
    assert_string_equal(l[0]->name, "time_embed.0");
    assert_string_equal(l[1]->name, "time_embed.2");
    assert_string_equal(l[2]->name, "input_blocks.0.0");
    assert_string_equal(l[n - 1]->name, "out.2");
    assert_int_equal(l[0]->kind, LAYER_LINEAR);
    assert_int_equal(l[2]->kind, LAYER_CONV2D);
    // BasicTransformerBlock registers attn1, ff, attn2, norm1..3 (not forward order).
    int q = -1;
    for (int i = 0; i < n; i++)
        if (strcmp(l[i]->name, "input_blocks.1.1.transformer_blocks.0.attn1.to_q") == 0) q = i;
    assert_true(q > 0);
    assert_string_equal(l[q - 1]->name, "input_blocks.1.1.proj_in");
    assert_string_equal(l[q + 4]->name, "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj");
    assert_string_equal(l[q + 5]->name, "input_blocks.1.1.transformer_blocks.0.ff.net.2");
    assert_string_equal(l[q + 6]->name, "input_blocks.1.1.transformer_blocks.0.attn2.to_q");
    assert_string_equal(l[q + 10]->name, "input_blocks.1.1.proj_out");
    assert_null(l[q]->bias.data);  // CrossAttention to_q/k/v have no bias
    assert_string_equal(layer_leaf_name(l[q + 10]), "proj_out");
    check_layers_against_file(m, "unet_cin", 181);
    // Parameters: every state-dict tensor under the prefix, in the state dict's order, none more.
    WeightFile *f = open_case("unet_cin");
    int in_file = 0;
    for (int i = 0; i < weights_count(f); i++) {
        const char *name = weights_info(f, i)->name, *ours = NULL;
        if (strncmp(name, PREFIX, strlen(PREFIX)) != 0) continue;
        assert_non_null(unet_param_at(m, in_file++, &ours));
        assert_string_equal(ours, name + strlen(PREFIX));
    }
    assert_int_equal(unet_param_tensors(m), in_file);
    size_t floats = 0;
    for (int i = 0; i < unet_param_tensors(m); i++) floats += unet_param_at(m, i, NULL)->n;
    assert_int_equal(floats, unet_param_count(m));
    weights_close(f);
    unet_free(m);

    // LSUN style: Conv1d qkv / proj_out, ResBlock down/up without op/conv layers.
    cfg_uncond(&cfg);
    m = load_model("unet_uncond", &cfg);
    l = unet_layers(m, &n);
    int conv1d = 0;
    for (int i = 0; i < n; i++) conv1d += l[i]->kind == LAYER_CONV1D;
    // AttentionBlocks: input_blocks.3, .5, middle, output_blocks.0..3 (ds 4, 4, 2, 2).
    assert_int_equal(conv1d, 2 * 7);
    check_layers_against_file(m, "unet_uncond", n);
    unet_free(m);
}

/* ---- load errors ---- */

static void expect_load_error(const UNetConfig *cfg, int code, const char *const *needles) {
    UNet *m = NULL;
    Err e = {0};
    assert_int_equal(unet_new(&m, cfg, &e), 0);
    WeightFile *f = open_case("unet_cin");
    int unknown = 0;
    assert_int_equal(unet_load(m, f, PREFIX, &unknown, &e), code);
    for (; *needles; needles++)
        if (!strstr(e.msg, *needles)) {
            print_error("message lacks '%s': %s\n", *needles, e.msg);
            fail();
        }
    weights_close(f);
    unet_free(m);
}

static void test_load_errors(void **state) {
    UNetConfig cfg;
    // A tensor the config needs but the file lacks: ERR_KEY naming it.
    cfg_cin(&cfg);
    cfg.num_classes = 11;
    expect_load_error(&cfg, ERR_KEY, (const char *[]){"model.diffusion_model.label_emb.weight", "model.ckpt", NULL});
    // A tensor of another shape: ERR_SHAPE naming it, the expected and the found shape.
    cfg_cin(&cfg);
    cfg.context_dim = 16;
    expect_load_error(&cfg, ERR_SHAPE,
                      (const char *[]){"model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
                                       "(32, 16)", "(32, 32)", NULL});
    // Tensors the config does not have are counted, not an error: without conv_resample
    // input_blocks.3.0.op and output_blocks.2.2.conv (weight + bias each) are left over.
    cfg_cin(&cfg);
    cfg.conv_resample = 0;
    UNet *m = NULL;
    Err e = {0};
    assert_int_equal(unet_new(&m, &cfg, &e), 0);
    WeightFile *f = open_case("unet_cin");
    int unknown = -1;
    assert_int_equal(unet_load(m, f, PREFIX, &unknown, &e), 0);
    assert_int_equal(unknown, 4);
    // A wrong prefix: the first parameter in registration order is missing.
    assert_int_equal(unet_load(m, f, "model.", &unknown, &e), ERR_KEY);
    assert_non_null(strstr(e.msg, "'model.time_embed.0.weight'"));
    weights_close(f);
    unet_free(m);
}

// h/io-ckpt bug found here: st_write without metadata passed w->meta == NULL to memcpy
// (UBSan: "null pointer passed as argument 2"). A one-tensor file without metadata.
static void test_st_write_without_metadata(void **state) {
    char dir[] = "/tmp/effdm_test_unet_XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    snprintf(path, sizeof path, "%s/one.safetensors", dir);
    StWriter w = {0};
    Err e = {0};
    float v[2] = {1.0f, 2.0f};
    assert_int_equal(st_writer_add(&w, "v", DT_F32, 1, (int64_t[]){2}, v, &e), 0);
    assert_int_equal(st_write(&w, path, &e), 0);
    st_writer_free(&w);
    remove(path);
    remove(dir);
}

// Writes the unet_cin checkpoint's UNet tensors as a safetensors file (which sorts them by
// name), leaving out `drop` and giving `flatten` its first two dims only. NULL: none.
static void write_variant(const char *path, const char *drop, const char *flatten) {
    WeightFile *f = open_case("unet_cin");
    StWriter w = {0};
    Err e = {0};
    int n = weights_count(f);
    float **bufs = calloc((size_t)n, sizeof *bufs);
    assert_non_null(bufs);
    for (int i = 0; i < n; i++) {
        const WeightInfo *wi = weights_info(f, i);
        if (strncmp(wi->name, PREFIX, strlen(PREFIX)) != 0) continue;
        if (drop && strcmp(wi->name + strlen(PREFIX), drop) == 0) continue;
        bufs[i] = malloc(wi->numel * sizeof(float));
        assert_non_null(bufs[i]);
        assert_int_equal(weights_read_f32(f, wi->name, bufs[i], 0, NULL, &e), 0);
        int ndim = wi->ndim;
        if (flatten && strcmp(wi->name + strlen(PREFIX), flatten) == 0) ndim = 2;
        assert_int_equal(st_writer_add(&w, wi->name, DT_F32, ndim, wi->shape, bufs[i], &e), 0);
    }
    if (st_write(&w, path, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    st_writer_free(&w);
    for (int i = 0; i < n; i++) free(bufs[i]);
    free(bufs);
    weights_close(f);
}

// The same checks on safetensors files built from the fixture: a complete one loads by name
// (its key order is alphabetical, not registration order) and reproduces eps; a missing
// tensor is ERR_KEY, a reshaped one ERR_SHAPE, both naming the tensor.
static void test_load_safetensors(void **state) {
    char dir[] = "/tmp/effdm_test_unet_XXXXXX", path[128];
    assert_non_null(mkdtemp(dir));
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *m = NULL;
    Err e = {0};
    WeightFile *f = NULL;
    assert_int_equal(unet_new(&m, &cfg, &e), 0);

    snprintf(path, sizeof path, "%s/full.safetensors", dir);
    write_variant(path, NULL, NULL);
    assert_int_equal(weights_open(&f, path, &e), 0);
    int unknown = -1;
    assert_int_equal(unet_load(m, f, PREFIX, &unknown, &e), 0);
    assert_int_equal(unknown, 0);
    weights_close(f);
    check_eps("unet_cin", &cfg, 1, m);
    remove(path);

    snprintf(path, sizeof path, "%s/missing.safetensors", dir);
    write_variant(path, "output_blocks.3.1.transformer_blocks.0.norm2.bias", NULL);
    assert_int_equal(weights_open(&f, path, &e), 0);
    assert_int_equal(unet_load(m, f, PREFIX, NULL, &e), ERR_KEY);
    assert_non_null(strstr(e.msg, "'model.diffusion_model.output_blocks.3.1.transformer_blocks.0.norm2.bias'"));
    assert_non_null(strstr(e.msg, "missing.safetensors"));
    weights_close(f);
    remove(path);

    memset(&e, 0, sizeof e);
    snprintf(path, sizeof path, "%s/shape.safetensors", dir);
    write_variant(path, NULL, "input_blocks.4.0.skip_connection.weight");
    assert_int_equal(weights_open(&f, path, &e), 0);
    assert_int_equal(unet_load(m, f, PREFIX, NULL, &e), ERR_SHAPE);
    assert_non_null(strstr(e.msg, "'model.diffusion_model.input_blocks.4.0.skip_connection.weight'"));
    assert_non_null(strstr(e.msg, "expected shape (64, 32, 1, 1)"));
    assert_non_null(strstr(e.msg, "found (64, 32)"));
    weights_close(f);
    remove(path);
    remove(dir);
    unet_free(m);
}

/* ---- config checks ---- */

static void expect_config_error(const UNetConfig *cfg, const char *needle) {
    Err e = {0};
    assert_int_equal(unet_config_check(cfg, &e), ERR_VALUE);
    if (!strstr(e.msg, needle)) {
        print_error("message lacks '%s': %s\n", needle, e.msg);
        fail();
    }
    UNet *m = (UNet *)1;
    Err e2 = {0};
    assert_int_equal(unet_new(&m, cfg, &e2), ERR_VALUE);
    assert_null(m);
}

static void test_config_checks(void **state) {
    UNetConfig cfg;
    Err e = {0};
    cfg_cin(&cfg);
    assert_int_equal(unet_config_check(&cfg, &e), 0);
    unet_config_defaults(&cfg);
    expect_config_error(&cfg, "in_channels");
    cfg_cin(&cfg);
    cfg.num_heads = -1;
    expect_config_error(&cfg, "num_head_channels");
    cfg_cin(&cfg);
    cfg.context_dim = 0;
    expect_config_error(&cfg, "context_dim");
    cfg_uncond(&cfg);
    cfg.context_dim = 32;
    expect_config_error(&cfg, "use_spatial_transformer");
    cfg_cin(&cfg);
    cfg.model_channels = 48;  // GroupNorm(32, 48) is rejected by torch
    expect_config_error(&cfg, "input_blocks.1.0.in_layers.0");
    cfg_cin(&cfg);
    cfg.channel_mult[0] = 2;
    expect_config_error(&cfg, "channel_mult[0]");
    cfg_cin(&cfg);
    cfg.num_head_channels = 64;  // more than the 32 channels of level 0
    cfg.num_heads = -1;
    expect_config_error(&cfg, "input_blocks.1.1");
    cfg_uncond(&cfg);
    cfg.num_heads = 3;  // AttentionBlock: 64 channels into 3 heads
    expect_config_error(&cfg, "input_blocks.3.1");
    cfg_uncond(&cfg);
    cfg.legacy = 0;     // dim_head = 64 // 3 = 21 does not divide 64
    cfg.num_heads = 3;
    expect_config_error(&cfg, "input_blocks.3.1");
    cfg_cin(&cfg);
    cfg.attention_resolutions[1] = 0;
    expect_config_error(&cfg, "attention_resolutions[1]");
    // SpatialTransformer accepts an inner width below the channel count: 3 heads of 10.
    cfg_cin(&cfg);
    cfg.num_heads = 3;
    UNet *m = NULL;
    assert_int_equal(unet_new(&m, &cfg, &e), 0);
    Tensor *w = unet_param(m, "input_blocks.1.1.proj_in.weight");
    assert_non_null(w);
    assert_int_equal(w->shape[0], 30);
    assert_int_equal(unet_param(m, "input_blocks.1.1.transformer_blocks.0.ff.net.0.proj.weight")->shape[0], 240);
    assert_null(unet_param(m, "input_blocks.1.1.proj_in.nothing"));
    unet_free(m);
}

// UNetModel.__init__'s head arithmetic, case by case (values worked out from the upstream code).
static void test_attention_heads(void **state) {
    UNetConfig c;
    Err e = {0};
    int h, d;
    // LSUN churches: AttentionBlock, num_heads 8, legacy; output blocks use num_heads_upsample.
    cfg_uncond(&c);
    c.num_heads = 8;
    c.num_heads_upsample = 4;
    assert_int_equal(unet_attention_heads(&c, 384, 0, "x", &h, &d, &e), 0);
    assert_int_equal(h, 8);
    assert_int_equal(unet_attention_heads(&c, 384, 1, "x", &h, &d, &e), 0);
    assert_int_equal(h, 4);
    // legacy = False: AttentionBlock gets num_head_channels = ch // num_heads, which wins
    // over num_heads_upsample.
    c.legacy = 0;
    assert_int_equal(unet_attention_heads(&c, 384, 1, "x", &h, &d, &e), 0);
    assert_int_equal(h, 8);
    // LSUN bedrooms / FFHQ: num_head_channels 32 -> ch / 32 heads everywhere.
    cfg_uncond(&c);
    c.num_heads = -1;
    c.num_head_channels = 32;
    assert_int_equal(unet_attention_heads(&c, 448, 1, "x", &h, &d, &e), 0);
    assert_int_equal(h, 14);
    assert_int_equal(d, 32);
    // cin256 (SpatialTransformer, num_head_channels 32, legacy): heads ch // 32, dim_head ch // heads.
    cfg_cin(&c);
    c.num_heads = -1;
    c.num_head_channels = 48;
    assert_int_equal(unet_attention_heads(&c, 64, 0, "x", &h, &d, &e), 0);
    assert_int_equal(h, 1);
    assert_int_equal(d, 64);  // legacy: 64 // 1
    c.legacy = 0;
    assert_int_equal(unet_attention_heads(&c, 64, 0, "x", &h, &d, &e), 0);
    assert_int_equal(h, 1);
    assert_int_equal(d, 48);  // non-legacy: num_head_channels
    // txt2img: num_heads 8, legacy False, 320 channels: 8 heads of 40.
    cfg_cin(&c);
    c.num_heads = 8;
    c.legacy = 0;
    assert_int_equal(unet_attention_heads(&c, 320, 1, "x", &h, &d, &e), 0);
    assert_int_equal(h, 8);
    assert_int_equal(d, 40);
}

/* ---- options without a fixture of their own ----
   Each builds a model with the option, transforms the fixture's weights so that upstream
   would compute the same function as the fixture's model, and checks against that fixture. */

// use_new_attention_order (QKVAttention): q, k, v are split before the heads. Rows of the
// legacy qkv conv, ordered (head, part, channel), are moved to (part, head, channel).
static void test_new_attention_order(void **state) {
    UNetConfig cfg;
    cfg_uncond(&cfg);
    UNet *legacy = load_model("unet_uncond", &cfg);
    cfg.use_new_attention_order = 1;
    UNet *m = load_model("unet_uncond", &cfg);
    int n, moved = 0;
    ModelLayer **l = unet_layers(m, &n), **ll = unet_layers(legacy, &n);
    for (int i = 0; i < n; i++) {
        if (strcmp(layer_leaf_name(l[i]), "qkv") != 0) continue;
        int C = l[i]->weight.shape[1], heads = 2, d = C / heads;
        for (int h = 0; h < heads; h++)
            for (int part = 0; part < 3; part++)
                for (int ch = 0; ch < d; ch++) {
                    int from = h * 3 * d + part * d + ch, to = part * C + h * d + ch;
                    memcpy(l[i]->weight.data + (size_t)to * C, ll[i]->weight.data + (size_t)from * C,
                           (size_t)C * sizeof(float));
                    l[i]->bias.data[to] = ll[i]->bias.data[from];
                }
        moved++;
    }
    assert_int_equal(moved, 7);
    check_eps("unet_uncond", &cfg, 0, m);
    unet_free(m);
    unet_free(legacy);
}

// num_classes: emb = time_embed(t) + label_emb(y). With every label equal to k, adding
// label_emb[k] and subtracting it from time_embed.2's bias leaves the function unchanged;
// any other label must change it.
static void test_num_classes(void **state) {
    UNetConfig cfg;
    cfg_uncond(&cfg);
    cfg.num_classes = 5;
    UNet *m = NULL;
    Err e = {0};
    assert_int_equal(unet_new(&m, &cfg, &e), 0);
    WeightFile *f = open_case("unet_uncond");
    assert_int_equal(unet_load(m, f, PREFIX, NULL, &e), ERR_KEY);  // label_emb.weight is not in the file
    weights_close(f);
    UNetConfig plain;
    cfg_uncond(&plain);
    UNet *src = load_model("unet_uncond", &plain);
    for (int i = 0; i < unet_param_tensors(src); i++) {
        const char *name;
        Tensor *t = unet_param_at(src, i, &name);
        Tensor *dst = unet_param(m, name);
        assert_non_null(dst);
        memcpy(dst->data, t->data, t->n * sizeof(float));
    }
    Tensor *emb = unet_param(m, "label_emb.weight"), *bias = unet_param(m, "time_embed.2.bias");
    Rng r;
    rng_seed(&r, 3, 0);
    test_fill_matrix_normal(emb, 5, 128, &r);
    const int k = 3;
    for (int j = 0; j < 128; j++) bias->data[j] -= emb->data[k * 128 + j];

    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    ctx_set_grad(&c, 0);
    Inputs in = case_inputs(&c, "unet_uncond", 0);
    Tensor *ref = npy(&c, "unet_uncond", "eps.npy");
    int y[3] = {k, k, k};
    Tensor *eps = forward_or_fail(&c, m, in, y);
    assert_rel_l2(eps->data, ref->data, ref->n, TOL_FORWARD);
    y[1] = 0;
    eps = forward_or_fail(&c, m, in, y);
    assert_true(rel_l2(eps->data, ref->data, ref->n) > 100 * TOL_FORWARD);
    ctx_free(&c);
    unet_free(m);
    unet_free(src);
}

// legacy = False changes nothing for the three fixture configs (CompVis' head arithmetic
// gives the same heads there), so the fixtures must hold as they are.
static void test_not_legacy(void **state) {
    UNetConfig cfg;
    cfg_cin_head_channels(&cfg);
    cfg.legacy = 0;
    check_eps("unet_cin_head_channels", &cfg, 1, NULL);
    cfg_uncond(&cfg);
    cfg.legacy = 0;
    check_eps("unet_uncond", &cfg, 0, NULL);
}

// transformer_depth 2: a second BasicTransformerBlock whose residual branches end in zero
// projections (to_out.0 of both attentions, ff.net.2) is the identity, so the depth-2 model
// with the depth-1 weights must reproduce the unet_cin fixture.
static void test_transformer_depth(void **state) {
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *src = load_model("unet_cin", &cfg);
    cfg.transformer_depth = 2;
    UNet *m = NULL;
    Err e = {0};
    assert_int_equal(unet_new(&m, &cfg, &e), 0);
    int n;
    unet_layers(m, &n);
    assert_int_equal(n, 181 + 11 * 10);  // 11 SpatialTransformers, 10 layers per extra block
    int copied = 0;
    for (int i = 0; i < unet_param_tensors(src); i++) {
        const char *name;
        Tensor *t = unet_param_at(src, i, &name);
        Tensor *dst = unet_param(m, name);
        assert_non_null(dst);
        memcpy(dst->data, t->data, t->n * sizeof(float));
        copied++;
    }
    Rng r;
    rng_seed(&r, 5, 0);
    for (int i = 0; i < unet_param_tensors(m); i++) {
        const char *name;
        Tensor *t = unet_param_at(m, i, &name);
        if (!strstr(name, "transformer_blocks.1.")) continue;
        copied--;
        int zero = strstr(name, "to_out.0.") || strstr(name, "ff.net.2.");
        if (zero) memset(t->data, 0, t->n * sizeof(float));
        else rng_normal_fill(&r, t->data, t->n);
    }
    assert_int_equal(copied + (unet_param_tensors(m) - unet_param_tensors(src)), unet_param_tensors(src));
    check_eps("unet_cin", &cfg, 1, m);
    unet_free(m);
    unet_free(src);
}

// conv_resample = False: Downsample is a 2x2 average pool, Upsample has no conv. The same
// functions as convs: "op" with 1/4 on the 2x2 window the stride-2 3x3 kernel covers at
// offsets 1..2, and an identity 3x3 "conv". (A check between two paths of this code; the
// conv path is the one the fixtures verify.)
static void test_no_conv_resample(void **state) {
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *with = load_model("unet_cin", &cfg);
    Tensor *op = unet_param(with, "input_blocks.3.0.op.weight"), *up = unet_param(with, "output_blocks.2.2.conv.weight");
    assert_non_null(op);
    assert_non_null(up);
    memset(op->data, 0, op->n * sizeof(float));
    memset(up->data, 0, up->n * sizeof(float));
    memset(unet_param(with, "input_blocks.3.0.op.bias")->data, 0, 32 * sizeof(float));
    memset(unet_param(with, "output_blocks.2.2.conv.bias")->data, 0, 64 * sizeof(float));
    for (int o = 0; o < 32; o++)
        for (int u = 1; u < 3; u++)
            for (int v = 1; v < 3; v++) op->data[((size_t)o * 32 + o) * 9 + u * 3 + v] = 0.25f;
    for (int o = 0; o < 64; o++) up->data[((size_t)o * 64 + o) * 9 + 4] = 1.0f;
    cfg.conv_resample = 0;
    UNet *m = NULL;
    Err e = {0};
    assert_int_equal(unet_new(&m, &cfg, &e), 0);
    int n_with, n;
    unet_layers(with, &n_with);
    unet_layers(m, &n);
    assert_int_equal(n, n_with - 2);
    WeightFile *f = open_case("unet_cin");
    assert_int_equal(unet_load(m, f, PREFIX, NULL, &e), 0);
    weights_close(f);
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    ctx_set_grad(&c, 0);
    Inputs in = case_inputs(&c, "unet_cin", 1);
    Tensor *a = forward_or_fail(&c, with, in, NULL);
    Tensor *b = forward_or_fail(&c, m, in, NULL);
    assert_rel_l2(b->data, a->data, a->n, TOL_FORWARD);
    ctx_free(&c);
    unet_free(m);
    unet_free(with);
}

/* ---- inputs ---- */

static void expect_forward_error(UNet *m, Inputs in, Tensor *x, Tensor *context, const int *y, int code,
                                 const char *needle) {
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, (size_t)1 << 24, &e), 0);
    assert_null(unet_forward(&c, m, x, in.t->data, context, y));
    assert_int_equal(c.err.code, code);
    if (!strstr(c.err.msg, needle)) {
        print_error("message lacks '%s': %s\n", needle, c.err.msg);
        fail();
    }
    ctx_free(&c);
}

static void test_forward_input_errors(void **state) {
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *m = load_model("unet_cin", &cfg);
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Inputs in = case_inputs(&c, "unet_cin", 1);
    int y[3] = {0, 1, 2};
    expect_forward_error(m, in, in.x, NULL, NULL, ERR_VALUE, "context");
    expect_forward_error(m, in, in.x, in.context, y, ERR_VALUE, "num_classes");
    Tensor *odd = tensor_zeros(&c, 4, (int[]){3, 4, 7, 8});
    expect_forward_error(m, in, odd, in.context, NULL, ERR_SHAPE, "multiples of 2");
    Tensor *chans = tensor_zeros(&c, 4, (int[]){3, 3, 8, 8});
    expect_forward_error(m, in, chans, in.context, NULL, ERR_SHAPE, "(N, 4, H, W)");
    Tensor *ctx2 = tensor_zeros(&c, 3, (int[]){3, 1, 16});
    expect_forward_error(m, in, in.x, ctx2, NULL, ERR_SHAPE, "context");
    // Batch size and token count are free: one sample with 2 context tokens, 16x16.
    Tensor *x1 = tensor_zeros(&c, 4, (int[]){1, 4, 16, 16});
    Tensor *ctx1 = tensor_zeros(&c, 3, (int[]){1, 2, 32});
    ctx_set_grad(&c, 0);
    Tensor *out = unet_forward(&c, m, x1, in.t->data, ctx1, NULL);
    assert_non_null(out);
    assert_int_equal(out->shape[2], 16);
    ctx_free(&c);
    unet_free(m);
}

/* ---- memory: scopes free a no-grad forward's intermediates ---- */

static void test_scope_memory(void **state) {
    UNetConfig cfg;
    cfg_cin(&cfg);
    UNet *m = load_model("unet_cin", &cfg);
    Err e = {0};
    Ctx a, b;
    assert_int_equal(ctx_init(&a, ARENA_BYTES, &e), 0);
    assert_int_equal(ctx_init(&b, ARENA_BYTES, &e), 0);
    Inputs ia = case_inputs(&a, "unet_cin", 1), ib = case_inputs(&b, "unet_cin", 1);
    size_t base_a = a.arena.used, base_b = b.arena.used;

    ctx_set_grad(&a, 0);  // the teacher: no grad mode
    Tensor *ea = forward_or_fail(&a, m, ia, NULL);
    size_t peak_nograd = a.arena.peak - base_a;
    assert_int_equal(a.n_nodes, 0);

    assert_int_equal(unet_set_trainable(m, 1, &e), 0);  // the student: everything recorded
    Tensor *eb = forward_or_fail(&b, m, ib, NULL);
    size_t peak_grad = b.arena.peak - base_b;
    assert_true(b.n_nodes > 0);
    assert_int_equal(memcmp(ea->data, eb->data, ea->n * sizeof(float)), 0);
    print_message("  arena peak: no-grad %.2f MiB, grad %.2f MiB\n", peak_nograd / 1048576.0, peak_grad / 1048576.0);
    assert_true(peak_nograd * 4 < peak_grad);

    // Frozen weights in grad mode record nothing either: the scopes free as in no-grad mode.
    assert_int_equal(unet_set_trainable(m, 0, &e), 0);
    ctx_reset(&b);
    ib = case_inputs(&b, "unet_cin", 1);
    base_b = b.arena.peak = b.arena.used;
    forward_or_fail(&b, m, ib, NULL);
    assert_int_equal(b.n_nodes, 0);
    assert_true(b.arena.peak - base_b <= peak_nograd);
    ctx_free(&a);
    ctx_free(&b);
    unet_free(m);
}

/* ---- the shipped teacher (models/zoo/fmnist-ldm): loads completely; timing line ---- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void test_teacher(void **state) {
    UNetConfig cfg;  // models/zoo/fmnist-ldm/config.yaml
    cfg_cin(&cfg);
    cfg.attention_resolutions[0] = 2;
    cfg.n_attention_resolutions = 1;
    cfg.context_dim = 64;
    UNet *m = NULL;
    Err e = {0};
    assert_int_equal(unet_new(&m, &cfg, &e), 0);
    WeightFile *f = NULL;
    if (weights_open(&f, test_data_path("../../models/zoo/fmnist-ldm/model.ckpt"), &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    int unknown = -1;
    if (unet_load(m, f, PREFIX, &unknown, &e)) {
        print_error("%s\n", e.msg);
        fail();
    }
    assert_int_equal(unknown, 0);
    weights_close(f);

    // One guided DDIM step of the distillation loop: batch 2 x 2 (cond + uncond halves).
    const int N = 4;
    Ctx c;
    assert_int_equal(ctx_init(&c, ARENA_BYTES, &e), 0);
    Rng r;
    rng_seed(&r, 1, 0);
    float t[4] = {981, 981, 981, 981};
    double t0 = now_s(), t_fwd = 0, t_bwd = 0;
    int reps = 0;
    while (now_s() - t0 < 1.0 || reps < 3) {
        ctx_reset(&c);
        Tensor *x = tensor_new4(&c, N, 4, 8, 8), *ctx = tensor_new3(&c, N, 1, 64);
        rng_normal_fill(&r, x->data, x->n);
        rng_normal_fill(&r, ctx->data, ctx->n);
        ctx_set_grad(&c, 0);
        double a = now_s();
        Tensor *eps = unet_forward(&c, m, x, t, ctx, NULL);
        assert_non_null(eps);
        ctx_set_grad(&c, 1);
        x->requires_grad = 1;  // a student-like pass: activations kept, backward to the input
        double b = now_s();
        eps = unet_forward(&c, m, x, t, ctx, NULL);
        assert_non_null(eps);
        assert_int_equal(tape_backward(&c, eps, eps->data), 0);
        double d = now_s();
        t_fwd += b - a;
        t_bwd += d - b;
        reps++;
    }
    print_message("  teacher UNet N=%d 8x8: no-grad forward %.2f ms, forward+backward %.2f ms, thr=%d "
                  "(%zu params)\n", N, 1e3 * t_fwd / reps, 1e3 * t_bwd / reps, threads_get(), unet_param_count(m));
    ctx_free(&c);
    unet_free(m);
}

int main(void) {
    threads_set(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cin_eps_and_activations),
        cmocka_unit_test(test_cin_head_channels_eps),
        cmocka_unit_test(test_uncond_eps),
        cmocka_unit_test(test_grad),
        cmocka_unit_test(test_layer_list),
        cmocka_unit_test(test_load_errors),
        cmocka_unit_test(test_st_write_without_metadata),
        cmocka_unit_test(test_load_safetensors),
        cmocka_unit_test(test_config_checks),
        cmocka_unit_test(test_attention_heads),
        cmocka_unit_test(test_new_attention_order),
        cmocka_unit_test(test_num_classes),
        cmocka_unit_test(test_not_legacy),
        cmocka_unit_test(test_transformer_depth),
        cmocka_unit_test(test_no_conv_resample),
        cmocka_unit_test(test_forward_input_errors),
        cmocka_unit_test(test_scope_memory),
        cmocka_unit_test(test_teacher),
    };
    return cmocka_run_group_tests_name("unet", tests, NULL, NULL);
}
