/* test_ops_resample.c: nearest x2 upsampling, avg/max pooling (F.avg_pool2d / F.max_pool2d
   semantics, floor mode) and constant 2-D padding.
   Forward against window loops written here, backward by gradcheck (kink skipping for max
   pool) and against naive scatter loops; max-pool ties send the gradient to the first max;
   bit-identical across runs and thread counts. */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "util/threads.h"

static const double TOL_EXACT = 0.0;     // copies and maxima
static const double TOL_FORWARD = 1e-6;  // window averages in float vs double
static const double TOL_BWD_REF = 1e-6;
static const double TOL_GRAD = 1e-2;     // float32 forward, central differences, eps 1e-3
static const double KINK = 1e-3;         // max pool: skip elements where the argmax flips within eps

typedef struct {
    int k, stride, pad, incl;
} Pool;

// Average (max == 0) or max pool of x (N, C, H, W) in double, and the gradient of
// sum(y * g) into dx (zero-filled, may be NULL); returns y (malloc'ed).
static float *ref_pool(const Tensor *x, Pool p, int max, const float *g, double *dx, int *Ho_out, int *Wo_out) {
    int P = x->shape[0] * x->shape[1], H = x->shape[2], W = x->shape[3];
    int Ho = (H + 2 * p.pad - p.k) / p.stride + 1, Wo = (W + 2 * p.pad - p.k) / p.stride + 1;
    float *y = malloc((size_t)P * Ho * Wo * sizeof(float));
    for (int pl = 0; pl < P; pl++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++) {
                double s = 0, best = -INFINITY;
                int cnt = 0, arg = -1;
                for (int i = 0; i < p.k; i++)
                    for (int j = 0; j < p.k; j++) {
                        int ih = oh * p.stride - p.pad + i, iw = ow * p.stride - p.pad + j;
                        if (ih < 0 || ih >= H || iw < 0 || iw >= W) continue;
                        double v = x->data[((size_t)pl * H + ih) * W + iw];
                        s += v;
                        cnt++;
                        if (v > best) best = v, arg = ih * W + iw;
                    }
                int div = p.incl ? p.k * p.k : cnt;
                size_t o = ((size_t)pl * Ho + oh) * Wo + ow;
                y[o] = (float)(max ? best : s / div);
                if (!dx) continue;
                if (max) {
                    dx[(size_t)pl * H * W + arg] += g[o];
                    continue;
                }
                for (int i = 0; i < p.k; i++)
                    for (int j = 0; j < p.k; j++) {
                        int ih = oh * p.stride - p.pad + i, iw = ow * p.stride - p.pad + j;
                        if (ih >= 0 && ih < H && iw >= 0 && iw < W) dx[((size_t)pl * H + ih) * W + iw] += g[o] / div;
                    }
            }
    *Ho_out = Ho;
    *Wo_out = Wo;
    return y;
}

static void check_pool(int N, int C, int H, int W, Pool p, int max, Rng *r) {
    Ctx *c = test_ctx_static();
    Tensor *x = test_tensor_normal(c, 4, (int[]){N, C, H, W}, r);
    x->requires_grad = 1;
    Tensor *y = max ? t_max_pool2d(c, x, p.k, p.stride, p.pad) : t_avg_pool2d(c, x, p.k, p.stride, p.pad, p.incl);
    assert_non_null(y);
    int Ho, Wo;
    float *g = malloc(y->n * sizeof(float));
    rng_normal_fill(r, g, y->n);
    double *dx = calloc(x->n, sizeof(double));
    float *yref = ref_pool(x, p, max, g, dx, &Ho, &Wo);
    assert_int_equal(y->shape[2], Ho);
    assert_int_equal(y->shape[3], Wo);
    assert_rel_l2(y->data, yref, y->n, max ? TOL_EXACT : TOL_FORWARD);
    assert_int_equal(tape_backward(c, y, g), 0);
    float *fdx = malloc(x->n * sizeof(float));
    for (size_t i = 0; i < x->n; i++) fdx[i] = (float)dx[i];
    assert_rel_l2(x->grad, fdx, x->n, TOL_BWD_REF);
    free(g), free(dx), free(yref), free(fdx);
    ctx_free(c);
}

static void test_avg_pool_reference(void **state) {
    Rng r;
    rng_seed(&r, 41, 0);
    check_pool(2, 3, 5, 7, (Pool){3, 1, 1, 0}, 0, &r);  // pytorch-fid Inception: count_include_pad=False
    check_pool(2, 3, 5, 7, (Pool){3, 1, 1, 1}, 0, &r);
    check_pool(2, 3, 6, 8, (Pool){2, 2, 0, 1}, 0, &r);  // UNet Downsample (use_conv=False)
    check_pool(1, 2, 7, 7, (Pool){3, 2, 1, 1}, 0, &r);
    check_pool(1, 2, 7, 6, (Pool){4, 3, 2, 0}, 0, &r);
    check_pool(2, 64, 32, 32, (Pool){3, 1, 1, 0}, 0, &r);  // threaded
}

static void test_max_pool_reference(void **state) {
    Rng r;
    rng_seed(&r, 42, 0);
    check_pool(2, 3, 7, 7, (Pool){3, 2, 0, 0}, 1, &r);  // Inception max pools
    check_pool(2, 3, 6, 9, (Pool){3, 2, 1, 0}, 1, &r);
    check_pool(1, 2, 6, 8, (Pool){2, 2, 0, 0}, 1, &r);
    check_pool(2, 64, 32, 32, (Pool){3, 2, 1, 0}, 1, &r);  // threaded
}

// The pooling ops run the windows that need no clipping with the output column innermost
// (vectorized). Each output must still take its elements in the plain window order (rows,
// then columns, summed in float from 0): equal bit for bit to that loop, written here, in no-grad
// mode (max pool then skips its argmax) and with NaNs planted (a NaN wins a max window, as torch).
static void test_pool_interior_bit_exact(void **state) {
    Rng r;
    rng_seed(&r, 43, 0);
    const Pool pools[5] = {{3, 1, 1, 0}, {3, 2, 0, 0}, {3, 1, 1, 1}, {2, 2, 0, 0}, {4, 3, 2, 0}};
    const int sizes[3][2] = {{35, 35}, {8, 8}, {5, 19}};
    for (int si = 0; si < 3; si++)
        for (int pi = 0; pi < 5; pi++)
            for (int max = 0; max < 2; max++) {
                Ctx *c = test_ctx_static();
                ctx_set_grad(c, 0);
                int H = sizes[si][0], W = sizes[si][1];
                Pool p = pools[pi];
                Tensor *x = test_tensor_normal(c, 4, (int[]){2, 3, H, W}, &r);
                if (max) x->data[(size_t)H * W + W + 2] = NAN;  // plane 1, row 1
                Tensor *y = max ? t_max_pool2d(c, x, p.k, p.stride, p.pad)
                                : t_avg_pool2d(c, x, p.k, p.stride, p.pad, p.incl);
                assert_non_null(y);
                int Ho = y->shape[2], Wo = y->shape[3];
                for (int pl = 0; pl < 6; pl++)
                    for (int oh = 0; oh < Ho; oh++)
                        for (int ow = 0; ow < Wo; ow++) {
                            int hs = oh * p.stride - p.pad, ws = ow * p.stride - p.pad;
                            int h0 = hs < 0 ? 0 : hs, w0 = ws < 0 ? 0 : ws;
                            int h1 = hs + p.k < H ? hs + p.k : H, w1 = ws + p.k < W ? ws + p.k : W;
                            float s = 0, mx = -INFINITY;
                            for (int h = h0; h < h1; h++)
                                for (int w = w0; w < w1; w++) {
                                    float v = x->data[((size_t)pl * H + h) * W + w];
                                    s += v;
                                    if (v > mx || isnan(v)) mx = v;
                                }
                            float want = max ? mx : s / (float)(p.incl ? p.k * p.k : (h1 - h0) * (w1 - w0));
                            float got = y->data[((size_t)pl * Ho + oh) * Wo + ow];
                            assert_memory_equal(&got, &want, sizeof got);
                        }
                ctx_free(c);
            }
}

static void test_max_pool_ties_first_max(void **state) {
    Ctx *c = test_ctx_static();
    Tensor *x = tensor_zeros(c, 4, (int[]){1, 1, 3, 3});
    x->requires_grad = 1;
    Tensor *y = t_max_pool2d(c, x, 3, 1, 1);  // 3x3 output; every window sees only zeros
    float g[9];
    for (int i = 0; i < 9; i++) g[i] = (float)(1 << i);
    assert_int_equal(tape_backward(c, y, g), 0);
    // window (oh, ow) clipped to rows max(oh-1,0).., cols max(ow-1,0)..: the first in-bounds
    // element is (max(oh-1,0), max(ow-1,0)); each output's bit lands there
    float expect[9] = {0};
    for (int oh = 0; oh < 3; oh++)
        for (int ow = 0; ow < 3; ow++) expect[(oh ? oh - 1 : 0) * 3 + (ow ? ow - 1 : 0)] += g[oh * 3 + ow];
    for (int i = 0; i < 9; i++) assert_true(x->grad[i] == expect[i]);
    ctx_free(c);
}

static void test_pool_errors(void **state) {
    Ctx *c = test_ctx_static();
    Tensor *x = tensor_zeros(c, 4, (int[]){1, 1, 4, 4});
    assert_null(t_avg_pool2d(c, x, 3, 1, 2, 1));  // pad > k/2, refused as torch does
    assert_int_equal(c->err.code, ERR_VALUE);
    ctx_reset(c);
    x = tensor_zeros(c, 3, (int[]){1, 4, 4});
    assert_null(t_max_pool2d(c, x, 2, 2, 0));
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    x = tensor_zeros(c, 4, (int[]){1, 1, 2, 2});
    assert_null(t_max_pool2d(c, x, 3, 1, 0));  // kernel larger than the input
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_free(c);
}

static void test_upsample_pad_reference(void **state) {
    Ctx *c = test_ctx_static();
    Rng r;
    rng_seed(&r, 43, 0);
    int N = 2, C = 64, H = 17, W = 13;  // large enough to thread
    Tensor *x = test_tensor_normal(c, 4, (int[]){N, C, H, W}, &r);
    x->requires_grad = 1;
    Tensor *u = t_upsample_nearest2x(c, x);
    assert_int_equal(u->shape[2], 2 * H);
    assert_int_equal(u->shape[3], 2 * W);
    float *ref = malloc(u->n * sizeof(float));
    for (int p = 0; p < N * C; p++)
        for (int h = 0; h < 2 * H; h++)
            for (int w = 0; w < 2 * W; w++)
                ref[((size_t)p * 2 * H + h) * 2 * W + w] = x->data[((size_t)p * H + h / 2) * W + w / 2];
    assert_rel_l2(u->data, ref, u->n, TOL_EXACT);
    float *g = malloc(u->n * sizeof(float));
    rng_normal_fill(&r, g, u->n);
    assert_int_equal(tape_backward(c, u, g), 0);
    double *dx = calloc(x->n, sizeof(double));
    for (int p = 0; p < N * C; p++)
        for (int h = 0; h < 2 * H; h++)
            for (int w = 0; w < 2 * W; w++)
                dx[((size_t)p * H + h / 2) * W + w / 2] += g[((size_t)p * 2 * H + h) * 2 * W + w];
    float *fdx = malloc(x->n * sizeof(float));
    for (size_t i = 0; i < x->n; i++) fdx[i] = (float)dx[i];
    assert_rel_l2(x->grad, fdx, x->n, TOL_BWD_REF);
    free(ref), free(g), free(dx), free(fdx);

    // pad (left 0, right 1, top 0, bottom 1) as the autoencoder Downsample, and an asymmetric one
    int pads[2][4] = {{0, 1, 0, 1}, {2, 1, 3, 0}};
    for (int k = 0; k < 2; k++) {
        ctx_reset(c);
        x = test_tensor_normal(c, 4, (int[]){N, C, H, W}, &r);
        int L = pads[k][0], R = pads[k][1], T = pads[k][2], B = pads[k][3];
        Tensor *y = t_pad2d(c, x, L, R, T, B, -2.5f);
        int Ho = H + T + B, Wo = W + L + R;
        assert_int_equal(y->shape[2], Ho);
        assert_int_equal(y->shape[3], Wo);
        for (int p = 0; p < N * C; p++)
            for (int h = 0; h < Ho; h++)
                for (int w = 0; w < Wo; w++) {
                    int ih = h - T, iw = w - L;
                    float e = ih >= 0 && ih < H && iw >= 0 && iw < W ? x->data[((size_t)p * H + ih) * W + iw] : -2.5f;
                    assert_true(y->data[((size_t)p * Ho + h) * Wo + w] == e);
                }
    }
    assert_null(t_pad2d(c, x, -1, 0, 0, 0, 0.0f));
    assert_int_equal(c->err.code, ERR_VALUE);
    ctx_free(c);
}

static Tensor *f_avg(Ctx *c, Tensor *const *in, void *u) {
    const Pool *p = u;
    return t_avg_pool2d(c, in[0], p->k, p->stride, p->pad, p->incl);
}
static Tensor *f_max(Ctx *c, Tensor *const *in, void *u) {
    const Pool *p = u;
    return t_max_pool2d(c, in[0], p->k, p->stride, p->pad);
}
static Tensor *f_up(Ctx *c, Tensor *const *in, void *u) { return t_upsample_nearest2x(c, in[0]); }
static Tensor *f_pad(Ctx *c, Tensor *const *in, void *u) { return t_pad2d(c, in[0], 1, 2, 0, 1, 0.5f); }

static void test_resample_gradcheck(void **state) {
    Rng r;
    rng_seed(&r, 44, 0);
    Tensor *x = test_param_new(4, (int[]){2, 2, 5, 6}, 1, &r, 1.0f);
    Tensor *in[1] = {x};
    gradcheck(f_avg, in, 1, &(Pool){3, 1, 1, 0}, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_avg, in, 1, &(Pool){3, 2, 1, 1}, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_avg, in, 1, &(Pool){2, 2, 0, 1}, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_max, in, 1, &(Pool){3, 2, 1, 0}, (GradcheckOpts){.tol = TOL_GRAD, .kink = KINK});
    gradcheck(f_max, in, 1, &(Pool){2, 1, 0, 0}, (GradcheckOpts){.tol = TOL_GRAD, .kink = KINK});
    gradcheck(f_up, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    gradcheck(f_pad, in, 1, NULL, (GradcheckOpts){.tol = TOL_GRAD});
    test_param_free(x);
}

static float *run_resample(int threads, size_t *len) {
    threads_set(threads);
    Ctx *c = test_ctx_new((size_t)1 << 30);
    Rng r;
    rng_seed(&r, 45, 0);
    Tensor *x = test_tensor_normal(c, 4, (int[]){2, 32, 24, 24}, &r);
    x->requires_grad = 1;
    Tensor *h = t_upsample_nearest2x(c, t_pad2d(c, x, 0, 1, 0, 1, 0.0f));
    h = t_max_pool2d(c, t_avg_pool2d(c, h, 3, 1, 1, 0), 3, 2, 1);
    Tensor *out = t_avg_pool2d(c, h, 2, 2, 0, 1);
    float *buf = test_backward_outputs(c, out, &r, &x, 1, len);
    test_ctx_delete(c);
    return buf;
}

static void test_resample_determinism(void **state) {
    assert_thread_deterministic(run_resample);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_avg_pool_reference),
        cmocka_unit_test(test_max_pool_reference),
        cmocka_unit_test(test_max_pool_ties_first_max),
        cmocka_unit_test(test_pool_interior_bit_exact),
        cmocka_unit_test(test_pool_errors),
        cmocka_unit_test(test_upsample_pad_reference),
        cmocka_unit_test(test_resample_gradcheck),
        cmocka_unit_test(test_resample_determinism),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
