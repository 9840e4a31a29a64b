/* test_ops_shape.c: reshape (a view sharing data and gradient), permute, concat, slice,
   the embedding lookup and the CompVis timestep embedding.
   Forward against index loops written here, backward by gradcheck and naive scatter loops,
   reshape's no-copy and gradient sharing, error codes, determinism across thread counts. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/threads.h"

static const double TOL_EXACT = 0.0;  // copies
static const double TOL_GRAD = 1e-2;  // float32 forward, central differences, eps 1e-3
static const double TOL_BWD_REF = 1e-6;
static const double TOL_TIMESTEP = 1e-5;  // float32 args (as torch) vs the formula in double, t <= 999

/* ---- reshape ---------------------------------------------------------------------------- */

static void test_reshape_shares_data(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 51, 0);
    Tensor *x = test_tensor_normal(c, 3, (int[]){2, 3, 4}, &r);
    size_t before = c->n_nodes;
    Tensor *y = t_reshape(c, x, 2, (int[]){-1, 4});
    assert_non_null(y);
    assert_ptr_equal(y->data, x->data);  // a view: no copy
    assert_int_equal(y->shape[0], 6);
    assert_int_equal(y->shape[1], 4);
    assert_int_equal(y->n, 24);
    assert_int_equal(c->n_nodes, before);
    assert_null(y->grad);  // x needs no gradient: nothing allocated
    x->data[5] = 42.0f;
    assert_true(y->data[5] == 42.0f);

    assert_null(t_reshape(c, x, 2, (int[]){5, -1}));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    x = test_tensor_normal(c, 3, (int[]){2, 3, 4}, &r);
    assert_null(t_reshape(c, x, 3, (int[]){-1, -1, 2}));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    x = test_tensor_normal(c, 3, (int[]){2, 3, 4}, &r);
    assert_null(t_reshape(c, x, 2, (int[]){5, 5}));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_free(c);
}

static void test_reshape_gradient_reaches_x(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 52, 0);
    // x -> h = 3 x -> v = reshape(h) -> out = v * v; d out / d x = 2 v * 3 = 18 x
    Tensor *x = test_tensor_normal(c, 2, (int[]){4, 6}, &r);
    x->requires_grad = 1;
    Tensor *h = t_scale(c, x, 3.0f);
    Tensor *v = t_reshape(c, h, 3, (int[]){2, 3, 4});
    assert_ptr_equal(v->grad, h->grad);  // shared gradient buffer
    assert_true(v->requires_grad);
    Tensor *out = t_mul(c, v, v);
    float G[24];
    for (int i = 0; i < 24; i++) G[i] = (float)(i - 12) / 8.0f;
    assert_int_equal(tape_backward(c, out, G), 0);
    for (int i = 0; i < 24; i++) assert_float_equal(x->grad[i], 18.0f * x->data[i] * G[i], 1e-5);

    // a trainable parameter: the view points at the parameter's own gradient block
    Tensor *p = test_param_new(1, (int[]){6}, 1, &r, 1.0f);
    Tensor *pv = t_reshape(c, p, 2, (int[]){2, 3});
    assert_ptr_equal(pv->grad, p->grad);
    // grad mode off: a plain view, no gradient
    ctx_set_grad(c, 0);
    Tensor *q = test_tensor_normal(c, 1, (int[]){6}, &r);
    q->requires_grad = 1;
    Tensor *qv = t_reshape(c, q, 2, (int[]){3, 2});
    assert_null(q->grad);
    assert_null(qv->grad);
    assert_false(qv->requires_grad);
    test_param_free(p);
    ctx_free(c);
}

static Tensor *f_reshape(Ctx *c, Tensor *const *in, void *u) {
    return t_reshape(c, in[0], 3, (int[]){3, -1, 2});
}

/* ---- permute --------------------------------------------------------------------------- */

// y = permute(x, perm) by unravelling every output index
static void ref_permute(const Tensor *x, const int *perm, float *y) {
    int nd = x->ndim, oshape[TENSOR_MAX_DIMS];
    size_t xst[TENSOR_MAX_DIMS], run = 1;
    for (int d = nd - 1; d >= 0; d--) xst[d] = run, run *= (size_t)x->shape[d];
    for (int i = 0; i < nd; i++) oshape[i] = x->shape[perm[i]];
    for (size_t k = 0; k < x->n; k++) {
        size_t rem = k, src = 0;
        for (int i = nd - 1; i >= 0; i--) {
            src += (rem % (size_t)oshape[i]) * xst[perm[i]];
            rem /= (size_t)oshape[i];
        }
        y[k] = x->data[src];
    }
}

static void test_permute_reference(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 53, 0);
    struct {
        int nd, shape[5], perm[5];
    } cases[] = {
        {2, {5, 7}, {1, 0}},
        {3, {2, 3, 4}, {0, 2, 1}},
        {4, {2, 8, 4, 5}, {0, 2, 1, 3}},  // (B, T, H, d) -> (B, H, T, d): attention heads
        {4, {2, 3, 4, 5}, {3, 1, 0, 2}},
        {5, {2, 3, 1, 4, 5}, {4, 0, 3, 2, 1}},
        {4, {4, 64, 16, 16}, {0, 2, 3, 1}},  // NCHW -> NHWC, threaded
    };
    for (size_t k = 0; k < sizeof cases / sizeof cases[0]; k++) {
        ctx_reset(c);
        Tensor *x = test_tensor_normal(c, cases[k].nd, cases[k].shape, &r);
        x->requires_grad = 1;
        Tensor *y = t_permute(c, x, cases[k].perm);
        assert_non_null(y);
        for (int i = 0; i < x->ndim; i++) assert_int_equal(y->shape[i], x->shape[cases[k].perm[i]]);
        float *ref = malloc(x->n * sizeof(float));
        ref_permute(x, cases[k].perm, ref);
        assert_rel_l2(y->data, ref, x->n, TOL_EXACT);
        // backward of a bijection: dx = inverse permutation of g; check via ref_permute of g
        float *g = malloc(x->n * sizeof(float)), *gp = malloc(x->n * sizeof(float));
        for (size_t i = 0; i < x->n; i++) g[i] = (float)i;
        Tensor gx = *x;  // g laid out as x: permuting it gives the g seen by each output
        gx.data = g;
        ref_permute(&gx, cases[k].perm, gp);
        assert_int_equal(tape_backward(c, y, gp), 0);
        assert_rel_l2(x->grad, g, x->n, TOL_EXACT);
        free(ref), free(g), free(gp);
    }
    ctx_reset(c);
    Tensor *x = test_tensor_normal(c, 3, (int[]){2, 3, 4}, &r);
    assert_null(t_permute(c, x, (int[]){0, 1, 1}));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_free(c);
}

static Tensor *f_permute(Ctx *c, Tensor *const *in, void *u) { return t_permute(c, in[0], (int[]){2, 0, 1}); }

/* ---- concat and slice -------------------------------------------------------------------- */

static void test_concat_slice_reference(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 54, 0);
    for (int dim = 0; dim < 3; dim++) {
        ctx_reset(c);
        int sizes[3] = {2, 3, 1};
        Tensor *xs[3];
        for (int k = 0; k < 3; k++) {
            int shape[3] = {2, 3, 4};
            shape[dim] = sizes[k];
            xs[k] = test_tensor_normal(c, 3, shape, &r);
        }
        Tensor *y = t_concat(c, xs, 3, dim);
        assert_non_null(y);
        assert_int_equal(y->shape[dim], 6);
        // every output element against the input it comes from
        for (int i = 0; i < y->shape[0]; i++)
            for (int j = 0; j < y->shape[1]; j++)
                for (int l = 0; l < y->shape[2]; l++) {
                    int idx[3] = {i, j, l}, k = 0;
                    while (idx[dim] >= sizes[k]) idx[dim] -= sizes[k++];
                    const Tensor *x = xs[k];
                    float e = x->data[(idx[0] * x->shape[1] + idx[1]) * x->shape[2] + idx[2]];
                    assert_true(y->data[(i * y->shape[1] + j) * y->shape[2] + l] == e);
                }
        // slicing the concatenation gives back each input
        int start = 0;
        for (int k = 0; k < 3; k++) {
            Tensor *s = t_slice(c, y, dim - 3, start, sizes[k]);  // negative dim counts from the end
            assert_non_null(s);
            assert_rel_l2(s->data, xs[k]->data, xs[k]->n, TOL_EXACT);
            start += sizes[k];
        }
    }
    Tensor *a = test_tensor_normal(c, 2, (int[]){2, 3}, &r), *b = test_tensor_normal(c, 2, (int[]){3, 3}, &r);
    assert_null(t_concat(c, (Tensor *[]){a, b}, 2, 1));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    a = test_tensor_normal(c, 2, (int[]){2, 3}, &r);
    assert_null(t_slice(c, a, 1, 2, 2));
    assert_int_equal(c->err.code, ERR_VALUE);
    ctx_free(c);
}

static void test_concat_many_inputs_backward(void **state) {
    // more inputs than a tape node holds (TAPE_MAX_INPUTS): joined in two steps
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 55, 0);
    enum { K = TAPE_MAX_INPUTS + 3 };
    Tensor *xs[K];
    for (int k = 0; k < K; k++) {
        xs[k] = test_tensor_normal(c, 2, (int[]){3, k + 1}, &r);
        xs[k]->requires_grad = k % 3 != 1;
    }
    Tensor *y = t_concat(c, xs, K, 1);
    assert_non_null(y);
    float *G = malloc(y->n * sizeof(float));
    for (size_t i = 0; i < y->n; i++) G[i] = (float)i;
    assert_int_equal(tape_backward(c, y, G), 0);
    int W = y->shape[1], off = 0;
    for (int k = 0; k < K; k++) {
        int w = k + 1;
        for (int i = 0; i < 3; i++)
            for (int j = 0; j < w; j++) {
                assert_true(y->data[i * W + off + j] == xs[k]->data[i * w + j]);
                if (xs[k]->requires_grad) assert_true(xs[k]->grad[i * w + j] == G[i * W + off + j]);
            }
        if (!xs[k]->requires_grad) assert_null(xs[k]->grad);
        off += w;
    }
    free(G);
    ctx_free(c);
}

static Tensor *f_concat(Ctx *c, Tensor *const *in, void *u) { return t_concat(c, in, 3, *(int *)u); }
static Tensor *f_slice(Ctx *c, Tensor *const *in, void *u) { return t_slice(c, in[0], 1, 1, 2); }

/* ---- embedding --------------------------------------------------------------------------- */

static void test_embedding_bad_index(void **state) {
    Ctx *c = test_ctx_static();
    Tensor *w = tensor_zeros(c, 2, (int[]){10, 4});
    assert_null(t_embedding(c, w, (int[]){3, 10, 1}, 3));
    assert_int_equal(c->err.code, ERR_VALUE);
    assert_non_null(strstr(c->err.msg, "index 10"));
    assert_non_null(strstr(c->err.msg, "[0, 10)"));
    ctx_reset(c);
    w = tensor_zeros(c, 2, (int[]){10, 4});
    assert_null(t_embedding(c, w, (int[]){-1}, 1));
    assert_int_equal(c->err.code, ERR_VALUE);
    ctx_free(c);
}

static Tensor *f_embedding(Ctx *c, Tensor *const *in, void *u) {
    return t_embedding(c, in[0], (int[]){2, 0, 2, 4, 1, 2}, 6);
}

/* ---- timestep embedding ------------------------------------------------------------------ */

static void test_timestep_embedding(void **state) {
    Ctx *c = test_ctx_static();
    int n = 1000;
    float *t = malloc(n * sizeof(float));
    for (int i = 0; i < n; i++) t[i] = (float)(999 - i);
    int dims[3] = {64, 320, 33};
    for (int k = 0; k < 3; k++) {
        int dim = dims[k], half = dim / 2;
        Tensor *e = t_timestep_embedding(c, t, n, dim, 10000.0f);
        assert_non_null(e);
        assert_false(e->requires_grad);
        assert_int_equal(e->shape[0], n);
        assert_int_equal(e->shape[1], dim);
        float *ref = malloc(e->n * sizeof(float));
        for (int row = 0; row < n; row++) {
            for (int i = 0; i < half; i++) {
                double f = exp(-log(10000.0) * i / half), a = t[row] * f;
                ref[row * dim + i] = (float)cos(a);
                ref[row * dim + half + i] = (float)sin(a);
            }
            if (dim % 2) ref[row * dim + dim - 1] = 0.0f;
        }
        assert_rel_l2(e->data, ref, e->n, TOL_TIMESTEP);
        for (int row = 0; row < n; row++) {
            // frequency 0 is exactly 1: args = t with no rounding
            assert_true(fabs(e->data[row * dim] - cos((double)t[row])) < 1e-6);
            assert_true(fabs(e->data[row * dim + half] - sin((double)t[row])) < 1e-6);
            if (dim % 2) assert_true(e->data[row * dim + dim - 1] == 0.0f);
        }
        free(ref);
    }
    assert_null(t_timestep_embedding(c, t, n, 0, 10000.0f));
    assert_int_equal(c->err.code, ERR_VALUE);
    free(t);
    ctx_free(c);
}

/* ---- gradcheck and determinism ------------------------------------------------------------ */

static void test_shape_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 57, 0);
    Tensor *x = test_param_new(3, (int[]){2, 3, 4}, 1, &r, 1.0f);
    Tensor *in[1] = {x};
    gradcheck(f_reshape, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_permute, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_slice, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(x);

    Tensor *a = test_param_new(3, (int[]){2, 3, 4}, 1, &r, 1.0f);
    Tensor *b = test_param_new(3, (int[]){2, 3, 4}, 0, &r, 1.0f);  // frozen middle input
    Tensor *d = test_param_new(3, (int[]){2, 3, 4}, 1, &r, 1.0f);
    Tensor *cat[3] = {a, b, d};
    for (int dim = 0; dim < 3; dim++) gradcheck(f_concat, cat, 3, &dim, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(a), test_param_free(b), test_param_free(d);

    Tensor *w = test_param_new(2, (int[]){5, 3}, 1, &r, 1.0f);
    Tensor *win[1] = {w};
    gradcheck(f_embedding, win, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(w);
}

static void test_embedding_backward_reference(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 58, 0);
    int V = 37, D = 300, n = 500;
    Tensor *w = test_tensor_normal(c, 2, (int[]){V, D}, &r);
    w->requires_grad = 1;
    int *idx = malloc(n * sizeof(int));
    for (int i = 0; i < n; i++) idx[i] = (int)rng_below(&r, (uint32_t)V);
    Tensor *y = t_embedding(c, w, idx, n);
    assert_non_null(y);
    for (int i = 0; i < n; i++)
        assert_memory_equal(y->data + (size_t)i * D, w->data + (size_t)idx[i] * D, D * sizeof(float));
    float *G = malloc(y->n * sizeof(float));
    rng_normal_fill(&r, G, y->n);
    double *dw = calloc(w->n, sizeof(double));
    for (int i = 0; i < n; i++)
        for (int j = 0; j < D; j++) dw[(size_t)idx[i] * D + j] += G[(size_t)i * D + j];
    for (int i = 0; i < n; i++) idx[i] = -1;  // the op must have kept its own copy
    assert_int_equal(tape_backward(c, y, G), 0);
    float *fdw = malloc(w->n * sizeof(float));
    for (size_t i = 0; i < w->n; i++) fdw[i] = (float)dw[i];
    assert_rel_l2(w->grad, fdw, w->n, TOL_BWD_REF);
    free(idx), free(G), free(dw), free(fdw);
    ctx_free(c);
}

static float *run_shape_ops(int threads, size_t *len) {
    threads_set(threads);
    Ctx *c = test_ctx_new((size_t)1 << 30);
    Rng r;
    rng_seed(&r, 59, 0);
    Tensor *x = test_tensor_normal(c, 4, (int[]){4, 64, 16, 16}, &r);
    Tensor *w = test_tensor_normal(c, 2, (int[]){20, 512}, &r);
    x->requires_grad = w->requires_grad = 1;
    int idx[128];
    for (int i = 0; i < 128; i++) idx[i] = (i * 7) % 20;
    Tensor *h = t_permute(c, x, (int[]){0, 2, 3, 1});                    // (4, 16, 16, 64)
    h = t_reshape(c, h, 2, (int[]){1024, 64});
    h = t_concat(c, (Tensor *[]){h, t_slice(c, h, 1, 8, 32)}, 2, 1);    // (1024, 96)
    Tensor *emb = t_reshape(c, t_embedding(c, w, idx, 128), 2, (int[]){1024, 64});
    Tensor *out = t_concat(c, (Tensor *[]){h, emb}, 2, 1);                // (1024, 160)
    float *buf = test_backward_outputs(c, out, &r, (Tensor *[]){x, w}, 2, len);
    test_ctx_delete(c);
    return buf;
}

static void test_shape_determinism(void **state) {
    assert_thread_deterministic(run_shape_ops);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_reshape_shares_data),
        cmocka_unit_test(test_reshape_gradient_reaches_x),
        cmocka_unit_test(test_permute_reference),
        cmocka_unit_test(test_concat_slice_reference),
        cmocka_unit_test(test_concat_many_inputs_backward),
        cmocka_unit_test(test_embedding_backward_reference),
        cmocka_unit_test(test_embedding_bad_index),
        cmocka_unit_test(test_timestep_embedding),
        cmocka_unit_test(test_shape_gradcheck),
        cmocka_unit_test(test_shape_determinism),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
