/* test_ops_pointwise.c: element-wise ops with broadcasting (add, sub, mul, scale,
   add_scalar), activations (silu, gelu, relu, geglu) and softmax.
   Forward values against naive loops written here (in double where the op is not exact),
   every input's backward against finite differences (gradcheck) and, on tensors big enough
   to take the threaded paths, against naive gradient loops; bit-identical across runs and
   thread counts. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/threads.h"

static const double TOL_EXACT = 0.0;      // add/sub/mul in float: the same single rounding
static const double TOL_FORWARD = 1e-6;   // float op vs the closed form in double
static const double TOL_BWD_REF = 1e-6;   // our double-accumulated gradient vs a naive double loop
static const double TOL_GRAD = 1e-2;      // float32 forward, central differences, eps 1e-3
static const double KINK = 1e-3;          // relu: skip elements within eps of 0

static Tensor *rand_tensor(Ctx *c, int ndim, const int *shape, Rng *r, float scale) {
    Tensor *t = test_tensor_normal(c, ndim, shape, r);
    for (size_t i = 0; i < t->n; i++) t->data[i] *= scale;
    return t;
}

/* ---- broadcasting: naive reference -------------------------------------------------- */

typedef struct {
    int ndim, shape[TENSOR_MAX_DIMS];
} Shape;

// Output shape of a, b under numpy rules (both valid).
static Shape ref_bshape(const Tensor *a, const Tensor *b) {
    Shape s;
    s.ndim = a->ndim > b->ndim ? a->ndim : b->ndim;
    for (int i = 0; i < s.ndim; i++) {
        int ia = i - (s.ndim - a->ndim), ib = i - (s.ndim - b->ndim);
        int da = ia >= 0 ? a->shape[ia] : 1, db = ib >= 0 ? b->shape[ib] : 1;
        s.shape[i] = da == 1 ? db : da;
    }
    return s;
}

// Flat index into t of the output multi-index idx (ndim dims, right-aligned).
static size_t ref_index(const Tensor *t, const int *idx, int ndim) {
    size_t off = 0;
    for (int d = 0; d < t->ndim; d++) {
        int i = idx[d + ndim - t->ndim];
        off = off * (size_t)t->shape[d] + (size_t)(t->shape[d] == 1 ? 0 : i);
    }
    return off;
}

static void ref_unravel(size_t k, const Shape *s, int *idx) {
    for (int d = s->ndim - 1; d >= 0; d--) {
        idx[d] = (int)(k % (size_t)s->shape[d]);
        k /= (size_t)s->shape[d];
    }
}

static void ref_binary(int op, const Tensor *a, const Tensor *b, float *out, size_t n, const Shape *s) {
    for (size_t k = 0; k < n; k++) {
        int idx[TENSOR_MAX_DIMS];
        ref_unravel(k, s, idx);
        float x = a->data[ref_index(a, idx, s->ndim)], y = b->data[ref_index(b, idx, s->ndim)];
        out[k] = op == OP_ADD ? x + y : op == OP_SUB ? x - y : x * y;
    }
}

// Naive gradients of sum(out * g): da, db zero-filled doubles.
static void ref_binary_grad(int op, const Tensor *a, const Tensor *b, const float *g, size_t n, const Shape *s,
                            double *da, double *db) {
    for (size_t k = 0; k < n; k++) {
        int idx[TENSOR_MAX_DIMS];
        ref_unravel(k, s, idx);
        size_t ia = ref_index(a, idx, s->ndim), ib = ref_index(b, idx, s->ndim);
        double ga = g[k], gb = op == OP_SUB ? -(double)g[k] : g[k];
        if (op == OP_MUL) {
            ga *= b->data[ib];
            gb *= a->data[ia];
        }
        da[ia] += ga;
        db[ib] += gb;
    }
}

static Tensor *apply_binary(Ctx *c, int op, Tensor *a, Tensor *b) {
    return op == OP_ADD ? t_add(c, a, b) : op == OP_SUB ? t_sub(c, a, b) : t_mul(c, a, b);
}

typedef struct {
    int na, a[TENSOR_MAX_DIMS], nb, b[TENSOR_MAX_DIMS];
} ShapePair;

static const ShapePair SMALL_PAIRS[] = {
    {4, {2, 3, 4, 5}, 4, {2, 3, 4, 5}},  // same shape
    {4, {2, 3, 4, 5}, 4, {2, 3, 1, 1}},  // (N, C, 1, 1): time embedding over a feature map
    {4, {2, 3, 4, 5}, 3, {3, 1, 1}},     // (C, 1, 1)
    {2, {6, 7}, 1, {7}},                 // row vector
    {3, {2, 3, 4}, 1, {1}},              // scalar-like
    {1, {1}, 2, {2, 3}},                 // scalar-like on the left
    {3, {2, 1, 4}, 2, {3, 1}},           // both broadcast -> (2, 3, 4)
    {5, {5, 1, 1, 1, 3}, 3, {4, 2, 1}},  // 5 dims -> (5, 1, 4, 2, 3)
    {3, {3, 1, 5}, 3, {1, 4, 5}},        // outer broadcast on each side
};

// Forward against the naive loop, and backward against naive gradient sums.
static void check_binary(Ctx *c, int op, const ShapePair *p, Rng *r) {
    ctx_reset(c);
    Tensor *a = rand_tensor(c, p->na, p->a, r, 1.0f), *b = rand_tensor(c, p->nb, p->b, r, 1.0f);
    a->requires_grad = b->requires_grad = 1;  // per-step tensors: gradients allocated by backward
    Tensor *y = apply_binary(c, op, a, b);
    assert_non_null(y);
    Shape s = ref_bshape(a, b);
    assert_int_equal(y->ndim, s.ndim);
    for (int i = 0; i < s.ndim; i++) assert_int_equal(y->shape[i], s.shape[i]);
    float *ref = malloc(y->n * sizeof(float)), *g = malloc(y->n * sizeof(float));
    ref_binary(op, a, b, ref, y->n, &s);
    assert_rel_l2(y->data, ref, y->n, TOL_EXACT);

    rng_normal_fill(r, g, y->n);
    assert_int_equal(tape_backward(c, y, g), 0);
    double *da = calloc(a->n, sizeof(double)), *db = calloc(b->n, sizeof(double));
    ref_binary_grad(op, a, b, g, y->n, &s, da, db);
    float *fa = malloc(a->n * sizeof(float)), *fb = malloc(b->n * sizeof(float));
    for (size_t i = 0; i < a->n; i++) fa[i] = (float)da[i];
    for (size_t i = 0; i < b->n; i++) fb[i] = (float)db[i];
    assert_rel_l2(a->grad, fa, a->n, TOL_BWD_REF);
    assert_rel_l2(b->grad, fb, b->n, TOL_BWD_REF);
    free(ref);
    free(g);
    free(da);
    free(db);
    free(fa);
    free(fb);
}

static void test_broadcast_forward_backward_small(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 11, 0);
    for (size_t k = 0; k < sizeof SMALL_PAIRS / sizeof SMALL_PAIRS[0]; k++)
        for (int op = OP_ADD; op <= OP_MUL; op++) check_binary(c, op, &SMALL_PAIRS[k], &r);
    ctx_free(c);
}

// Sizes past the threading threshold, so the parallel loops and chunked sums run.
static const ShapePair LARGE_PAIRS[] = {
    {4, {4, 64, 16, 16}, 4, {4, 64, 16, 16}},
    {4, {4, 64, 16, 16}, 4, {4, 64, 1, 1}},
    {4, {4, 64, 16, 16}, 3, {64, 1, 1}},
    {2, {2048, 320}, 1, {320}},
    {1, {100003}, 1, {1}},
    {3, {64, 1, 700}, 2, {40, 1}},
};

static void test_broadcast_large(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 12, 0);
    for (size_t k = 0; k < sizeof LARGE_PAIRS / sizeof LARGE_PAIRS[0]; k++)
        for (int op = OP_ADD; op <= OP_MUL; op++) check_binary(c, op, &LARGE_PAIRS[k], &r);
    ctx_free(c);
}

static void test_broadcast_shape_error(void **state) {
    Ctx *c = test_ctx_static();
    Tensor *a = tensor_zeros(c, 2, (int[]){2, 3}), *b = tensor_zeros(c, 1, (int[]){4});
    assert_null(t_add(c, a, b));
    assert_int_equal(c->err.code, ERR_SHAPE);
    assert_non_null(strstr(c->err.msg, "(2, 3)"));
    assert_non_null(strstr(c->err.msg, "(4)"));
    ctx_free(c);
}

static Tensor *f_binary(Ctx *c, Tensor *const *in, void *u) { return apply_binary(c, *(int *)u, in[0], in[1]); }

static void test_broadcast_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 13, 0);
    for (size_t k = 0; k < sizeof SMALL_PAIRS / sizeof SMALL_PAIRS[0]; k++) {
        const ShapePair *p = &SMALL_PAIRS[k];
        Tensor *a = test_param_new(p->na, p->a, 1, &r, 1.0f), *b = test_param_new(p->nb, p->b, 1, &r, 1.0f);
        Tensor *in[2] = {a, b};
        for (int op = OP_ADD; op <= OP_MUL; op++) gradcheck(f_binary, in, 2, &op, (GradcheckOpts){.tol = TOL_GRAD});
        test_param_free(a);
        test_param_free(b);
    }
}

static void test_mul_same_input_and_frozen(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 14, 0);
    Tensor *x = test_param_new(1, (int[]){5}, 1, &r, 1.0f), *frozen = test_param_new(1, (int[]){5}, 0, &r, 1.0f);
    // x * x: both input slots are x, so its gradient is 2 x g
    Tensor *y = t_mul(c, x, x);
    float g[5] = {1, -2, 3, 0.5f, 1};
    assert_int_equal(tape_backward(c, y, g), 0);
    for (int i = 0; i < 5; i++) assert_float_equal(x->grad[i], 2 * x->data[i] * g[i], 1e-6);
    // frozen operand: no node, no gradient buffer
    ctx_reset(c);
    assert_non_null(t_add(c, frozen, frozen));
    assert_int_equal(c->n_nodes, 0);
    assert_null(frozen->grad);
    test_param_free(x);
    test_param_free(frozen);
    ctx_free(c);
}

static void test_scale_add_scalar(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 15, 0);
    Tensor *x = rand_tensor(c, 2, (int[]){3, 50000}, &r, 1.0f);
    Tensor *y = t_scale(c, x, -1.5f), *z = t_add_scalar(c, x, 0.25f);
    for (size_t i = 0; i < x->n; i++) {
        assert_true(y->data[i] == -1.5f * x->data[i]);
        assert_true(z->data[i] == x->data[i] + 0.25f);
    }
    ctx_free(c);
}

static Tensor *f_scale(Ctx *c, Tensor *const *in, void *u) { return t_scale(c, in[0], -1.5f); }
static Tensor *f_add_scalar(Ctx *c, Tensor *const *in, void *u) { return t_add_scalar(c, in[0], 3.0f); }

static void test_scale_add_scalar_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 16, 0);
    Tensor *p = test_param_new(2, (int[]){3, 4}, 1, &r, 1.0f);
    Tensor *in[1] = {p};
    gradcheck(f_scale, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_add_scalar, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(p);
}

/* ---- activations ---------------------------------------------------------------------- */

static double ref_silu(double x) { return x / (1.0 + exp(-x)); }
static double ref_gelu(double x) { return 0.5 * x * (1.0 + erf(x / sqrt(2.0))); }

static void test_activation_forward(void **state) {
    Ctx *c = test_ctx_static();
    int n = 40001;  // past the threading threshold
    Tensor *x = tensor_new1(c, n);
    for (int i = 0; i < n; i++) x->data[i] = -8.0f + 16.0f * (float)i / (float)(n - 1);
    Tensor *ys = t_silu(c, x), *yg = t_gelu(c, x), *yr = t_relu(c, x);
    float *rs = malloc(n * sizeof(float)), *rg = malloc(n * sizeof(float)), *rr = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) {
        rs[i] = (float)ref_silu(x->data[i]);
        rg[i] = (float)ref_gelu(x->data[i]);
        rr[i] = x->data[i] > 0 ? x->data[i] : 0.0f;
    }
    assert_rel_l2(ys->data, rs, n, TOL_FORWARD);
    assert_rel_l2(yg->data, rg, n, TOL_FORWARD);
    assert_rel_l2(yr->data, rr, n, TOL_EXACT);
    // a few points in absolute terms (the L2 above is dominated by large |x|)
    for (int i = 0; i < n; i += 997) {
        assert_true(fabs(ys->data[i] - ref_silu(x->data[i])) <= 1e-6 * (1 + fabs(ref_silu(x->data[i]))));
        assert_true(fabs(yg->data[i] - ref_gelu(x->data[i])) <= 1e-6 * (1 + fabs(ref_gelu(x->data[i]))));
    }
    free(rs);
    free(rg);
    free(rr);
    ctx_free(c);
}

/* SiLU and GELU (autograd/ops/fastmath.h's exp, sigmoid and normal CDF, not libm's) against
   double-precision closed forms on a dense grid over [-30, 30], forward and backward (the
   derivative through tape_backward with output gradient 1). Bound: 8e-7 relative, also in
   GELU's far negative tail (libm's 1 + erff(x / sqrt 2) cancels to 0 there);
   the derivatives relative to the size of their two terms (each crosses 0, where a
   relative bound on the sum would measure cancellation, not the op). */
static void test_activation_dense(void **state) {
    Ctx *c = test_ctx_static();
    const int n = 600001;
    Tensor *x = tensor_new1(c, n);
    for (int i = 0; i < n; i++) x->data[i] = -30.0f + 60.0f * (float)i / (float)(n - 1);
    x->requires_grad = 1;
    Tensor *ys = t_silu(c, x), *yg = t_gelu(c, x);
    float *one = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) one[i] = 1.0f;
    assert_int_equal(tape_backward(c, t_add(c, ys, yg), one), 0);
    double worst_f = 0, worst_b = 0;
    for (int i = 0; i < n; i++) {
        double v = x->data[i], s = 1.0 / (1.0 + exp(-v));
        double cdf = 0.5 * erfc(-v / sqrt(2.0)), pdf = exp(-0.5 * v * v) / sqrt(2.0 * 3.14159265358979323846);
        double es = fabs(ys->data[i] - v * s) / (8e-7 * fabs(v * s) + 1e-30);
        double eg = fabs(yg->data[i] - v * cdf) / (8e-7 * fabs(v * cdf) + 1e-30);
        // d/dx silu + d/dx gelu, each bounded by its terms
        double db = fabs(x->grad[i] - (s * (1 + v * (1 - s)) + cdf + v * pdf)) /
                    (8e-7 * (s + fabs(v) * s * (1 - s) + cdf + fabs(v) * pdf) + 1e-30);
        worst_f = fmax(worst_f, fmax(es, eg));
        worst_b = fmax(worst_b, db);
        if (es > 1 || eg > 1 || db > 1)
            fail_msg("x = %.9g: silu %.9g (ref %.9g), gelu %.9g (ref %.9g), grad %.9g", v, ys->data[i], v * s,
                     yg->data[i], v * cdf, x->grad[i]);
    }
    print_message("  worst error / bound: forward %.3f, backward %.3f\n", worst_f, worst_b);
    free(one);
    ctx_free(c);
}

static void test_relu_grad_at_zero(void **state) {
    Ctx *c = test_ctx_static();
    Tensor *x = tensor_from(c, (float[]){-1.0f, 0.0f, 2.0f}, 1, (int[]){3});
    x->requires_grad = 1;
    Tensor *y = t_relu(c, x);
    assert_int_equal(tape_backward(c, y, (float[]){1, 1, 1}), 0);
    assert_true(x->grad[0] == 0.0f && x->grad[1] == 0.0f && x->grad[2] == 1.0f);  // torch: 0 at x = 0
    ctx_free(c);
}

static void test_geglu_forward(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 17, 0);
    int B = 3, T = 5, D = 7;
    Tensor *x = rand_tensor(c, 3, (int[]){B, T, 2 * D}, &r, 2.0f);
    Tensor *y = t_geglu(c, x);
    assert_non_null(y);
    assert_int_equal(y->ndim, 3);
    assert_int_equal(y->shape[2], D);
    float *ref = malloc(y->n * sizeof(float));
    for (int row = 0; row < B * T; row++)
        for (int i = 0; i < D; i++) {
            double a = x->data[row * 2 * D + i], g = x->data[row * 2 * D + D + i];
            ref[row * D + i] = (float)(a * ref_gelu(g));
        }
    assert_rel_l2(y->data, ref, y->n, TOL_FORWARD);
    free(ref);
    Tensor *odd = tensor_zeros(c, 2, (int[]){2, 5});
    assert_null(t_geglu(c, odd));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_free(c);
}

static Tensor *f_silu(Ctx *c, Tensor *const *in, void *u) { return t_silu(c, in[0]); }
static Tensor *f_gelu(Ctx *c, Tensor *const *in, void *u) { return t_gelu(c, in[0]); }
static Tensor *f_relu(Ctx *c, Tensor *const *in, void *u) { return t_relu(c, in[0]); }
static Tensor *f_geglu(Ctx *c, Tensor *const *in, void *u) { return t_geglu(c, in[0]); }

static void test_activation_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 18, 0);
    Tensor *x = test_param_new(2, (int[]){6, 8}, 1, &r, 2.0f);
    Tensor *in[1] = {x};
    gradcheck(f_silu, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_gelu, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_relu, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD, .kink = KINK});
    gradcheck(f_geglu, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(x);
}

/* ---- softmax -------------------------------------------------------------------------- */

static void test_softmax_forward(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 19, 0);
    int R = 300, C = 77;
    Tensor *x = rand_tensor(c, 3, (int[]){3, 100, C}, &r, 4.0f);
    x->data[5] = 1000.0f;  // exp would overflow without the row max
    x->data[6] = 1001.0f;
    Tensor *y = t_softmax(c, x);
    float *ref = malloc(x->n * sizeof(float));
    for (int row = 0; row < R; row++) {
        const float *xr = x->data + row * C;
        double mx = xr[0], s = 0, sy = 0;
        for (int i = 1; i < C; i++) mx = xr[i] > mx ? xr[i] : mx;
        for (int i = 0; i < C; i++) s += exp(xr[i] - mx);
        for (int i = 0; i < C; i++) {
            ref[row * C + i] = (float)(exp(xr[i] - mx) / s);
            sy += y->data[row * C + i];
        }
        assert_true(fabs(sy - 1.0) <= 1e-5);
    }
    assert_rel_l2(y->data, ref, x->n, TOL_FORWARD);
    assert_true(fabsf(y->data[6] - 1.0f / (1.0f + expf(-1.0f))) < 1e-6f);
    free(ref);
    ctx_free(c);
}

static Tensor *f_softmax(Ctx *c, Tensor *const *in, void *u) { return t_softmax(c, in[0]); }

static void test_softmax_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 20, 0);
    Tensor *x = test_param_new(3, (int[]){2, 3, 6}, 1, &r, 2.0f);
    Tensor *in[1] = {x};
    gradcheck(f_softmax, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(x);
}

/* ---- determinism ------------------------------------------------------------------------ */

// Forward and backward of a chain covering every op here, on tensors past the threading
// thresholds; returns a malloc'ed copy of the output and all input gradients.
static float *run_chain(int threads, size_t *len) {
    threads_set(threads);
    Ctx *c = test_ctx_new((size_t)1 << 30);
    Rng r;
    rng_seed(&r, 21, 0);
    Tensor *x = rand_tensor(c, 4, (int[]){4, 64, 16, 16}, &r, 1.0f);
    Tensor *t = rand_tensor(c, 4, (int[]){4, 64, 1, 1}, &r, 1.0f);
    Tensor *s = rand_tensor(c, 1, (int[]){1}, &r, 1.0f);
    Tensor *row = rand_tensor(c, 1, (int[]){16}, &r, 1.0f);
    x->requires_grad = t->requires_grad = s->requires_grad = row->requires_grad = 1;
    Tensor *h = t_silu(c, t_add(c, x, t));
    h = t_mul(c, t_gelu(c, h), s);
    h = t_sub(c, t_relu(c, h), row);
    h = t_add_scalar(c, t_scale(c, h, 0.5f), 1.0f);
    Tensor *h2 = t_reshape(c, h, 2, (int[]){4 * 64 * 2, 128});
    Tensor *out = t_softmax(c, t_geglu(c, h2));
    float *buf = test_backward_outputs(c, out, &r, (Tensor *[]){x, t, s, row}, 4, len);
    test_ctx_delete(c);
    return buf;
}

static void test_determinism(void **state) {
    // no float reduction depends on how OpenMP splits the loops
    assert_thread_deterministic(run_chain);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_broadcast_forward_backward_small),
        cmocka_unit_test(test_broadcast_large),
        cmocka_unit_test(test_broadcast_shape_error),
        cmocka_unit_test(test_broadcast_gradcheck),
        cmocka_unit_test(test_mul_same_input_and_frozen),
        cmocka_unit_test(test_scale_add_scalar),
        cmocka_unit_test(test_scale_add_scalar_gradcheck),
        cmocka_unit_test(test_activation_forward),
        cmocka_unit_test(test_activation_dense),
        cmocka_unit_test(test_relu_grad_at_zero),
        cmocka_unit_test(test_geglu_forward),
        cmocka_unit_test(test_activation_gradcheck),
        cmocka_unit_test(test_softmax_forward),
        cmocka_unit_test(test_softmax_gradcheck),
        cmocka_unit_test(test_determinism),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
