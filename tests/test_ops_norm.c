/* test_ops_norm.c: layer norm and group norm (torch.nn.GroupNorm semantics).
   Forward against explicit double loops written here; backward of x, gamma and beta by
   gradcheck, and on tensors past the threading thresholds against naive double loops
   (dgamma = sum dy * xhat, dbeta = sum dy, dx by the textbook formula); bit-identical
   across runs and thread counts. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/threads.h"

static const double TOL_FORWARD = 1e-6;  // float op vs double loops
static const double TOL_BWD_REF = 1e-5;  // float gradients vs double loops (dx subtracts near-equal terms)
static const double TOL_GRAD = 1e-2;     // float32 forward, central differences, eps 1e-3
static const float EPS = 1e-5f;

static Tensor *rand_tensor(Ctx *c, int ndim, const int *shape, Rng *r, float scale, float shift) {
    Tensor *t = test_tensor_normal(c, ndim, shape, r);
    for (size_t i = 0; i < t->n; i++) t->data[i] = t->data[i] * scale + shift;
    return t;
}

/* Reference normalisation over `sets` sets of M elements each, where element j of set s is
   x[s * M + j] and belongs to channel ch(s, j); gamma/beta may be NULL. Writes y and, when
   dy != NULL, dx/dgamma/dbeta (double accumulators, zero-filled by the caller). */
typedef size_t (*ChannelFn)(size_t s, size_t j, const void *u);

static void ref_norm(const float *x, const float *gamma, const float *beta, size_t sets, size_t M, ChannelFn ch,
                     const void *u, float eps, float *y, const float *dy, double *dx, double *dgamma,
                     double *dbeta) {
    for (size_t s = 0; s < sets; s++) {
        const float *xs = x + s * M;
        double m = 0, v = 0;
        for (size_t j = 0; j < M; j++) m += xs[j];
        m /= (double)M;
        for (size_t j = 0; j < M; j++) v += (xs[j] - m) * (xs[j] - m);
        v /= (double)M;
        double rs = 1.0 / sqrt(v + eps);
        double a = 0, b = 0;  // sums of dxhat and dxhat * xhat
        for (size_t j = 0; j < M; j++) {
            size_t c = ch(s, j, u);
            double xh = (xs[j] - m) * rs, gm = gamma ? gamma[c] : 1.0, bt = beta ? beta[c] : 0.0;
            y[s * M + j] = (float)(xh * gm + bt);
            if (!dy) continue;
            double dxh = dy[s * M + j] * gm;
            a += dxh;
            b += dxh * xh;
            dgamma[c] += dy[s * M + j] * xh;
            dbeta[c] += dy[s * M + j];
        }
        if (!dy) continue;
        for (size_t j = 0; j < M; j++) {
            size_t c = ch(s, j, u);
            double xh = (xs[j] - m) * rs, gm = gamma ? gamma[c] : 1.0;
            dx[s * M + j] = rs * (dy[s * M + j] * gm - a / (double)M - xh * b / (double)M);
        }
    }
}

static size_t ln_channel(size_t s, size_t j, const void *u) { return j; }

typedef struct {
    size_t C, G, S;
} GnDims;

// group s = (n, g) holds channels g*C/G .. of sample n, each S elements in a row
static size_t gn_channel(size_t s, size_t j, const void *u) {
    const GnDims *d = u;
    return (s % d->G) * (d->C / d->G) + j / d->S;
}

static float *to_float(const double *d, size_t n) {
    float *f = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) f[i] = (float)d[i];
    return f;
}

// Forward and every gradient of layer norm (group == 0) or group norm against ref_norm.
static void check_norm(int group, int ndim, const int *shape, int G, int affine, Rng *r) {
    Ctx *c = test_ctx_static();
    Tensor *x = rand_tensor(c, ndim, shape, r, 2.0f, 0.5f);
    size_t C = group ? (size_t)shape[1] : (size_t)shape[ndim - 1];
    Tensor *gamma = affine ? rand_tensor(c, 1, (int[]){(int)C}, r, 0.5f, 1.0f) : NULL;
    Tensor *beta = affine ? rand_tensor(c, 1, (int[]){(int)C}, r, 0.5f, 0.0f) : NULL;
    x->requires_grad = 1;
    if (affine) gamma->requires_grad = beta->requires_grad = 1;
    Tensor *y = group ? t_group_norm(c, x, gamma, beta, G, EPS) : t_layer_norm(c, x, gamma, beta, EPS);
    assert_non_null(y);
    float *dy = malloc(x->n * sizeof(float)), *yref = malloc(x->n * sizeof(float));
    rng_normal_fill(r, dy, x->n);
    double *dx = calloc(x->n, sizeof(double)), *dg = calloc(C, sizeof(double)), *db = calloc(C, sizeof(double));
    GnDims d = {C, (size_t)G, group ? x->n / ((size_t)shape[0] * C) : 0};
    if (group)
        ref_norm(x->data, affine ? gamma->data : NULL, affine ? beta->data : NULL, (size_t)shape[0] * G,
                 x->n / ((size_t)shape[0] * G), gn_channel, &d, EPS, yref, dy, dx, dg, db);
    else
        ref_norm(x->data, affine ? gamma->data : NULL, affine ? beta->data : NULL, x->n / C, C, ln_channel, NULL,
                 EPS, yref, dy, dx, dg, db);
    assert_rel_l2(y->data, yref, x->n, TOL_FORWARD);
    assert_int_equal(tape_backward(c, y, dy), 0);
    float *fdx = to_float(dx, x->n), *fdg = to_float(dg, C), *fdb = to_float(db, C);
    assert_rel_l2(x->grad, fdx, x->n, TOL_BWD_REF);
    if (affine) {
        assert_rel_l2(gamma->grad, fdg, C, TOL_BWD_REF);
        assert_rel_l2(beta->grad, fdb, C, TOL_BWD_REF);
    }
    free(dy), free(yref), free(dx), free(dg), free(db), free(fdx), free(fdg), free(fdb);
    ctx_free(c);
}

static void test_layer_norm_reference(void **state) {
    Rng r;
    rng_seed(&r, 31, 0);
    check_norm(0, 3, (int[]){2, 5, 16}, 0, 1, &r);
    check_norm(0, 2, (int[]){7, 33}, 0, 0, &r);
    check_norm(0, 2, (int[]){8192, 64}, 0, 1, &r);  // many rows: dgamma/dbeta in row blocks, threaded
    check_norm(0, 3, (int[]){4, 256, 320}, 0, 1, &r);
}

static void test_group_norm_reference(void **state) {
    Rng r;
    rng_seed(&r, 32, 0);
    check_norm(1, 4, (int[]){2, 6, 3, 4}, 3, 1, &r);
    check_norm(1, 4, (int[]){2, 6, 3, 4}, 1, 0, &r);  // one group: layer norm over (C, H, W)
    check_norm(1, 4, (int[]){1, 6, 2, 2}, 6, 1, &r);  // instance norm
    // no spatial dims; 6 elements per group (with 2, xhat = +-1 and dx is rounding noise)
    check_norm(1, 2, (int[]){3, 12}, 2, 1, &r);
    check_norm(1, 5, (int[]){2, 4, 2, 3, 2}, 2, 1, &r);
    check_norm(1, 4, (int[]){2, 128, 16, 16}, 32, 1, &r);  // UNet size, threaded
}

typedef struct {
    int group, G, affine;
} NormCase;

static Tensor *f_norm(Ctx *c, Tensor *const *in, void *u) {
    const NormCase *k = u;
    Tensor *g = k->affine ? in[1] : NULL, *b = k->affine ? in[2] : NULL;
    return k->group ? t_group_norm(c, in[0], g, b, k->G, EPS) : t_layer_norm(c, in[0], g, b, EPS);
}

static void test_norm_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 33, 0);
    Tensor *x = test_param_new(3, (int[]){3, 4, 8}, 1, &r, 1.0f);
    Tensor *g = test_param_new(1, (int[]){8}, 1, &r, 1.0f), *b = test_param_new(1, (int[]){8}, 1, &r, 1.0f);
    Tensor *in[3] = {x, g, b};
    gradcheck(f_norm, in, 3, &(NormCase){0, 0, 1}, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_norm, in, 1, &(NormCase){0, 0, 0}, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(x), test_param_free(g), test_param_free(b);

    x = test_param_new(4, (int[]){2, 6, 3, 2}, 1, &r, 1.0f);
    g = test_param_new(1, (int[]){6}, 1, &r, 1.0f), b = test_param_new(1, (int[]){6}, 1, &r, 1.0f);
    Tensor *in2[3] = {x, g, b};
    gradcheck(f_norm, in2, 3, &(NormCase){1, 3, 1}, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_norm, in2, 3, &(NormCase){1, 2, 1}, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_norm, in2, 1, &(NormCase){1, 6, 0}, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(x), test_param_free(g), test_param_free(b);
}

static void test_norm_frozen_affine(void **state) {
    // gamma/beta frozen (no buffers): only x gets a gradient
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 34, 0);
    Tensor *x = test_param_new(4, (int[]){1, 4, 2, 2}, 1, &r, 1.0f);
    Tensor *g = test_param_new(1, (int[]){4}, 0, &r, 1.0f), *b = test_param_new(1, (int[]){4}, 0, &r, 1.0f);
    Tensor *y = t_group_norm(c, x, g, b, 2, EPS);
    float dy[16];
    for (int i = 0; i < 16; i++) dy[i] = (float)i;
    assert_int_equal(tape_backward(c, y, dy), 0);
    assert_null(g->grad);
    assert_null(b->grad);
    double s = 0;
    for (int i = 0; i < 16; i++) s += x->grad[i];
    assert_true(fabs(s) < 1e-4);  // the gradient through a normalisation sums to 0 per group
    test_param_free(x), test_param_free(g), test_param_free(b);
    ctx_free(c);
}

static void test_norm_shape_errors(void **state) {
    Ctx *c = test_ctx_static();
    Tensor *x = tensor_zeros(c, 4, (int[]){2, 6, 3, 3});
    Tensor *g5 = tensor_zeros(c, 1, (int[]){5});
    assert_null(t_group_norm(c, x, NULL, NULL, 4, EPS));
    assert_int_equal(c->err.code, ERR_SHAPE);
    assert_non_null(strstr(c->err.msg, "4 groups"));
    ctx_reset(c);
    x = tensor_zeros(c, 4, (int[]){2, 6, 3, 3});
    g5 = tensor_zeros(c, 1, (int[]){5});
    assert_null(t_group_norm(c, x, g5, NULL, 3, EPS));
    assert_int_equal(c->err.code, ERR_SHAPE);
    assert_non_null(strstr(c->err.msg, "gamma"));
    ctx_reset(c);
    x = tensor_zeros(c, 2, (int[]){2, 6});
    g5 = tensor_zeros(c, 1, (int[]){5});
    assert_null(t_layer_norm(c, x, NULL, g5, EPS));
    assert_int_equal(c->err.code, ERR_SHAPE);
    assert_non_null(strstr(c->err.msg, "beta"));
    ctx_free(c);
}

static float *run_norms(int threads, size_t *len) {
    threads_set(threads);
    Ctx *c = test_ctx_new((size_t)1 << 30);
    Rng r;
    rng_seed(&r, 35, 0);
    Tensor *x = rand_tensor(c, 4, (int[]){2, 64, 16, 16}, &r, 1.0f, 0.3f);
    Tensor *g = rand_tensor(c, 1, (int[]){64}, &r, 0.1f, 1.0f), *b = rand_tensor(c, 1, (int[]){64}, &r, 0.1f, 0.0f);
    Tensor *lg = rand_tensor(c, 1, (int[]){256}, &r, 0.1f, 1.0f), *lb = rand_tensor(c, 1, (int[]){256}, &r, 0.1f, 0);
    x->requires_grad = g->requires_grad = b->requires_grad = lg->requires_grad = lb->requires_grad = 1;
    Tensor *h = t_group_norm(c, x, g, b, 16, EPS);
    Tensor *out = t_layer_norm(c, t_reshape(c, h, 2, (int[]){128, 256}), lg, lb, EPS);
    float *buf = test_backward_outputs(c, out, &r, (Tensor *[]){x, g, b, lg, lb}, 5, len);
    test_ctx_delete(c);
    return buf;
}

static void test_norm_determinism(void **state) {
    assert_thread_deterministic(run_norms);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_layer_norm_reference),
        cmocka_unit_test(test_group_norm_reference),
        cmocka_unit_test(test_norm_gradcheck),
        cmocka_unit_test(test_norm_frozen_affine),
        cmocka_unit_test(test_norm_shape_errors),
        cmocka_unit_test(test_norm_determinism),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
