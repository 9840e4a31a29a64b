/* test_ops_gemm.c: the GEMM op families (matmul.c, conv.c, attention.c): forward against
   naive loops accumulating in double, backward against naive adjoint loops and against
   central finite differences (gradcheck), both attention kernel paths, bit-identical
   reruns, and frozen weights (no gradient buffer, nothing written). */
#include "testutil.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops/gemm_util.h"
#include "util/threads.h"

static const double TOL_FORWARD = 1e-5;     // float32 GEMM vs double loops (K up to ~600)
static const double TOL_BACKWARD = 1e-5;    // analytic gradients vs double adjoint loops
static const double TOL_ACCUMULATE = 1e-6;  // a second backward on top of the first vs 2x the first
// gradcheck (central differences of sum(out G) in double): conv, matmul and linear are
// linear in each input, so a large step is exact up to float rounding of the forward
// (seen: ~1e-5); attention is curved, and at 70x66 tokens the float rounding of the loss
// over a 1e-3 step alone is ~1e-2 of a gradient entry, so it too takes 1e-2 (seen: 7e-4).
static const double EPS_BILINEAR = 1e-2;
static const double TOL_GRAD_BILINEAR = 1e-4;
static const double EPS_ATTN = 1e-2;
static const double TOL_GRAD_ATTN = 2e-3;

static float *falloc(size_t n) {
    float *p = calloc(n ? n : 1, sizeof(float));
    assert_non_null(p);
    return p;
}

static float *random_floats(Rng *r, size_t n) {
    float *p = falloc(n);
    rng_normal_fill(r, p, n);
    return p;
}

/* ---- conv2d ---------------------------------------------------------------------- */

typedef struct {
    int N, Cin, H, W, Cout, kh, kw, sh, sw, ph, pw, bias;
} ConvCase;

static int conv_ho(const ConvCase *k) { return (k->H + 2 * k->ph - k->kh) / k->sh + 1; }
static int conv_wo(const ConvCase *k) { return (k->W + 2 * k->pw - k->kw) / k->sw + 1; }

// The element of x under output (oh, ow) and tap (ki, kj), or -1 in the padding.
static long conv_src(const ConvCase *k, int n, int ci, int oh, int ow, int ki, int kj) {
    int ih = oh * k->sh - k->ph + ki, iw = ow * k->sw - k->pw + kj;
    if (ih < 0 || ih >= k->H || iw < 0 || iw >= k->W) return -1;
    return (((long)n * k->Cin + ci) * k->H + ih) * k->W + iw;
}

static void conv_ref(float *y, const float *x, const float *w, const float *b, const ConvCase *k) {
    int Ho = conv_ho(k), Wo = conv_wo(k);
    for (int n = 0; n < k->N; n++)
        for (int co = 0; co < k->Cout; co++)
            for (int oh = 0; oh < Ho; oh++)
                for (int ow = 0; ow < Wo; ow++) {
                    double s = b ? b[co] : 0.0;
                    for (int ci = 0; ci < k->Cin; ci++)
                        for (int ki = 0; ki < k->kh; ki++)
                            for (int kj = 0; kj < k->kw; kj++) {
                                long src = conv_src(k, n, ci, oh, ow, ki, kj);
                                if (src >= 0)
                                    s += (double)x[src] * w[((co * k->Cin + ci) * k->kh + ki) * k->kw + kj];
                            }
                    y[(((long)n * k->Cout + co) * Ho + oh) * Wo + ow] = (float)s;
                }
}

// Adjoint of conv_ref: dx, dw, db = d(sum y * dy) / d(x, w, b).
static void conv_ref_backward(float *dx, float *dw, float *db, const float *dy, const float *x, const float *w,
                              const ConvCase *k) {
    int Ho = conv_ho(k), Wo = conv_wo(k);
    size_t nx = (size_t)k->N * k->Cin * k->H * k->W, nw = (size_t)k->Cout * k->Cin * k->kh * k->kw;
    double *gx = calloc(nx, sizeof(double)), *gw = calloc(nw, sizeof(double)), *gb = calloc(k->Cout, sizeof(double));
    for (int n = 0; n < k->N; n++)
        for (int co = 0; co < k->Cout; co++)
            for (int oh = 0; oh < Ho; oh++)
                for (int ow = 0; ow < Wo; ow++) {
                    double g = dy[(((long)n * k->Cout + co) * Ho + oh) * Wo + ow];
                    gb[co] += g;
                    for (int ci = 0; ci < k->Cin; ci++)
                        for (int ki = 0; ki < k->kh; ki++)
                            for (int kj = 0; kj < k->kw; kj++) {
                                long src = conv_src(k, n, ci, oh, ow, ki, kj);
                                long wi = ((co * k->Cin + ci) * k->kh + ki) * k->kw + kj;
                                if (src < 0) continue;
                                gx[src] += g * w[wi];
                                gw[wi] += g * x[src];
                            }
                }
    for (size_t i = 0; i < nx; i++) dx[i] = (float)gx[i];
    for (size_t i = 0; i < nw; i++) dw[i] = (float)gw[i];
    for (int i = 0; i < k->Cout; i++) db[i] = (float)gb[i];
    free(gx);
    free(gw);
    free(gb);
}

static Tensor *f_conv(Ctx *c, Tensor *const *in, void *u) {
    const ConvCase *k = u;
    return t_conv2d_ex(c, in[0], in[1], in[2], k->sh, k->sw, k->ph, k->pw);
}

static const ConvCase CONV_CASES[] = {
    {2, 3, 8, 8, 4, 3, 3, 1, 1, 1, 1, 1},   // 3x3 pad 1
    {2, 3, 9, 9, 5, 3, 3, 2, 2, 1, 1, 1},   // stride 2
    {3, 6, 5, 7, 4, 1, 1, 1, 1, 0, 0, 1},   // 1x1 stride 1 pad 0: pointwise path
    {2, 3, 6, 9, 4, 1, 7, 1, 1, 0, 3, 1},   // 1x7, pad (0, 3)
    {2, 3, 10, 10, 4, 4, 4, 2, 2, 0, 0, 1}, // k4 stride 2 pad 0
    {3, 4, 7, 7, 5, 3, 3, 1, 1, 1, 1, 0},   // no bias
    {2, 3, 7, 7, 4, 1, 1, 2, 2, 0, 0, 1},   // 1x1 stride 2: im2col path
    {2, 2, 7, 6, 3, 3, 2, 2, 1, 0, 2, 1},   // non-square kernel, strides and pads
    {1, 2, 5, 5, 3, 5, 5, 1, 1, 2, 2, 0},   // kernel as large as the image
    {2, 3, 5, 6, 4, 1, 1, 1, 1, 1, 1, 1},   // pad >= kernel: stride 1 through col2im
    {1, 2, 40, 40, 3, 3, 3, 2, 2, 1, 1, 1}, // strided, staged: col2im
    {2, 3, 6, 8, 4, 2, 3, 1, 1, 0, 1, 1},   // same width, Ho = H - 1 (2x3, pad (0, 1))
    {1, 2, 5, 6, 3, 3, 3, 1, 1, 2, 1, 1},   // same width, Ho = H + 2 (pad (2, 1))
    // P >= 1024 output positions: one GEMM per image instead of per group
    {2, 3, 32, 33, 4, 1, 1, 1, 1, 0, 0, 1}, // 1x1: x is its own col
    {2, 3, 32, 32, 5, 3, 3, 1, 1, 1, 1, 1}, // flipped-kernel input gradient
    {1, 2, 66, 66, 3, 3, 3, 2, 2, 1, 1, 1}, // strided: col2im
    {1, 3, 40, 70, 4, 1, 7, 1, 1, 0, 3, 1}, // 1x7, pad (0, 3), P = 2800: not whole 32-column panels
    {1, 2, 71, 45, 3, 3, 2, 2, 1, 0, 2, 0}, // non-square kernel, strides and pads, P = 1680
};

// Forward and backward of conv case k against the naive loops; gradcheck when small.
// The reference gradients of a conv/linear check (x, w, b order) and the buffers to free.
typedef struct {
    float *dy, *dx, *dw, *db, *ref;
} BilinearGrads;

// The end of a conv/linear check: backward of dy through the tape against the reference
// gradients, a finite-difference check of f when given (max_elems 0: all), everything freed.
static void finish_bilinear(Ctx *c, Tensor *y, Tensor **in, BilinearGrads *g, GradcheckFn f, void *user,
                            int max_elems) {
    Tensor *x = in[0], *w = in[1], *b = in[2];
    assert_int_equal(tape_backward(c, y, g->dy), 0);
    assert_rel_l2(x->grad, g->dx, x->n, TOL_BACKWARD);
    assert_rel_l2(w->grad, g->dw, w->n, TOL_BACKWARD);
    if (b) assert_rel_l2(b->grad, g->db, b->n, TOL_BACKWARD);
    if (f) gradcheck(f, in, 3, user, (GradcheckOpts){.eps = EPS_BILINEAR, .tol = TOL_GRAD_BILINEAR, .max_elems = max_elems});
    float *bufs[] = {g->ref, g->dy, g->dx, g->dw, g->db};
    for (int i = 0; i < 5; i++) free(bufs[i]);
    test_ctx_delete(c);
    for (int i = 0; i < 3; i++) test_param_free(in[i]);
}

static void check_conv_case(const ConvCase *k, int do_gradcheck) {
    Rng r;
    rng_seed(&r, 11, (uint64_t)(k->Cin * 131 + k->kh * 7 + k->sh));
    Tensor *x = test_param_new(4, (int[]){k->N, k->Cin, k->H, k->W}, 1, &r, 1.0f);
    Tensor *w = test_param_new(4, (int[]){k->Cout, k->Cin, k->kh, k->kw}, 1, &r, 0.5f);
    Tensor *b = k->bias ? test_param_new(1, (int[]){k->Cout}, 1, &r, 1.0f) : NULL;
    Ctx *c = test_ctx_new((size_t)1 << 30);
    Tensor *in[3] = {x, w, b};
    Tensor *y = f_conv(c, in, (void *)k);
    assert_non_null(y);
    int Ho = conv_ho(k), Wo = conv_wo(k);
    assert_int_equal(y->shape[2], Ho);
    assert_int_equal(y->shape[3], Wo);
    float *ref = falloc(y->n);
    conv_ref(ref, x->data, w->data, b ? b->data : NULL, k);
    assert_rel_l2(y->data, ref, y->n, TOL_FORWARD);

    float *dy = random_floats(&r, y->n);
    float *dx = falloc(x->n), *dw = falloc(w->n), *db = falloc((size_t)k->Cout);
    conv_ref_backward(dx, dw, db, dy, x->data, w->data, k);
    BilinearGrads g = {dy, dx, dw, db, ref};
    finish_bilinear(c, y, in, &g, do_gradcheck ? f_conv : NULL, (void *)k, 500);
}

// Every case with each FP32 GEMM kernel this CPU runs: OpenBLAS (im2col + gemm_rm) and the
// AVX-512 kernel (which takes large feature maps through im2col_panels).
static void test_conv2d(void **state) {
    for (int kern = GEMM_KERNEL_BLAS; kern <= GEMM_KERNEL_AVX512; kern++) {
        if (!gemm_kernel_supported((GemmKernel)kern)) continue;
        gemm_kernel_set((GemmKernel)kern);
        for (size_t i = 0; i < sizeof CONV_CASES / sizeof CONV_CASES[0]; i++) check_conv_case(&CONV_CASES[i], 1);
    }
    char msg[160];
    assert_int_equal(gemm_kernel_init(msg, sizeof msg), 0);
}

// Large enough that im2col processes the batch in groups of 2 images and a last group of 1
// (8 MiB budget, 3.1 MiB of patches per image); then a batch of small images, all in one
// group through the staging block.
static void test_conv2d_grouped(void **state) {
    const ConvCase k = {3, 16, 74, 74, 4, 3, 3, 1, 1, 1, 1, 1};
    check_conv_case(&k, 0);
    const ConvCase many = {7, 2, 6, 5, 3, 3, 3, 1, 1, 1, 1, 1};  // all 7 images in one group
    check_conv_case(&many, 1);
}

/* ---- matmul and linear ------------------------------------------------------------- */

// C (M,N) = op(A) op(B) with A (M,K) or (K,M), B (K,N) or (N,K); double accumulation.
static void matmul_ref(float *C, const float *A, const float *B, int M, int N, int K, int ta, int tb) {
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double s = 0;
            for (int l = 0; l < K; l++) {
                double a = ta ? A[l * M + i] : A[i * K + l];
                double b = tb ? B[j * K + l] : B[l * N + j];
                s += a * b;
            }
            C[i * N + j] = (float)s;
        }
}

typedef struct {
    int ta, tb;
} MatmulArgs;

static Tensor *f_matmul(Ctx *c, Tensor *const *in, void *u) {
    const MatmulArgs *m = u;
    return t_matmul(c, in[0], in[1], m->ta, m->tb);
}

static void test_matmul(void **state) {
    Rng r;
    rng_seed(&r, 21, 0);
    const int M = 4, K = 5, N = 6, B0 = 2, B1 = 3;
    for (int shared = 0; shared <= 1; shared++) {
        for (int ta = 0; ta <= 1; ta++) {
            for (int tb = 0; tb <= 1; tb++) {
                int ashape[4] = {B0, B1, ta ? K : M, ta ? M : K};
                int bshape[4] = {B0, B1, tb ? N : K, tb ? K : N};
                Tensor *a = test_param_new(4, ashape, 1, &r, 1.0f);
                Tensor *b = shared ? test_param_new(2, bshape + 2, 1, &r, 1.0f)
                                   : test_param_new(4, bshape, 1, &r, 1.0f);
                Ctx *c = test_ctx_new((size_t)1 << 26);
                MatmulArgs args = {ta, tb};
                Tensor *in[2] = {a, b};
                Tensor *y = f_matmul(c, in, &args);
                assert_non_null(y);
                assert_int_equal(y->ndim, 4);
                assert_int_equal(y->shape[2], M);
                assert_int_equal(y->shape[3], N);
                float *ref = falloc(y->n);
                for (int i = 0; i < B0 * B1; i++)
                    matmul_ref(ref + (size_t)i * M * N, a->data + (size_t)i * M * K,
                               b->data + (shared ? 0 : (size_t)i * K * N), M, N, K, ta, tb);
                assert_rel_l2(y->data, ref, y->n, TOL_FORWARD);
                gradcheck(f_matmul, in, 2, &args, (GradcheckOpts){.eps = EPS_BILINEAR, .tol = TOL_GRAD_BILINEAR});
                free(ref);
                test_ctx_delete(c);
                test_param_free(a);
                test_param_free(b);
            }
        }
    }
    // plain 2-D x 2-D, and mismatched shapes report ERR_SHAPE
    Tensor *a = test_param_new(2, (int[]){3, 7}, 1, &r, 1.0f);
    Tensor *b = test_param_new(2, (int[]){7, 2}, 1, &r, 1.0f);
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *y = t_matmul(c, a, b, 0, 0);
    float ref[6];
    matmul_ref(ref, a->data, b->data, 3, 2, 7, 0, 0);
    assert_rel_l2(y->data, ref, 6, TOL_FORWARD);
    assert_null(t_matmul(c, a, b, 1, 0));
    assert_int_equal(c->err.code, ERR_SHAPE);
    assert_non_null(strstr(c->err.msg, "matmul"));
    test_ctx_delete(c);
    test_param_free(a);
    test_param_free(b);
}

static Tensor *f_linear(Ctx *c, Tensor *const *in, void *u) { return t_linear(c, in[0], in[1], in[2]); }

// y = x w^T + b against loops; backward against loops (large) and gradcheck (small).
static void check_linear(int ndim, const int *xshape, int nout, int bias, int do_gradcheck) {
    Rng r;
    rng_seed(&r, 31, (uint64_t)nout);
    int nin = xshape[ndim - 1];
    Tensor *x = test_param_new(ndim, xshape, 1, &r, 1.0f);
    Tensor *w = test_param_new(2, (int[]){nout, nin}, 1, &r, 0.5f);
    Tensor *b = bias ? test_param_new(1, (int[]){nout}, 1, &r, 1.0f) : NULL;
    size_t rows = x->n / (size_t)nin;
    Ctx *c = test_ctx_new((size_t)1 << 28);
    Tensor *in[3] = {x, w, b};
    Tensor *y = f_linear(c, in, NULL);
    assert_non_null(y);
    assert_int_equal(y->ndim, ndim);
    assert_int_equal(y->shape[ndim - 1], nout);
    float *ref = falloc(y->n);
    matmul_ref(ref, x->data, w->data, (int)rows, nout, nin, 0, 1);
    if (b)
        for (size_t i = 0; i < rows; i++)
            for (int j = 0; j < nout; j++) ref[i * nout + j] = (float)((double)ref[i * nout + j] + b->data[j]);
    assert_rel_l2(y->data, ref, y->n, TOL_FORWARD);

    float *dy = random_floats(&r, y->n);
    float *dx = falloc(x->n), *dw = falloc(w->n), *db = falloc((size_t)nout);
    matmul_ref(dx, dy, w->data, (int)rows, nin, nout, 0, 0);      // dy w
    matmul_ref(dw, dy, x->data, nout, nin, (int)rows, 1, 0);      // dy^T x
    for (int j = 0; j < nout; j++) {
        double s = 0;
        for (size_t i = 0; i < rows; i++) s += dy[i * nout + j];
        db[j] = (float)s;
    }
    BilinearGrads g = {dy, dx, dw, db, ref};
    finish_bilinear(c, y, in, &g, do_gradcheck ? f_linear : NULL, NULL, 0);
}

static void test_linear(void **state) {
    check_linear(3, (int[]){2, 3, 5}, 4, 1, 1);
    check_linear(3, (int[]){2, 3, 5}, 4, 0, 1);
    check_linear(1, (int[]){6}, 3, 1, 1);
    check_linear(2, (int[]){37, 130}, 150, 1, 0);  // several 64-column blocks of the bias sum
}

/* ---- attention --------------------------------------------------------------------- */

typedef struct {
    int B, H, Tq, Tk, d, dv;
    float scale;    // <= 0: default 1/sqrt(d)
    int gradcheck;  // 0: too large for finite differences (the double loops still check it)
    int peaked;     // 1: softmax rows one-hot in float: dq, dk ~ 1e-14, only out and dv compared
} AttnCase;

static const AttnCase ATTN_CASES[] = {
    {2, 1, 5, 7, 8, 6, 0.0f, 1, 0},     // one head, Tq != Tk, dv != d
    {2, 4, 6, 3, 4, 5, 0.3f, 1, 0},     // four heads, explicit scale
    {3, 2, 16, 1, 32, 32, 0.0f, 1, 0},  // cross-attention to one context token
    {1, 2, 70, 66, 64, 48, 0.0f, 1, 0}, // larger heads
    {1, 2, 9, 33, 16, 8, 4.0f, 1, 0},   // scores of +-100s: the row max must be subtracted
    {1, 1, 4, 40, 8, 8, 50.0f, 0, 1},   // scores of +-1000s: most exps underflow to 0
    {1, 3, 1030, 1025, 4, 4, 0, 0, 0},  // dS of one head > 4 MiB: backward in chunks of one head
};

// out and the saved P of softmax(q k^T scale) v per head, in double.
static void attention_ref(float *out, const float *q, const float *k, const float *v, const AttnCase *a, float scale,
                          double *P) {
    int ldq = a->H * a->d, ldv = a->H * a->dv;
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->H; h++)
            for (int i = 0; i < a->Tq; i++) {
                double *p = P + (((size_t)b * a->H + h) * a->Tq + i) * a->Tk, m = -INFINITY, sum = 0;
                for (int j = 0; j < a->Tk; j++) {
                    double s = 0;
                    for (int c = 0; c < a->d; c++)
                        s += (double)q[((size_t)b * a->Tq + i) * ldq + h * a->d + c] *
                             k[((size_t)b * a->Tk + j) * ldq + h * a->d + c];
                    p[j] = s * scale;
                    if (p[j] > m) m = p[j];
                }
                for (int j = 0; j < a->Tk; j++) sum += (p[j] = exp(p[j] - m));
                for (int j = 0; j < a->Tk; j++) p[j] /= sum;
                for (int c = 0; c < a->dv; c++) {
                    double s = 0;
                    for (int j = 0; j < a->Tk; j++) s += p[j] * v[((size_t)b * a->Tk + j) * ldv + h * a->dv + c];
                    out[((size_t)b * a->Tq + i) * ldv + h * a->dv + c] = (float)s;
                }
            }
}

// Gradients of sum(out * dout) by the chain rule written out in double.
static void attention_ref_backward(float *dq, float *dk, float *dv, const float *dout, const float *q,
                                   const float *k, const float *v, const double *P, const AttnCase *a, float scale) {
    int ldq = a->H * a->d, ldv = a->H * a->dv;
    size_t nq = (size_t)a->B * a->Tq * ldq, nk = (size_t)a->B * a->Tk * ldq, nv = (size_t)a->B * a->Tk * ldv;
    double *gq = calloc(nq, sizeof(double)), *gk = calloc(nk, sizeof(double)), *gv = calloc(nv, sizeof(double));
    double *ds = calloc((size_t)a->Tk, sizeof(double));
    for (int b = 0; b < a->B; b++)
        for (int h = 0; h < a->H; h++)
            for (int i = 0; i < a->Tq; i++) {
                const double *p = P + (((size_t)b * a->H + h) * a->Tq + i) * a->Tk;
                const float *go = dout + ((size_t)b * a->Tq + i) * ldv + h * a->dv;
                double dot = 0;
                for (int j = 0; j < a->Tk; j++) {
                    double dp = 0;
                    for (int c = 0; c < a->dv; c++) {
                        size_t vi = ((size_t)b * a->Tk + j) * ldv + h * a->dv + c;
                        dp += (double)go[c] * v[vi];
                        gv[vi] += p[j] * go[c];
                    }
                    ds[j] = dp;
                    dot += dp * p[j];
                }
                for (int j = 0; j < a->Tk; j++) {
                    double g = p[j] * (ds[j] - dot) * scale;
                    for (int c = 0; c < a->d; c++) {
                        size_t qi = ((size_t)b * a->Tq + i) * ldq + h * a->d + c;
                        size_t ki = ((size_t)b * a->Tk + j) * ldq + h * a->d + c;
                        gq[qi] += g * k[ki];
                        gk[ki] += g * q[qi];
                    }
                }
            }
    for (size_t i = 0; i < nq; i++) dq[i] = (float)gq[i];
    for (size_t i = 0; i < nk; i++) dk[i] = (float)gk[i];
    for (size_t i = 0; i < nv; i++) dv[i] = (float)gv[i];
    free(gq);
    free(gk);
    free(gv);
    free(ds);
}

typedef struct {
    Tensor *q, *k, *v;
    float scale;  // resolved (> 0)
    float *out_ref, *dout, *dq_ref, *dk_ref, *dv_ref;
    double *P;
} AttnData;

static void attn_data_init(AttnData *t, const AttnCase *a, Rng *r) {
    t->q = test_param_new(3, (int[]){a->B, a->Tq, a->H * a->d}, 1, r, 1.0f);
    t->k = test_param_new(3, (int[]){a->B, a->Tk, a->H * a->d}, 1, r, 1.0f);
    t->v = test_param_new(3, (int[]){a->B, a->Tk, a->H * a->dv}, 1, r, 1.0f);
    t->scale = a->scale > 0 ? a->scale : (float)(1.0 / sqrt((double)a->d));
    size_t no = (size_t)a->B * a->Tq * a->H * a->dv;
    t->out_ref = falloc(no);
    t->dout = random_floats(r, no);
    t->P = calloc((size_t)a->B * a->H * a->Tq * a->Tk, sizeof(double));
    attention_ref(t->out_ref, t->q->data, t->k->data, t->v->data, a, t->scale, t->P);
    t->dq_ref = falloc(t->q->n);
    t->dk_ref = falloc(t->k->n);
    t->dv_ref = falloc(t->v->n);
    attention_ref_backward(t->dq_ref, t->dk_ref, t->dv_ref, t->dout, t->q->data, t->k->data, t->v->data, t->P, a,
                           t->scale);
}

static void attn_data_free(AttnData *t) {
    test_param_free(t->q);
    test_param_free(t->k);
    test_param_free(t->v);
    free(t->out_ref);
    free(t->dout);
    free(t->P);
    free(t->dq_ref);
    free(t->dk_ref);
    free(t->dv_ref);
}

typedef struct {
    int heads;
    float scale;
} AttnArgs;

static Tensor *f_attention(Ctx *c, Tensor *const *in, void *u) {
    const AttnArgs *a = u;
    return t_attention(c, in[0], in[1], in[2], a->heads, a->scale);
}

// Forward and every gradient against double loops, then gradcheck through the tape.
static void test_attention_op(void **state) {
    for (size_t ci = 0; ci < sizeof ATTN_CASES / sizeof ATTN_CASES[0]; ci++) {
        const AttnCase *a = &ATTN_CASES[ci];
        Rng r;
        rng_seed(&r, 51, ci);
        AttnData t;
        attn_data_init(&t, a, &r);
        Ctx *c = test_ctx_new((size_t)1 << 28);
        AttnArgs args = {a->H, a->scale};
        Tensor *in[3] = {t.q, t.k, t.v};
        Tensor *y = f_attention(c, in, &args);
        assert_non_null(y);
        assert_int_equal(y->shape[2], a->H * a->dv);
        assert_rel_l2(y->data, t.out_ref, y->n, TOL_FORWARD);
        assert_int_equal(tape_backward(c, y, t.dout), 0);
        if (!a->peaked) {
            assert_rel_l2(t.q->grad, t.dq_ref, t.q->n, TOL_BACKWARD);
            assert_rel_l2(t.k->grad, t.dk_ref, t.k->n, TOL_BACKWARD);
        }
        assert_rel_l2(t.v->grad, t.dv_ref, t.v->n, TOL_BACKWARD);
        if (a->gradcheck)
            gradcheck(f_attention, in, 3, &args,
                      (GradcheckOpts){.eps = EPS_ATTN, .tol = TOL_GRAD_ATTN, .max_elems = 300});
        test_ctx_delete(c);
        attn_data_free(&t);
    }
}

// A NaN in q poisons its own output row (every head that reads it), and no other row.
static void test_attention_nan(void **state) {
    Rng r;
    rng_seed(&r, 57, 0);
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *q = tensor_new3(c, 1, 3, 8), *k = tensor_new3(c, 1, 5, 8), *v = tensor_new3(c, 1, 5, 8);
    rng_normal_fill(&r, q->data, q->n);
    rng_normal_fill(&r, k->data, k->n);
    rng_normal_fill(&r, v->data, v->n);
    q->data[1 * 8 + 2] = NAN;  // row 1, head 0 (2 heads of d = 4)
    Tensor *y = t_attention(c, q, k, v, 2, 0);
    assert_non_null(y);
    for (int t = 0; t < 3; t++)
        for (int j = 0; j < 8; j++) {
            int poisoned = t == 1 && j < 4;
            assert_int_equal(isnan(y->data[t * 8 + j]) != 0, poisoned);
        }
    test_ctx_delete(c);
}

/* ---- determinism and frozen weights --------------------------------------------- */

typedef struct {
    float *out, *grads[3];
} RunResult;

// One forward + backward of f over inputs, copied out; grads zeroed first when zero.
static RunResult run_once(GradcheckFn f, Tensor *const *in, int n_in, void *u, const float *dout, int zero) {
    Ctx *c = test_ctx_new((size_t)1 << 30);
    for (int i = 0; i < n_in; i++)
        if (zero && in[i] && in[i]->grad) memset(in[i]->grad, 0, in[i]->n * sizeof(float));
    Tensor *y = f(c, in, u);
    assert_non_null(y);
    assert_int_equal(tape_backward(c, y, dout), 0);
    RunResult res = {falloc(y->n), {NULL, NULL, NULL}};
    memcpy(res.out, y->data, y->n * sizeof(float));
    for (int i = 0; i < n_in; i++) {
        if (!in[i] || !in[i]->grad) continue;
        res.grads[i] = falloc(in[i]->n);
        memcpy(res.grads[i], in[i]->grad, in[i]->n * sizeof(float));
    }
    test_ctx_delete(c);
    return res;
}

static void run_result_free(RunResult *r) {
    free(r->out);
    for (int i = 0; i < 3; i++) free(r->grads[i]);
}

// The same inputs twice give bit-identical outputs and gradients; a third backward
// without zeroing adds (the gradients become twice those of one run).
static void assert_reruns(GradcheckFn f, Tensor *const *in, int n_in, void *u, size_t nout, Rng *r) {
    float *dout = random_floats(r, nout);
    // one thread, then three: gemm_rm's tiles depend on the shape alone, so the results
    // are bit-identical for any thread count (what MPI ranks and --resume rely on)
    int prev = threads_get();
    threads_set(1);
    RunResult a = run_once(f, in, n_in, u, dout, 1);
    threads_set(3);
    RunResult b = run_once(f, in, n_in, u, dout, 1);
    threads_set(prev);
    RunResult twice = run_once(f, in, n_in, u, dout, 0);
    assert_memory_equal(a.out, b.out, nout * sizeof(float));
    for (int i = 0; i < n_in; i++) {
        if (!a.grads[i]) continue;
        assert_memory_equal(a.grads[i], b.grads[i], in[i]->n * sizeof(float));
        // (not bit-exact: a backward that adds in steps rounds G + d1 + d2 differently)
        for (size_t j = 0; j < in[i]->n; j++) a.grads[i][j] *= 2.0f;
        assert_rel_l2(twice.grads[i], a.grads[i], in[i]->n, TOL_ACCUMULATE);
    }
    run_result_free(&a);
    run_result_free(&b);
    run_result_free(&twice);
    free(dout);
}

static void test_determinism(void **state) {
    Rng r;
    rng_seed(&r, 61, 0);
    {   // conv in groups, bias sums over a batch
        ConvCase k = {3, 16, 74, 74, 8, 3, 3, 1, 1, 1, 1, 1};
        Tensor *x = test_param_new(4, (int[]){k.N, k.Cin, k.H, k.W}, 1, &r, 1.0f);
        Tensor *w = test_param_new(4, (int[]){k.Cout, k.Cin, 3, 3}, 1, &r, 0.5f);
        Tensor *b = test_param_new(1, (int[]){k.Cout}, 1, &r, 1.0f);
        Tensor *in[3] = {x, w, b};
        assert_reruns(f_conv, in, 3, &k, (size_t)k.N * k.Cout * k.H * k.W, &r);
        test_param_free(x);
        test_param_free(w);
        test_param_free(b);
    }
    {   // linear with many rows
        Tensor *x = test_param_new(3, (int[]){8, 100, 96}, 1, &r, 1.0f);
        Tensor *w = test_param_new(2, (int[]){200, 96}, 1, &r, 0.5f);
        Tensor *b = test_param_new(1, (int[]){200}, 1, &r, 1.0f);
        Tensor *in[3] = {x, w, b};
        assert_reruns(f_linear, in, 3, NULL, (size_t)800 * 200, &r);
        test_param_free(x);
        test_param_free(w);
        test_param_free(b);
    }
    {   // matmul with a shared, transposed b
        Tensor *a = test_param_new(3, (int[]){4, 50, 60}, 1, &r, 1.0f);
        Tensor *b = test_param_new(2, (int[]){70, 60}, 1, &r, 1.0f);
        Tensor *in[2] = {a, b};
        MatmulArgs args = {0, 1};
        assert_reruns(f_matmul, in, 2, &args, (size_t)4 * 50 * 70, &r);
        test_param_free(a);
        test_param_free(b);
    }
    for (int big = 0; big <= 1; big++) {  // attention: small heads, then rows long enough for threading
        AttnCase a = big ? (AttnCase){1, 4, 100, 90, 32, 32, 0} : (AttnCase){4, 2, 16, 16, 32, 32, 0};
        Tensor *q = test_param_new(3, (int[]){a.B, a.Tq, a.H * a.d}, 1, &r, 1.0f);
        Tensor *k = test_param_new(3, (int[]){a.B, a.Tk, a.H * a.d}, 1, &r, 1.0f);
        Tensor *v = test_param_new(3, (int[]){a.B, a.Tk, a.H * a.dv}, 1, &r, 1.0f);
        Tensor *in[3] = {q, k, v};
        AttnArgs args = {a.H, 0};
        assert_reruns(f_attention, in, 3, &args, (size_t)a.B * a.Tq * a.H * a.dv, &r);
        test_param_free(q);
        test_param_free(k);
        test_param_free(v);
    }
}

// A frozen weight (requires_grad 0, grad NULL) in a graph where x needs a gradient:
// backward succeeds, x gets the right gradient, the weight is neither given a buffer
// nor written. Then with nothing requiring a gradient, no node is recorded at all.
static void test_frozen_weights(void **state) {
    Rng r;
    rng_seed(&r, 71, 0);
    {   // conv: frozen w and b
        ConvCase k = {2, 3, 8, 8, 4, 3, 3, 1, 1, 1, 1, 1};
        Tensor *x = test_param_new(4, (int[]){2, 3, 8, 8}, 1, &r, 1.0f);
        Tensor *w = test_param_new(4, (int[]){4, 3, 3, 3}, 0, &r, 0.5f);
        Tensor *b = test_param_new(1, (int[]){4}, 0, &r, 1.0f);
        float *wcopy = falloc(w->n);
        memcpy(wcopy, w->data, w->n * sizeof(float));
        Tensor *in[3] = {x, w, b};
        gradcheck(f_conv, in, 3, &k, (GradcheckOpts){.eps = EPS_BILINEAR, .tol = TOL_GRAD_BILINEAR});
        assert_null(w->grad);
        assert_null(b->grad);
        assert_memory_equal(w->data, wcopy, w->n * sizeof(float));
        x->requires_grad = 0;  // teacher mode: all frozen
        Ctx *c = test_ctx_new((size_t)1 << 24);
        Tensor *y = f_conv(c, in, &k);
        assert_non_null(y);
        assert_int_equal(c->n_nodes, 0);
        assert_false(y->requires_grad);
        test_ctx_delete(c);
        free(wcopy);
        test_param_free(x);
        test_param_free(w);
        test_param_free(b);
    }
    {   // linear and matmul: frozen weight
        Tensor *x = test_param_new(3, (int[]){2, 3, 5}, 1, &r, 1.0f);
        Tensor *w = test_param_new(2, (int[]){4, 5}, 0, &r, 0.5f);
        Tensor *b = test_param_new(1, (int[]){4}, 0, &r, 1.0f);
        Tensor *in[3] = {x, w, b};
        gradcheck(f_linear, in, 3, NULL, (GradcheckOpts){.eps = EPS_BILINEAR, .tol = TOL_GRAD_BILINEAR});
        MatmulArgs args = {0, 1};
        gradcheck(f_matmul, in, 2, &args, (GradcheckOpts){.eps = EPS_BILINEAR, .tol = TOL_GRAD_BILINEAR});
        assert_null(w->grad);
        assert_null(b->grad);
        test_param_free(x);
        test_param_free(w);
        test_param_free(b);
    }
    for (int only_v = 0; only_v <= 1; only_v++) {
        // attention: frozen k and v (cross-attention to a fixed context), then only v trainable
        Tensor *q = test_param_new(3, (int[]){2, 5, 8}, !only_v, &r, 1.0f);
        Tensor *k = test_param_new(3, (int[]){2, 3, 8}, 0, &r, 1.0f);
        Tensor *v = test_param_new(3, (int[]){2, 3, 6}, only_v, &r, 1.0f);
        Tensor *in[3] = {q, k, v};
        AttnArgs args = {2, 0};
        gradcheck(f_attention, in, 3, &args, (GradcheckOpts){.eps = EPS_ATTN, .tol = TOL_GRAD_ATTN});
        assert_null(k->grad);
        assert_null(only_v ? q->grad : v->grad);
        test_param_free(q);
        test_param_free(k);
        test_param_free(v);
    }
}

static void test_shape_errors(void **state) {
    Ctx *c = test_ctx_new((size_t)1 << 24);
    Tensor *x = tensor_zeros(c, 4, (int[]){1, 3, 5, 5});
    Tensor *w = tensor_zeros(c, 4, (int[]){2, 4, 3, 3});
    assert_null(t_conv2d(c, x, w, NULL, 1, 1));
    assert_int_equal(c->err.code, ERR_SHAPE);
    assert_non_null(strstr(c->err.msg, "conv2d"));
    ctx_reset(c);
    Tensor *w7 = tensor_zeros(c, 4, (int[]){2, 3, 7, 7});
    x = tensor_zeros(c, 4, (int[]){1, 3, 5, 5});
    assert_null(t_conv2d(c, x, w7, NULL, 1, 0));  // kernel larger than the image
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    Tensor *q = tensor_zeros(c, 3, (int[]){1, 4, 6});
    Tensor *k = tensor_zeros(c, 3, (int[]){1, 5, 6});
    Tensor *v = tensor_zeros(c, 3, (int[]){1, 4, 6});
    assert_null(t_attention(c, q, k, v, 2, 0));  // k and v token counts differ
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    q = tensor_zeros(c, 3, (int[]){1, 4, 6});
    assert_null(t_attention(c, q, q, q, 4, 0));  // 6 is not a multiple of 4 heads
    assert_int_equal(c->err.code, ERR_SHAPE);
    ctx_reset(c);
    x = tensor_zeros(c, 2, (int[]){3, 5});
    w = tensor_zeros(c, 2, (int[]){4, 6});
    assert_null(t_linear(c, x, w, NULL));
    assert_int_equal(c->err.code, ERR_SHAPE);
    assert_null(t_linear(c, NULL, w, NULL));  // NULL propagates
    test_ctx_delete(c);
}

int main(void) {
    threads_set(0);  // EFFDM_THREADS (ctest sets 2) or all cores: the threaded loops run
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conv2d),
        cmocka_unit_test(test_conv2d_grouped),
        cmocka_unit_test(test_matmul),
        cmocka_unit_test(test_linear),
        cmocka_unit_test(test_attention_op),
        cmocka_unit_test(test_attention_nan),
        cmocka_unit_test(test_determinism),
        cmocka_unit_test(test_frozen_weights),
        cmocka_unit_test(test_shape_errors),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
