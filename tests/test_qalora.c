/* test_qalora.c: the QALoRA layer against the upstream EfficientDM layer
   (tests/data/parity/qalora, QuantModule_intnlora semantics: 'mse' weight ranges, W_int,
   w_eff, the output and every gradient at TALSQ step 3 of 5), and the rest of the layer
   against closed forms and finite differences: LoRA initialisation, the smooth LoRA path,
   special layers, calibration, entry switching, merge/export, gradient binding. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/qlayer.h"
#include "util/threads.h"

static const double TOL_OUT = 1e-3;   // fixture README: the rounding case, out and gradients
static const double TOL_GRAD = 1e-3;
static const int W_EFF_MAX_MISMATCH = 4;  // entries of w_eff allowed on a rounding boundary
static const int FIXTURE_STEP = 3;        // the fixture's TALSQ step index
static const int FIXTURE_ENTRIES = 5;
static const int FIXTURE_RANK = 4;
static const double TOL_GRADCHECK = 1e-3;  // the LoRA path is linear in A, B and Δ_w: FD is exact up to float

static float *fdup(const float *p, size_t n) {
    float *q = malloc(n * sizeof(float));
    assert_non_null(q);
    memcpy(q, p, n * sizeof(float));
    return q;
}

// A conv2d / linear ModelLayer over malloc'ed copies of the given weight and bias.
static void layer_make(ModelLayer *l, LayerKind kind, const char *name, const Tensor *w, const Tensor *b, int stride,
                       int pad) {
    memset(l, 0, sizeof *l);
    l->kind = kind;
    snprintf(l->name, sizeof l->name, "%s", name);
    tensor_init_param(&l->weight, fdup(w->data, w->n), NULL, w->ndim, w->shape);
    if (b) tensor_init_param(&l->bias, fdup(b->data, b->n), NULL, b->ndim, b->shape);
    l->stride = stride;
    l->pad = pad;
}

static void layer_release(ModelLayer *l) {
    free(l->weight.data);
    free(l->bias.data);
}

static Tensor *fx(Ctx *c, const char *prefix, const char *name) {
    char path[256];
    snprintf(path, sizeof path, "parity/qalora/%s%s.npy", prefix, name);
    return test_load_npy(c, path);
}

static void report(const char *prefix, const char *what, const float *ours, const float *ref, size_t n) {
    print_message("  %s%-16s rel L2 %.3g\n", prefix, what, rel_l2(ours, ref, n));
}

/* ---- the upstream fixture ------------------------------------------------------------ */

// recompute: the weight path as one op rebuilt in backward, on a context with a gradient pool
static void run_fixture(const char *prefix, LayerKind kind, int recompute) {
    Ctx *d = test_ctx_new((size_t)1 << 24), *c = test_ctx_new((size_t)1 << 26);
    Err pe = {0};
    if (recompute) assert_int_equal(ctx_pool_grads(c, (size_t)1 << 26, &pe), 0);
    Tensor *x = fx(d, prefix, "x"), *W = fx(d, prefix, "W"), *bias = fx(d, prefix, "bias");
    Tensor *w_delta = fx(d, prefix, "w_delta"), *w_zp = fx(d, prefix, "w_zero_point");
    Tensor *W_int = fx(d, prefix, "W_int"), *lA = fx(d, prefix, "lora_A"), *lB = fx(d, prefix, "lora_B");
    Tensor *a_d = fx(d, prefix, "a_delta_list"), *a_z = fx(d, prefix, "a_zp_list");
    Tensor *w_eff = fx(d, prefix, "w_eff"), *out_ref = fx(d, prefix, "out"), *G = fx(d, prefix, "G");
    Tensor *dx_ref = fx(d, prefix, "dx"), *dA_ref = fx(d, prefix, "d_lora_A"), *dB_ref = fx(d, prefix, "d_lora_B");
    Tensor *dwd_ref = fx(d, prefix, "d_w_delta"), *dwb_ref = fx(d, prefix, "d_w_delta_base");
    Tensor *dwz_ref = fx(d, prefix, "d_w_zero_point");
    Tensor *dad_ref = fx(d, prefix, "d_a_delta_list"), *daz_ref = fx(d, prefix, "d_a_zp_list");

    ModelLayer l;
    layer_make(&l, kind, kind == LAYER_LINEAR ? "emb_layers.1" : "in_layers.2", W, bias, 1, 1);
    QLayerConfig cfg;
    qlayer_config_defaults(&cfg);
    cfg.rank = FIXTURE_RANK;
    cfg.n_entries = FIXTURE_ENTRIES;
    cfg.w_init = QUANT_INIT_MSE;  // the fixture's ranges come from the upstream 'mse' init
    QLayer q;
    Rng rng;
    rng_seed(&rng, 5, 0);
    Err e = {0};
    assert_int_equal(qlayer_init(&q, &l, &cfg, NULL, NULL, &rng, &e), 0);
    q.recompute = recompute;

    // 'mse' init and W_int reproduce the upstream values exactly
    int cout = W->shape[0];
    assert_int_equal(w_delta->n, (size_t)cout);
    for (int o = 0; o < cout; o++) {
        assert_float_equal(q.wq.delta.data[o], w_delta->data[o], 0.0f);
        assert_float_equal(q.wq.zero.data[o], w_zp->data[o], 0.0f);
    }
    for (size_t i = 0; i < W->n; i++) assert_float_equal((float)q.w_int[i], W_int->data[i], 0.0f);

    // the fixture's LoRA weights and activation table
    assert_int_equal(q.lora_a.n, lA->n);
    assert_int_equal(q.lora_b.n, lB->n);
    memcpy(q.lora_a.data, lA->data, lA->n * sizeof(float));
    memcpy(q.lora_b.data, lB->data, lB->n * sizeof(float));
    assert_int_equal(a_d->n, (size_t)FIXTURE_ENTRIES);
    memcpy(q.aq.delta.data, a_d->data, a_d->n * sizeof(float));
    memcpy(q.aq.zero.data, a_z->data, a_z->n * sizeof(float));
    q.act_ready = 1;
    int entry = FIXTURE_STEP;
    q.entry = &entry;
    float *dwz = calloc((size_t)cout, sizeof(float));  // z_w is not trained; the fixture has its gradient anyway
    q.wq.zero.grad = dwz;
    q.wq.zero.requires_grad = 1;

    // w_eff: exact but for entries on a rounding boundary
    int prev = ctx_set_grad(c, 0);
    Tensor *weff = qlayer_weight(c, &q);
    ctx_set_grad(c, prev);
    assert_non_null(weff);
    int mismatch = 0;
    for (size_t i = 0; i < weff->n; i++) mismatch += weff->data[i] != w_eff->data[i];
    print_message("  %sw_eff            %d of %zu entries differ\n", prefix, mismatch, weff->n);
    assert_true(mismatch <= W_EFF_MAX_MISMATCH);
    assert_rel_l2(weff->data, w_eff->data, weff->n, TOL_OUT);

    x->requires_grad = 1;
    Tensor *out = qlayer_forward(c, &q, x);
    if (!out) print_error("%s\n", c->err.msg);
    assert_non_null(out);
    assert_int_equal(out->n, out_ref->n);
    report(prefix, "out", out->data, out_ref->data, out->n);
    assert_rel_l2(out->data, out_ref->data, out->n, TOL_OUT);
    assert_int_equal(tape_backward(c, out, G->data), 0);

    report(prefix, "dx", x->grad, dx_ref->data, x->n);
    report(prefix, "d_lora_A", q.lora_a.grad, dA_ref->data, dA_ref->n);
    report(prefix, "d_lora_B", q.lora_b.grad, dB_ref->data, dB_ref->n);
    report(prefix, "d_w_delta", q.wq.delta.grad, dwd_ref->data, dwd_ref->n);
    report(prefix, "d_w_delta_base", q.w_delta_base.grad, dwb_ref->data, dwb_ref->n);
    report(prefix, "d_w_zero_point", dwz, dwz_ref->data, dwz_ref->n);
    report(prefix, "d_a_delta_list", q.aq.delta.grad, dad_ref->data, dad_ref->n);
    report(prefix, "d_a_zp_list", q.aq.zero.grad, daz_ref->data, daz_ref->n);
    assert_rel_l2(x->grad, dx_ref->data, x->n, TOL_GRAD);
    assert_rel_l2(q.lora_a.grad, dA_ref->data, dA_ref->n, TOL_GRAD);
    assert_rel_l2(q.lora_b.grad, dB_ref->data, dB_ref->n, TOL_GRAD);
    assert_rel_l2(q.wq.delta.grad, dwd_ref->data, dwd_ref->n, TOL_GRAD);
    assert_rel_l2(q.w_delta_base.grad, dwb_ref->data, dwb_ref->n, TOL_GRAD);
    assert_rel_l2(dwz, dwz_ref->data, dwz_ref->n, TOL_GRAD);
    assert_rel_l2(q.aq.delta.grad, dad_ref->data, dad_ref->n, TOL_GRAD);
    assert_rel_l2(q.aq.zero.grad, daz_ref->data, daz_ref->n, TOL_GRAD);
    // only the active entry moves
    for (int i = 0; i < FIXTURE_ENTRIES; i++) {
        if (i == FIXTURE_STEP) continue;
        assert_float_equal(q.aq.delta.grad[i], 0.0f, 0.0f);
        assert_float_equal(q.aq.zero.grad[i], 0.0f, 0.0f);
    }

    q.wq.zero.grad = NULL;
    q.wq.zero.requires_grad = 0;
    free(dwz);
    qlayer_free(&q);
    layer_release(&l);
    test_ctx_delete(c);
    test_ctx_delete(d);
}

static void test_fixture_conv(void **state) {
    run_fixture("conv_", LAYER_CONV2D, 0);
    run_fixture("conv_", LAYER_CONV2D, 1);
}
static void test_fixture_linear(void **state) {
    run_fixture("linear_", LAYER_LINEAR, 0);
    run_fixture("linear_", LAYER_LINEAR, 1);
}

/* ---- helpers for synthetic layers ------------------------------------------------ */

static void random_layer(ModelLayer *l, LayerKind kind, const char *name, int cout, int cin, int k, int stride,
                         int pad, Rng *r) {
    Ctx *d = test_ctx_new((size_t)1 << 22);
    Tensor *w = kind == LAYER_LINEAR ? tensor_new2(d, cout, cin) : tensor_new4(d, cout, cin, k, k);
    Tensor *b = tensor_new1(d, cout);
    rng_normal_fill(r, w->data, w->n);
    rng_normal_fill(r, b->data, b->n);
    for (size_t i = 0; i < w->n; i++) w->data[i] *= 0.2f;
    layer_make(l, kind, name, w, b, stride, pad);
    test_ctx_delete(d);
}

// A random stride-1 layer (random_layer, r seeded with seed) and its QLayer with the default
// config but for rank and the number of time entries (0: the default); r goes on for the caller's draws.
static void random_qlayer(QLayer *q, ModelLayer *l, Rng *r, uint64_t seed, LayerKind kind, const char *name,
                          int cout, int cin, int k, int pad, int rank, int n_entries) {
    rng_seed(r, seed, 0);
    random_layer(l, kind, name, cout, cin, k, 1, pad, r);
    QLayerConfig cfg;
    qlayer_config_defaults(&cfg);
    cfg.rank = rank;
    if (n_entries) cfg.n_entries = n_entries;
    Err e = {0};
    assert_int_equal(qlayer_init(q, l, &cfg, NULL, NULL, r, &e), 0);
}

// Closed form of the naive PTQ weight: per channel 'max' range in double, round half to even.
static void naive_ptq_ref(float *y, const float *w, int cout, size_t k, int bits) {
    int L = (1 << bits) - 1;
    for (int o = 0; o < cout; o++) {
        double lo = 0, hi = 0;
        for (size_t j = 0; j < k; j++) {
            lo = fmin(lo, w[o * k + j]);
            hi = fmax(hi, w[o * k + j]);
        }
        double dd = (hi - lo) / L;
        float delta = (float)dd, z = (float)nearbyint(-lo / dd);
        for (size_t j = 0; j < k; j++) {
            float v = nearbyintf(w[o * k + j] / delta) + z;
            v = v < 0 ? 0 : (v > L ? (float)L : v);
            y[o * k + j] = (v - z) * delta;
        }
    }
}

/* ---- LoRA initialisation, start at naive PTQ ------------------------------------- */

static void test_init_is_naive_ptq(void **state) {
    Rng r;
    rng_seed(&r, 11, 0);
    const int cout = 6, cin = 5, k = 3;
    ModelLayer l;
    random_layer(&l, LAYER_CONV2D, "input_blocks.1.0.in_layers.2", cout, cin, k, 1, 1, &r);
    QLayerConfig cfg;
    qlayer_config_defaults(&cfg);
    QLayer q;
    Err e = {0};
    assert_int_equal(qlayer_init(&q, &l, &cfg, NULL, NULL, &r, &e), 0);
    assert_int_equal(q.rank, 32);  // rank 32 although 32 > Cout: the reference does not clip it
    // A ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = Cin k k; B = 0
    double bound = 1.0 / sqrt((double)(cin * k * k)), amax = 0, mean = 0;
    for (size_t i = 0; i < q.lora_a.n; i++) {
        assert_true(fabs(q.lora_a.data[i]) <= bound);
        amax = fmax(amax, fabs(q.lora_a.data[i]));
        mean += q.lora_a.data[i];
    }
    mean /= (double)q.lora_a.n;
    assert_true(amax > 0.95 * bound);
    assert_true(fabs(mean) < 0.05 * bound);
    assert_int_equal(q.lora_a.shape[0], 32);
    assert_int_equal(q.lora_a.shape[1], cin);
    assert_int_equal(q.lora_b.shape[0], cout);
    assert_int_equal(q.lora_b.shape[1], 32);
    for (size_t i = 0; i < q.lora_b.n; i++) assert_float_equal(q.lora_b.data[i], 0.0f, 0.0f);
    // W_eff of a fresh layer is the naive PTQ weight
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *weff = qlayer_weight(c, &q);
    assert_non_null(weff);
    float *ref = malloc(l.weight.n * sizeof(float));
    naive_ptq_ref(ref, l.weight.data, cout, l.weight.n / cout, 4);
    for (size_t i = 0; i < l.weight.n; i++) assert_float_equal(weff->data[i], ref[i], 0.0f);
    free(ref);
    test_ctx_delete(c);
    qlayer_free(&q);
    layer_release(&l);
}

/* ---- the smooth part: W_base + B·A against finite differences --------------------- */

static Tensor *f_prequant(Ctx *c, Tensor *const *in, void *user) { return qlayer_weight_prequant(c, user); }

static void gradcheck_prequant(LayerKind kind) {
    Rng r;
    ModelLayer l;
    QLayer q;
    random_qlayer(&q, &l, &r, 12, kind, "middle_block.0.in_layers.2", 5, 4, 3, 1, 3, 0);
    rng_normal_fill(&r, q.lora_b.data, q.lora_b.n);
    Tensor *in[3] = {&q.lora_a, &q.lora_b, &q.w_delta_base};
    gradcheck(f_prequant, in, 3, &q, (GradcheckOpts){.eps = 1e-2, .tol = TOL_GRADCHECK});
    qlayer_free(&q);
    layer_release(&l);
}

static void test_gradcheck_lora_path(void **state) {
    gradcheck_prequant(LAYER_CONV2D);
    gradcheck_prequant(LAYER_LINEAR);
}

/* ---- the weight path rebuilt in backward: the same bits as the two ops ------------ */

// Forward + backward of q on x with gradient G at TALSQ entry 1; out[0] = the output, then dx
// and the layer's trainable gradients, concatenated (n floats, returned). arena_kept: the
// arena's growth over the forward. mode 0: the two weight ops; 1: the op rebuilt in backward;
// 2: the weight computed before (qlayer_weight_step), a leaf on the tape, its backward after.
static size_t layer_step(QLayer *q, int mode, const float *x0, int ndim, const int *shape, float *out,
                         size_t *arena_kept) {
    int recompute = mode == 1;
    size_t nw = q->layer->weight.n;
    float *pre = NULL, *eff = NULL, *deff = NULL, *dpre = NULL;
    if (mode == 2) {
        pre = malloc(nw * sizeof(float));
        eff = malloc(nw * sizeof(float));
        deff = calloc(nw, sizeof(float));
        dpre = malloc(nw * sizeof(float));
        qlayer_weight_step(q, pre, eff);
        qlayer_use_step_weight(q, eff, deff);
    }
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Err e = {0};
    assert_int_equal(ctx_pool_grads(c, (size_t)1 << 24, &e), 0);
    q->recompute = recompute;
    Tensor *t[QLAYER_MAX_SLOTS];
    int nt = qlayer_trainable(q, t);
    for (int i = 0; i < nt; i++) memset(t[i]->grad, 0, t[i]->n * sizeof(float));
    Tensor *x = tensor_from(c, x0, ndim, shape);
    x->requires_grad = 1;
    size_t before = c->arena.used;
    Tensor *y = qlayer_forward(c, q, x);
    assert_non_null(y);
    *arena_kept = c->arena.used - before;
    if (recompute) assert_int_equal(c->grad_pool.live, 0);  // W_eff dropped after the conv / linear
    Rng r;
    rng_seed(&r, 99, 0);
    float *G = malloc(y->n * sizeof(float));
    rng_normal_fill(&r, G, y->n);
    size_t n = 0;
    memcpy(out, y->data, y->n * sizeof(float));
    n += y->n;
    assert_int_equal(tape_backward(c, y, G), 0);
    if (mode == 2) {
        qlayer_weight_step_backward(c, q, deff, pre, dpre);
        qlayer_use_step_weight(q, NULL, NULL);
        free(pre);
        free(eff);
        free(deff);
        free(dpre);
    }
    memcpy(out + n, x->grad, x->n * sizeof(float));
    n += x->n;
    for (int i = 0; i < nt; i++) {
        memcpy(out + n, t[i]->grad, t[i]->n * sizeof(float));
        n += t[i]->n;
    }
    free(G);
    test_ctx_delete(c);
    return n;
}

// The two weight ops, the op rebuilt in backward and the weight path once per step: the same
// output and gradients, byte for byte.
static void recompute_case(LayerKind kind, int rank) {
    Rng r;
    ModelLayer l;
    QLayer q;
    const int cout = 7, cin = 6, k = 3;
    random_qlayer(&q, &l, &r, 21 + rank, kind, "middle_block.0.in_layers.2", cout, cin, k, 1, rank, 4);
    if (rank) rng_normal_fill(&r, q.lora_b.data, q.lora_b.n);
    for (size_t i = 0; i < q.lora_b.n; i++) q.lora_b.data[i] *= 0.05f;
    qlayer_set_act(&q, 0.3f, 7.0f);
    int entry = 1;
    q.entry = &entry;
    int shape_c[4] = {2, cin, 5, 5}, shape_l[2] = {9, cin};
    int *shape = kind == LAYER_LINEAR ? shape_l : shape_c, ndim = kind == LAYER_LINEAR ? 2 : 4;
    size_t nx = tensor_shape_numel(ndim, shape), cap = 4 * (nx + l.weight.n * 4 + 1024);
    float *x = malloc(nx * sizeof(float)), *a = malloc(cap * sizeof(float)), *b = malloc(cap * sizeof(float));
    float *s = malloc(cap * sizeof(float));
    rng_normal_fill(&r, x, nx);
    size_t kept_two, kept_one, kept_step;
    size_t na = layer_step(&q, 0, x, ndim, shape, a, &kept_two);
    size_t nb = layer_step(&q, 1, x, ndim, shape, b, &kept_one);
    size_t ns = layer_step(&q, 2, x, ndim, shape, s, &kept_step);
    assert_int_equal(na, nb);
    assert_memory_equal(a, b, na * sizeof(float));
    assert_int_equal(na, ns);  // one slot: the step's weight path is the same computation
    assert_memory_equal(a, s, na * sizeof(float));
    free(s);
    // the two weight-sized values (W_base + B·A and W_eff) no longer stay from forward to backward
    assert_true(kept_one + 2 * l.weight.n * sizeof(float) <= kept_two);
    free(x);
    free(a);
    free(b);
    qlayer_free(&q);
    layer_release(&l);
}

static void test_recompute_matches_two_ops(void **state) {
    recompute_case(LAYER_CONV2D, 3);
    recompute_case(LAYER_LINEAR, 3);
    recompute_case(LAYER_CONV2D, 0);  // no LoRA: the decode alone
}

/* ---- special layers ------------------------------------------------------------ */

static void test_special_layer(void **state) {
    Rng r;
    rng_seed(&r, 13, 0);
    const int cout = 4, cin = 3;
    ModelLayer l;
    random_layer(&l, LAYER_CONV2D, "input_blocks.0.0", cout, cin, 3, 2, 1, &r);  // stride 2
    QLayerConfig cfg;
    qlayer_config_defaults(&cfg);
    cfg.special = 1;
    cfg.w_bits = cfg.a_bits = 8;
    size_t np = 1, ng = 1;
    Err e = {0};
    assert_int_equal(qlayer_sizes(&l, &cfg, &np, &ng, &e), 0);
    assert_int_equal(np, 0);  // nothing trained
    assert_int_equal(ng, 0);
    QLayer q;
    assert_int_equal(qlayer_init(&q, &l, &cfg, NULL, NULL, &r, &e), 0);
    Tensor *t[QLAYER_MAX_SLOTS];
    assert_int_equal(qlayer_trainable(&q, t), 0);
    qlayer_set_act(&q, 0.05f, 128.0f);
    qlayer_attach(&q);

    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *x = tensor_new4(c, 2, cin, 7, 7);
    rng_normal_fill(&r, x->data, x->n);
    int entry = 3;  // ignored: a special layer has one static (Δ, z)
    q.entry = &entry;
    Tensor *out = layer_forward(c, &l, x);
    assert_non_null(out);
    // closed form: conv2d(q_a(x), q_w(W)), 8-bit 'max' weights, static activation range
    Tensor *xq = tensor_new4(c, 2, cin, 7, 7);
    for (size_t i = 0; i < x->n; i++) {
        float v = nearbyintf(x->data[i] / 0.05f) + 128.0f;
        v = v < 0 ? 0 : (v > 255 ? 255 : v);
        xq->data[i] = (v - 128.0f) * 0.05f;
    }
    Tensor *wq = tensor_new4(c, cout, cin, 3, 3);
    naive_ptq_ref(wq->data, l.weight.data, cout, l.weight.n / cout, 8);
    Tensor *ref = t_conv2d(c, xq, wq, &l.bias, 2, 1);
    assert_int_equal(out->n, ref->n);
    assert_rel_l2(out->data, ref->data, out->n, 1e-6);
    assert_int_equal(c->n_nodes, 0);  // nothing requires a gradient: nothing recorded
    qlayer_free(&q);
    assert_null(l.quant_forward);  // free detaches
    test_ctx_delete(c);
    layer_release(&l);
}

/* ---- calibration, entries, errors ---------------------------------------------- */

typedef struct {
    int calls;
    size_t n;
} HookLog;

static void hook(void *user, QLayer *q, const Tensor *x) {
    HookLog *h = user;
    h->calls++;
    h->n = x->n;
}

static void test_calibration_and_entries(void **state) {
    Rng r;
    ModelLayer l;
    QLayer q;
    random_qlayer(&q, &l, &r, 14, LAYER_LINEAR, "time_embed.2", 6, 10, 1, 0, 2, 4);
    qlayer_attach(&q);
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *x = tensor_new2(c, 8, 10);
    rng_normal_fill(&r, x->data, x->n);

    // before calibration: an error naming the layer
    assert_null(layer_forward(c, &l, x));
    assert_int_equal(c->err.code, ERR_VALUE);
    assert_non_null(strstr(c->err.msg, "time_embed.2"));
    ctx_reset(c);
    x = tensor_new2(c, 8, 10);
    rng_normal_fill(&r, x->data, x->n);

    // calibration fits 'mse' on the received input, into every entry; the hook sees it first
    HookLog log = {0};
    q.calib_hook = hook;
    q.calib_user = &log;
    q.calib = QCALIB_FIT;
    assert_non_null(layer_forward(c, &l, x));
    q.calib = QCALIB_OFF;
    assert_int_equal(log.calls, 1);
    assert_int_equal(log.n, x->n);
    float dref, zref;
    quant_uniform_fit_mse(x->data, x->n, 4, NULL, &dref, &zref);
    for (int i = 0; i < 4; i++) {
        assert_float_equal(q.aq.delta.data[i], dref, 0.0f);
        assert_float_equal(q.aq.zero.data[i], zref, 0.0f);
    }

    // entries: the driver's int selects; only that entry receives gradient
    int entry = 2;
    q.entry = &entry;
    q.aq.delta.data[2] *= 0.5f;  // entry 2 differs from the others
    x->requires_grad = 1;
    Tensor *y2 = layer_forward(c, &l, x);
    assert_non_null(y2);
    Tensor *g = tensor_new(c, y2->ndim, y2->shape);
    rng_normal_fill(&r, g->data, g->n);
    assert_int_equal(tape_backward(c, y2, g->data), 0);
    for (int i = 0; i < 4; i++) {
        if (i == 2) {
            assert_true(q.aq.delta.grad[i] != 0.0f);
        } else {
            assert_float_equal(q.aq.delta.grad[i], 0.0f, 0.0f);
            assert_float_equal(q.aq.zero.grad[i], 0.0f, 0.0f);
        }
    }
    entry = 1;
    Tensor *y1 = layer_forward(c, &l, x);
    int differ = 0;
    for (size_t i = 0; i < y1->n; i++) differ += y1->data[i] != y2->data[i];
    assert_true(differ > 0);
    entry = 4;  // out of range
    assert_null(layer_forward(c, &l, x));
    assert_non_null(strstr(c->err.msg, "entry 4"));

    test_ctx_delete(c);
    qlayer_free(&q);
    layer_release(&l);
}

static void test_bad_layers(void **state) {
    Rng r;
    rng_seed(&r, 15, 0);
    ModelLayer l;
    random_layer(&l, LAYER_CONV2D, "input_blocks.4.1.qkv", 6, 4, 1, 1, 0, &r);
    l.kind = LAYER_CONV1D;
    QLayerConfig cfg;
    qlayer_config_defaults(&cfg);
    QLayer q;
    Err e = {0};
    assert_int_equal(qlayer_init(&q, &l, &cfg, NULL, NULL, &r, &e), ERR_VALUE);
    assert_non_null(strstr(e.msg, "input_blocks.4.1.qkv"));
    l.kind = LAYER_CONV2D;
    cfg.w_bits = 9;
    memset(&e, 0, sizeof e);
    assert_int_equal(qlayer_init(&q, &l, &cfg, NULL, NULL, &r, &e), ERR_VALUE);
    qlayer_free(&q);  // a failed init leaves a zeroed layer
    layer_release(&l);
}

/* ---- merge / export, gradient binding --------------------------------------------- */

static void test_merge_export(void **state) {
    Rng r;
    rng_seed(&r, 16, 0);
    const int cout = 5, cin = 3;
    ModelLayer l;
    random_layer(&l, LAYER_CONV2D, "output_blocks.2.0.out_layers.3", cout, cin, 3, 1, 1, &r);
    QLayerConfig cfg;
    qlayer_config_defaults(&cfg);
    cfg.rank = 4;
    cfg.n_entries = 3;
    QLayer q;
    Err e = {0};
    assert_int_equal(qlayer_init(&q, &l, &cfg, NULL, NULL, &r, &e), 0);
    rng_normal_fill(&r, q.lora_b.data, q.lora_b.n);  // a "trained" LoRA
    for (size_t i = 0; i < q.lora_b.n; i++) q.lora_b.data[i] *= 0.05f;
    q.wq.delta.data[1] *= 1.1f;                      // and a trained Δ_w

    uint8_t *lv = malloc(l.weight.n);
    assert_int_equal(qlayer_merge(&q, lv, &e), 0);
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *weff = qlayer_weight(c, &q);
    size_t K = l.weight.n / cout;
    for (size_t i = 0; i < l.weight.n; i++) {
        int o = (int)(i / K);
        assert_true(lv[i] <= 15);
        float dq = ((float)lv[i] - q.wq.zero.data[o]) * q.wq.delta.data[o];
        assert_float_equal(dq, weff->data[i], 0.0f);  // the integers ARE W_eff
    }
    // activation export rounds z half to even
    const float zs[3] = {2.5f, 3.5f, -0.4f};
    for (int i = 0; i < 3; i++) {
        q.aq.delta.data[i] = 0.1f * (float)(i + 1);
        q.aq.zero.data[i] = zs[i];
    }
    float d[3], z[3];
    qlayer_export_act(&q, d, z);
    assert_float_equal(z[0], 2.0f, 0.0f);
    assert_float_equal(z[1], 4.0f, 0.0f);
    assert_float_equal(z[2], 0.0f, 0.0f);
    assert_float_equal(d[2], 0.3f, 0.0f);
    assert_float_equal(q.aq.zero.data[0], 2.5f, 0.0f);  // the trained table is untouched

    // gradients rebound into a caller's flat block, in the documented order
    size_t np, ng;
    assert_int_equal(qlayer_sizes(&l, &cfg, &np, &ng, &e), 0);
    assert_int_equal(np, 4 * K + cout * 4 + cout + 2 * 3);
    assert_int_equal(ng, np + cout);
    float *block = malloc(ng * sizeof(float));
    qlayer_bind_grads(&q, block);
    assert_ptr_equal(q.lora_a.grad, block);
    assert_ptr_equal(q.lora_b.grad, block + 4 * K);
    assert_ptr_equal(q.wq.delta.grad, block + 4 * K + 4 * cout);
    assert_ptr_equal(q.w_delta_base.grad, block + 4 * K + 5 * cout);
    assert_ptr_equal(q.w_delta_base.data, q.wq.delta.data);  // one Δ_w, two gradients
    assert_ptr_equal(q.aq.delta.grad, block + 4 * K + 6 * cout);
    assert_ptr_equal(q.aq.zero.grad, block + 4 * K + 6 * cout + 3);

    free(block);
    free(lv);
    test_ctx_delete(c);
    qlayer_free(&q);
    layer_release(&l);
}

int main(void) {
    threads_set(0);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_fixture_conv),
        cmocka_unit_test(test_fixture_linear),
        cmocka_unit_test(test_init_is_naive_ptq),
        cmocka_unit_test(test_gradcheck_lora_path),
        cmocka_unit_test(test_recompute_matches_two_ops),
        cmocka_unit_test(test_special_layer),
        cmocka_unit_test(test_calibration_and_entries),
        cmocka_unit_test(test_bad_layers),
        cmocka_unit_test(test_merge_export),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
