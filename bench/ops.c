/* bench/ops.c: forward and backward speed of the engine's heavy ops (conv2d, linear,
   attention, group norm) against cblas_sgemm of the same FLOP count, timed in the same run
   on the same threads.

       ./build/bench/ops --threads 2 [--seconds 1]
       ./build/bench/ops --threads 1 --gemm     # the FP32 GEMM kernels side by side, and int8

   It restarts itself once with effdm's OpenMP spin setting (util/threads.h); the header
   line says which policy ran.

   Each case is first checked against naive double loops (a sample of outputs and of
   every input gradient); a mismatch stops the bench with status 1. Times are medians
   over 5 rounds that interleave the op and its sgemm reference (each round: bench_time,
   one warm-up, then the median of at least --seconds / 5 of runs). The forward is timed with
   the tape recording, as in training; the backward is the op's backward function alone,
   run on the node that forward recorded. "peak" is the arena's high-water mark for the
   case: output, saved values, scratch and the output gradient (inputs and their
   gradients live outside the arena, as parameters do).
   FLOPs: conv 2 N Cout Ho Wo Cin kh kw (backward twice that: dw and dx), linear
   2 rows in out (backward twice), attention 4 B H Tq Tk d (backward twice); bias sums,
   softmax and im2col are not counted. The sgemm reference for each row is one (M x K)(K x N)
   product with the op's GEMM shape, K doubled for backward rows: conv (Cout, N Ho Wo,
   Cin kh kw), linear (rows, out, in), attention (B H Tq, Tk, 2 d), its per-head
   products stacked. */
#include <cblas.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "autograd/ops.h"
#include "autograd/ops/gemm_util.h"
#include "qalora/int_gemm.h"
#include "bench/benchutil.h"
#include "util/rng.h"
#include "util/threads.h"

/* Group norm belongs to another op family (norm.c); this bench also builds in trees
   that do not have it yet, so its row is compiled only when the source is present. */
#if defined(__has_include)
#if __has_include("autograd/ops/norm.c")
#define BENCH_HAVE_GROUP_NORM 1
#endif
#endif

static const double CHECK_TOL = 1e-4;  // relative error of sampled outputs/gradients vs double loops
static double g_seconds = 1.0;
static char g_tags[256];  // "thr=2 blas=openblas-pthread simd=avx512" for every row

static void die(const char *what, const char *msg) {
    fprintf(stderr, "bench ops: %s: %s\n", what, msg);
    exit(1);
}

static Tensor *param(int ndim, const int *shape, Rng *r, float scale) {
    size_t n = tensor_shape_numel(ndim, shape);
    float *data = malloc(n * sizeof(float)), *grad = calloc(n, sizeof(float));
    Tensor *t = malloc(sizeof *t);
    if (!data || !grad || !t) die("setup", "out of memory");
    rng_normal_fill(r, data, n);
    for (size_t i = 0; i < n; i++) data[i] *= scale;
    return tensor_init_param(t, data, grad, ndim, shape);
}

static void param_free(Tensor *t) {
    if (!t) return;
    free(t->data);
    free(t->grad);
    free(t);
}

/* ---- timing harness ---------------------------------------------------------------- */

typedef Tensor *(*OpFn)(Ctx *c, void *args);

typedef struct {
    Ctx *c;
    OpFn op;
    void *args;
    size_t mark;
    TapeNode *node;
} Run;

static void run_forward(void *p) {
    Run *r = p;
    arena_release(&r->c->arena, r->mark);
    tape_clear(r->c);
    if (!r->op(r->c, r->args)) die("forward", r->c->err.msg);
}

static void run_backward(void *p) {
    Run *r = p;
    r->node->backward(r->c, r->node);
    if (r->c->err.code) die("backward", r->c->err.msg);
}

// Rounds of interleaved op and sgemm timing (each round: at least --seconds / ROUNDS of
// each). Other programs' load on a shared machine drifts over seconds; interleaving makes
// it hit the op and its sgemm reference alike, and the median over rounds drops the worst.
#define ROUNDS 5

typedef struct {
    int M, N, K;  // sgemm of equal FLOPs; M == 0: none (memory-bound op)
} SgemmShape;

typedef struct {
    double fwd_s, bwd_s;              // op medians over rounds
    double fwd_sgemm_s, bwd_sgemm_s;  // the sgemm references, same rounds
    double peak_mib;
} Timing;

// Times op forward, then its recorded node's backward with a random output gradient,
// each interleaved with its sgemm reference.
static Timing time_op(OpFn op, void *args, Rng *rng, SgemmShape fwd, SgemmShape bwd) {
    Ctx c;
    Err e = {0};
    if (ctx_init(&c, (size_t)8 << 30, &e)) die("ctx", e.msg);
    Run r = {&c, op, args, arena_mark(&c.arena), NULL};
    double part = g_seconds / ROUNDS, t_op[ROUNDS], t_sg[ROUNDS];
    Timing t = {0, 0, 0, 0, 0};
    for (int i = 0; i < ROUNDS; i++) {
        t_op[i] = bench_time(run_forward, &r, part);
        t_sg[i] = fwd.M ? bench_sgemm_seconds(fwd.M, fwd.N, fwd.K, part) : 0;
    }
    t.fwd_s = bench_median(t_op, ROUNDS);
    t.fwd_sgemm_s = bench_median(t_sg, ROUNDS);
    run_forward(&r);
    r.node = c.last;
    if (!r.node) die("backward", "forward recorded no node");
    float *dy = tensor_grad(&c, r.node->out);
    if (!dy) die("backward", c.err.msg);
    rng_normal_fill(rng, dy, r.node->out->n);
    for (int i = 0; i < ROUNDS; i++) {
        t_op[i] = bench_time(run_backward, &r, part);
        t_sg[i] = bwd.M ? bench_sgemm_seconds(bwd.M, bwd.N, bwd.K, part) : 0;
    }
    t.bwd_s = bench_median(t_op, ROUNDS);
    t.bwd_sgemm_s = bench_median(t_sg, ROUNDS);
    t.peak_mib = (double)c.arena.peak / (1024.0 * 1024.0);
    ctx_free(&c);
    return t;
}

static void print_row(const char *name, const char *dir, const char *shape, double seconds, double flops,
                      double sgemm_s, double peak_mib) {
    double gf = flops / seconds * 1e-9, sg = flops / sgemm_s * 1e-9;
    printf("%-10s %s  %s  %s\n", name, dir, shape, g_tags);
    printf("            %.3f ms  %.1f GFLOP/s  sgemm %.1f GFLOP/s  ratio %.2f  peak %.1f MiB\n", seconds * 1e3, gf,
           sg, gf / sg, peak_mib);
    fflush(stdout);
}

/* ---- sampled checks ---------------------------------------------------------------- */

typedef struct {
    double err2, ref2;
} ErrAcc;

static void acc_add(ErrAcc *a, double ours, double ref) {
    a->err2 += (ours - ref) * (ours - ref);
    a->ref2 += ref * ref;
}

static void acc_check(const ErrAcc *a, const char *what) {
    double rel = a->ref2 > 0 ? sqrt(a->err2 / a->ref2) : sqrt(a->err2);
    if (!(rel <= CHECK_TOL)) {
        char msg[128];
        snprintf(msg, sizeof msg, "relative error %.3g > %.3g against the naive loops", rel, CHECK_TOL);
        die(what, msg);
    }
}

/* ---- conv2d ------------------------------------------------------------------------ */

typedef struct {
    Tensor *x, *w, *b;
    int stride, pad;
} ConvArgs;

static Tensor *op_conv(Ctx *c, void *p) {
    ConvArgs *a = p;
    return t_conv2d(c, a->x, a->w, a->b, a->stride, a->pad);
}

// x value under output (n, oh, ow) for tap (ci, ki, kj), 0 in the padding.
static double conv_x(const ConvArgs *a, int n, int ci, int oh, int ow, int ki, int kj) {
    const Tensor *x = a->x;
    int H = x->shape[2], W = x->shape[3], ih = oh * a->stride - a->pad + ki, iw = ow * a->stride - a->pad + kj;
    if (ih < 0 || ih >= H || iw < 0 || iw >= W) return 0;
    return x->data[(((size_t)n * x->shape[1] + ci) * H + ih) * W + iw];
}

// Forward of image 0, and sampled dw, dx entries after one backward, against loops.
static void check_conv(ConvArgs *a, Rng *rng) {
    Ctx c;
    Err e = {0};
    if (ctx_init(&c, (size_t)8 << 30, &e)) die("ctx", e.msg);
    Tensor *y = op_conv(&c, a);
    if (!y) die("conv2d", c.err.msg);
    int N = a->x->shape[0], Cin = a->x->shape[1], Cout = a->w->shape[0], k = a->w->shape[2];
    int H = a->x->shape[2], W = a->x->shape[3], Ho = y->shape[2], Wo = y->shape[3];
    ErrAcc fe = {0, 0};
    for (int co = 0; co < Cout; co++)
        for (int oh = 0; oh < Ho; oh++)
            for (int ow = 0; ow < Wo; ow++) {
                double s = a->b->data[co];
                for (int ci = 0; ci < Cin; ci++)
                    for (int ki = 0; ki < k; ki++)
                        for (int kj = 0; kj < k; kj++)
                            s += conv_x(a, 0, ci, oh, ow, ki, kj) * a->w->data[((co * Cin + ci) * k + ki) * k + kj];
                acc_add(&fe, y->data[((size_t)co * Ho + oh) * Wo + ow], s);
            }
    acc_check(&fe, "conv2d forward");
    float *dy = malloc(y->n * sizeof(float));
    rng_normal_fill(rng, dy, y->n);
    memset(a->x->grad, 0, a->x->n * sizeof(float));
    memset(a->w->grad, 0, a->w->n * sizeof(float));
    if (tape_backward(&c, y, dy)) die("conv2d backward", c.err.msg);
    ErrAcc we = {0, 0}, xe = {0, 0};
    for (int s = 0; s < 64; s++) {
        int co = (int)rng_below(rng, (uint32_t)Cout), ci = (int)rng_below(rng, (uint32_t)Cin);
        int ki = (int)rng_below(rng, (uint32_t)k), kj = (int)rng_below(rng, (uint32_t)k);
        double g = 0;
        for (int n = 0; n < N; n++)
            for (int oh = 0; oh < Ho; oh++)
                for (int ow = 0; ow < Wo; ow++)
                    g += (double)dy[(((size_t)n * Cout + co) * Ho + oh) * Wo + ow] * conv_x(a, n, ci, oh, ow, ki, kj);
        acc_add(&we, a->w->grad[((co * Cin + ci) * k + ki) * k + kj], g);
        // dx at a random input pixel: every output it feeds, through every tap
        int n = (int)rng_below(rng, (uint32_t)N), ih = (int)rng_below(rng, (uint32_t)H);
        int iw = (int)rng_below(rng, (uint32_t)W);
        double gx = 0;
        for (int o = 0; o < Cout; o++)
            for (int ki2 = 0; ki2 < k; ki2++)
                for (int kj2 = 0; kj2 < k; kj2++) {
                    int th = ih + a->pad - ki2, tw = iw + a->pad - kj2;
                    if (th < 0 || tw < 0 || th % a->stride || tw % a->stride) continue;
                    int oh = th / a->stride, ow = tw / a->stride;
                    if (oh >= Ho || ow >= Wo) continue;
                    gx += (double)dy[(((size_t)n * Cout + o) * Ho + oh) * Wo + ow] *
                          a->w->data[((o * Cin + ci) * k + ki2) * k + kj2];
                }
        acc_add(&xe, a->x->grad[(((size_t)n * Cin + ci) * H + ih) * W + iw], gx);
    }
    acc_check(&we, "conv2d dw");
    acc_check(&xe, "conv2d dx");
    free(dy);
    ctx_free(&c);
}

static void bench_conv(int N, int C, int HW, int k, Rng *rng) {
    ConvArgs a = {param(4, (int[]){N, C, HW, HW}, rng, 1.0f), param(4, (int[]){C, C, k, k}, rng, 0.1f),
                  param(1, (int[]){C}, rng, 1.0f), 1, k / 2};
    check_conv(&a, rng);
    int K = C * k * k, P = HW * HW;  // same padding: Ho = H
    Timing t = time_op(op_conv, &a, rng, (SgemmShape){C, N * P, K}, (SgemmShape){C, N * P, 2 * K});
    double flops = 2.0 * N * C * P * (double)K;
    char shape[96];
    snprintf(shape, sizeof shape, "N=%d Cin=%d Cout=%d %dx%d k%d", N, C, C, HW, HW, k);
    print_row("conv2d", "fwd", shape, t.fwd_s, flops, t.fwd_sgemm_s, t.peak_mib);
    print_row("conv2d", "bwd", shape, t.bwd_s, 2 * flops, t.bwd_sgemm_s, t.peak_mib);
    param_free(a.x);
    param_free(a.w);
    param_free(a.b);
}

/* ---- linear ------------------------------------------------------------------------ */

typedef struct {
    Tensor *x, *w, *b;
} LinearArgs;

static Tensor *op_linear(Ctx *c, void *p) {
    LinearArgs *a = p;
    return t_linear(c, a->x, a->w, a->b);
}

static void check_linear(LinearArgs *a, Rng *rng) {
    Ctx c;
    Err e = {0};
    if (ctx_init(&c, (size_t)8 << 30, &e)) die("ctx", e.msg);
    Tensor *y = op_linear(&c, a);
    if (!y) die("linear", c.err.msg);
    int rows = a->x->shape[0], nin = a->w->shape[1], nout = a->w->shape[0];
    float *dy = malloc(y->n * sizeof(float));
    rng_normal_fill(rng, dy, y->n);
    memset(a->x->grad, 0, a->x->n * sizeof(float));
    memset(a->w->grad, 0, a->w->n * sizeof(float));
    memset(a->b->grad, 0, a->b->n * sizeof(float));
    if (tape_backward(&c, y, dy)) die("linear backward", c.err.msg);
    ErrAcc ye = {0, 0}, xe = {0, 0}, we = {0, 0}, be = {0, 0};
    for (int s = 0; s < 256; s++) {
        int i = (int)rng_below(rng, (uint32_t)rows), j = (int)rng_below(rng, (uint32_t)nout);
        int l = (int)rng_below(rng, (uint32_t)nin);
        double yv = a->b->data[j], xv = 0, wv = 0, bv = 0;
        for (int m = 0; m < nin; m++) yv += (double)a->x->data[(size_t)i * nin + m] * a->w->data[(size_t)j * nin + m];
        for (int m = 0; m < nout; m++) xv += (double)dy[(size_t)i * nout + m] * a->w->data[(size_t)m * nin + l];
        for (int r = 0; r < rows; r++) {
            wv += (double)dy[(size_t)r * nout + j] * a->x->data[(size_t)r * nin + l];
            bv += dy[(size_t)r * nout + j];
        }
        acc_add(&ye, y->data[(size_t)i * nout + j], yv);
        acc_add(&xe, a->x->grad[(size_t)i * nin + l], xv);
        acc_add(&we, a->w->grad[(size_t)j * nin + l], wv);
        acc_add(&be, a->b->grad[j], bv);
    }
    acc_check(&ye, "linear forward");
    acc_check(&xe, "linear dx");
    acc_check(&we, "linear dw");
    acc_check(&be, "linear db");
    free(dy);
    ctx_free(&c);
}

static void bench_linear(int rows, int nin, int nout, Rng *rng) {
    LinearArgs a = {param(2, (int[]){rows, nin}, rng, 1.0f), param(2, (int[]){nout, nin}, rng, 0.05f),
                    param(1, (int[]){nout}, rng, 1.0f)};
    check_linear(&a, rng);
    Timing t = time_op(op_linear, &a, rng, (SgemmShape){rows, nout, nin}, (SgemmShape){rows, nout, 2 * nin});
    double flops = 2.0 * rows * nin * (double)nout;
    char shape[96];
    snprintf(shape, sizeof shape, "%d x %d -> %d", rows, nin, nout);
    print_row("linear", "fwd", shape, t.fwd_s, flops, t.fwd_sgemm_s, t.peak_mib);
    print_row("linear", "bwd", shape, t.bwd_s, 2 * flops, t.bwd_sgemm_s, t.peak_mib);
    param_free(a.x);
    param_free(a.w);
    param_free(a.b);
}

/* ---- attention --------------------------------------------------------------------- */

typedef struct {
    Tensor *q, *k, *v;
    int heads;
} AttnArgs;

static Tensor *op_attention(Ctx *c, void *p) {
    AttnArgs *a = p;
    return t_attention(c, a->q, a->k, a->v, a->heads, 0);
}

// Head (b = 0, h = H - 1): output and all three gradients against double loops.
static void check_attention(AttnArgs *a, Rng *rng) {
    Ctx c;
    Err e = {0};
    if (ctx_init(&c, (size_t)8 << 30, &e)) die("ctx", e.msg);
    Tensor *y = op_attention(&c, a);
    if (!y) die("attention", c.err.msg);
    int H = a->heads, T = a->q->shape[1], d = a->q->shape[2] / H, h = H - 1, ld = H * d;
    double scale = 1.0 / sqrt((double)d);
    float *dy = malloc(y->n * sizeof(float));
    rng_normal_fill(rng, dy, y->n);
    memset(a->q->grad, 0, a->q->n * sizeof(float));
    memset(a->k->grad, 0, a->k->n * sizeof(float));
    memset(a->v->grad, 0, a->v->n * sizeof(float));
    if (tape_backward(&c, y, dy)) die("attention backward", c.err.msg);
    const float *q = a->q->data + h * d, *k = a->k->data + h * d, *v = a->v->data + h * d;
    double *P = malloc((size_t)T * T * sizeof(double)), *dq = calloc((size_t)T * d, sizeof(double));
    double *dk = calloc((size_t)T * d, sizeof(double)), *dv = calloc((size_t)T * d, sizeof(double));
    ErrAcc ye = {0, 0}, qe = {0, 0}, ke = {0, 0}, ve = {0, 0};
    for (int i = 0; i < T; i++) {
        double *p = P + (size_t)i * T, m = -INFINITY, sum = 0;
        for (int j = 0; j < T; j++) {
            double s = 0;
            for (int l = 0; l < d; l++) s += (double)q[(size_t)i * ld + l] * k[(size_t)j * ld + l];
            p[j] = s * scale;
            if (p[j] > m) m = p[j];
        }
        for (int j = 0; j < T; j++) sum += (p[j] = exp(p[j] - m));
        for (int j = 0; j < T; j++) p[j] /= sum;
        const float *go = dy + (size_t)i * ld + h * d;
        double dot = 0, *dp = malloc((size_t)T * sizeof(double));
        for (int l = 0; l < d; l++) {
            double o = 0;
            for (int j = 0; j < T; j++) o += p[j] * v[(size_t)j * ld + l];
            acc_add(&ye, y->data[(size_t)i * ld + h * d + l], o);
        }
        for (int j = 0; j < T; j++) {
            dp[j] = 0;
            for (int l = 0; l < d; l++) {
                dp[j] += (double)go[l] * v[(size_t)j * ld + l];
                dv[(size_t)j * d + l] += p[j] * go[l];
            }
            dot += dp[j] * p[j];
        }
        for (int j = 0; j < T; j++) {
            double g = p[j] * (dp[j] - dot) * scale;
            for (int l = 0; l < d; l++) {
                dq[(size_t)i * d + l] += g * k[(size_t)j * ld + l];
                dk[(size_t)j * d + l] += g * q[(size_t)i * ld + l];
            }
        }
        free(dp);
    }
    for (int i = 0; i < T; i++)
        for (int l = 0; l < d; l++) {
            size_t at = (size_t)i * ld + h * d + l;
            acc_add(&qe, a->q->grad[at], dq[(size_t)i * d + l]);
            acc_add(&ke, a->k->grad[at], dk[(size_t)i * d + l]);
            acc_add(&ve, a->v->grad[at], dv[(size_t)i * d + l]);
        }
    acc_check(&ye, "attention forward");
    acc_check(&qe, "attention dq");
    acc_check(&ke, "attention dk");
    acc_check(&ve, "attention dv");
    free(P);
    free(dq);
    free(dk);
    free(dv);
    free(dy);
    ctx_free(&c);
}

static void bench_attention(int B, int H, int T, int d, Rng *rng) {
    AttnArgs a = {param(3, (int[]){B, T, H * d}, rng, 1.0f), param(3, (int[]){B, T, H * d}, rng, 1.0f),
                  param(3, (int[]){B, T, H * d}, rng, 1.0f), H};
    check_attention(&a, rng);
    // sgemm of equal FLOPs: the per-head products stacked, (B H T x 2d) times (2d x T)
    Timing t = time_op(op_attention, &a, rng, (SgemmShape){B * H * T, T, 2 * d}, (SgemmShape){B * H * T, T, 4 * d});
    double flops = 4.0 * B * H * (double)T * T * d;
    char shape[96];
    snprintf(shape, sizeof shape, "B=%d H=%d T=%d d=%d self", B, H, T, d);
    print_row("attention", "fwd", shape, t.fwd_s, flops, t.fwd_sgemm_s, t.peak_mib);
    print_row("attention", "bwd", shape, t.bwd_s, 2 * flops, t.bwd_sgemm_s, t.peak_mib);
    param_free(a.q);
    param_free(a.k);
    param_free(a.v);
}

/* ---- group norm -------------------------------------------------------------------- */

#ifdef BENCH_HAVE_GROUP_NORM
typedef struct {
    Tensor *x, *gamma, *beta;
    int G;
} GroupNormArgs;

static Tensor *op_group_norm(Ctx *c, void *p) {
    GroupNormArgs *a = p;
    return t_group_norm(c, a->x, a->gamma, a->beta, a->G, 1e-5f);
}

// Output and every gradient against double loops over the whole tensor.
static void check_group_norm(GroupNormArgs *a, Rng *rng) {
    Ctx c;
    Err e = {0};
    if (ctx_init(&c, (size_t)8 << 30, &e)) die("ctx", e.msg);
    Tensor *y = op_group_norm(&c, a);
    if (!y) die("group_norm", c.err.msg);
    float *dy = malloc(y->n * sizeof(float));
    rng_normal_fill(rng, dy, y->n);
    memset(a->x->grad, 0, a->x->n * sizeof(float));
    memset(a->gamma->grad, 0, a->gamma->n * sizeof(float));
    memset(a->beta->grad, 0, a->beta->n * sizeof(float));
    if (tape_backward(&c, y, dy)) die("group_norm backward", c.err.msg);
    int N = a->x->shape[0], C = a->x->shape[1], cg = C / a->G;
    size_t HW = a->x->n / ((size_t)N * C), m = (size_t)cg * HW;
    double *dg = calloc((size_t)C, sizeof(double)), *dbt = calloc((size_t)C, sizeof(double));
    ErrAcc ye = {0, 0}, xe = {0, 0}, ge = {0, 0}, be = {0, 0};
    for (int n = 0; n < N; n++)
        for (int g = 0; g < a->G; g++) {
            size_t base = ((size_t)n * C + (size_t)g * cg) * HW;
            const float *x = a->x->data + base, *gy = dy + base;
            double mean = 0, var = 0, s1 = 0, s2 = 0;
            for (size_t i = 0; i < m; i++) mean += x[i];
            mean /= (double)m;
            for (size_t i = 0; i < m; i++) var += (x[i] - mean) * (x[i] - mean);
            double rstd = 1.0 / sqrt(var / (double)m + 1e-5);
            for (size_t i = 0; i < m; i++) {
                int ch = g * cg + (int)(i / HW);
                double xh = (x[i] - mean) * rstd, dxh = (double)gy[i] * a->gamma->data[ch];
                acc_add(&ye, y->data[base + i], xh * a->gamma->data[ch] + a->beta->data[ch]);
                s1 += dxh;
                s2 += dxh * xh;
                dg[ch] += gy[i] * xh;
                dbt[ch] += gy[i];
            }
            s1 /= (double)m;
            s2 /= (double)m;
            for (size_t i = 0; i < m; i++) {
                int ch = g * cg + (int)(i / HW);
                double xh = (x[i] - mean) * rstd, dxh = (double)gy[i] * a->gamma->data[ch];
                acc_add(&xe, a->x->grad[base + i], rstd * (dxh - s1 - xh * s2));
            }
        }
    for (int ch = 0; ch < C; ch++) {
        acc_add(&ge, a->gamma->grad[ch], dg[ch]);
        acc_add(&be, a->beta->grad[ch], dbt[ch]);
    }
    acc_check(&ye, "group_norm forward");
    acc_check(&xe, "group_norm dx");
    acc_check(&ge, "group_norm dgamma");
    acc_check(&be, "group_norm dbeta");
    free(dg);
    free(dbt);
    free(dy);
    ctx_free(&c);
}
#endif

/* Memory-bound: GB/s of the bytes it must move. Forward reads x and writes y (2 n floats);
   backward reads dy and x and adds into dx (4 n floats). */
static void bench_group_norm(int N, int C, int HW, int G, Rng *rng) {
    char shape[96];
    snprintf(shape, sizeof shape, "N=%d C=%d %dx%d G=%d", N, C, HW, HW, G);
#ifdef BENCH_HAVE_GROUP_NORM
    GroupNormArgs a = {param(4, (int[]){N, C, HW, HW}, rng, 1.0f), param(1, (int[]){C}, rng, 1.0f),
                       param(1, (int[]){C}, rng, 1.0f), G};
    check_group_norm(&a, rng);
    Timing t = time_op(op_group_norm, &a, rng, (SgemmShape){0, 0, 0}, (SgemmShape){0, 0, 0});
    double n = (double)a.x->n;
    printf("%-10s fwd  %s  %s\n", "group_norm", shape, g_tags);
    printf("            %.3f ms  %.1f GB/s  peak %.1f MiB\n", t.fwd_s * 1e3, 2 * n * 4 / t.fwd_s * 1e-9, t.peak_mib);
    printf("%-10s bwd  %s  %s\n", "group_norm", shape, g_tags);
    printf("            %.3f ms  %.1f GB/s  peak %.1f MiB\n", t.bwd_s * 1e3, 4 * n * 4 / t.bwd_s * 1e-9, t.peak_mib);
    param_free(a.x);
    param_free(a.gamma);
    param_free(a.beta);
#else
    (void)N, (void)C, (void)HW, (void)G, (void)rng;
    printf("group_norm: not implemented in this build (%s)\n", shape);
#endif
}

/* ---- --gemm: the FP32 GEMM kernels side by side ---------------------------------- */

typedef struct {
    int ta, tb, M, N, K;
    const float *A, *B;
    float *C;
} GemmArgs;

static void gemm_body(void *u) {
    GemmArgs *g = u;
    gemm_rm(g->ta, g->tb, g->M, g->N, g->K, 1.0f, g->A, g->ta ? g->M : g->K, g->B, g->tb ? g->K : g->N, 0.0f, g->C,
            g->N);
}

typedef struct {
    IntGemmKind k;
    int32_t *C;
    const int8_t *W;
    const uint8_t *A;
    int M, N, K4;
} IntGemmArgs;

static void int_gemm_body(void *u) {
    IntGemmArgs *g = u;
    int_gemm(g->k, g->C, (size_t)g->N, g->W, (size_t)g->K4 * 4, g->A, (size_t)g->N, g->M, g->N, g->K4, 7, 15);
}

// gemm_rm of one shape with each kernel this CPU runs, rounds interleaved, medians; the
// kernels' results are compared first (float rounding apart: relative L2 < 1e-5).
static void bench_gemm_shape(const char *what, int ta, int tb, int M, int N, int K, Rng *r) {
    GemmArgs g = {ta, tb, M, N, K, NULL, NULL, NULL};
    float *A = malloc((size_t)M * K * sizeof(float)), *B = malloc((size_t)K * N * sizeof(float));
    float *C[2] = {malloc((size_t)M * N * sizeof(float)), malloc((size_t)M * N * sizeof(float))};
    if (!A || !B || !C[0] || !C[1]) die("gemm", "out of memory");
    rng_normal_fill(r, A, (size_t)M * K);
    rng_normal_fill(r, B, (size_t)K * N);
    g.A = A;
    g.B = B;
    int nk = gemm_kernel_supported(GEMM_KERNEL_AVX512) ? 2 : 1;
    double t[2][ROUNDS];
    for (int k = 0; k < nk; k++) {
        gemm_kernel_set((GemmKernel)k);
        g.C = C[k];
        gemm_body(&g);
    }
    if (nk == 2 && bench_rel_l2(C[1], C[0], (size_t)M * N) > 1e-5) die("gemm", "avx512 and blas results differ");
    for (int i = 0; i < ROUNDS; i++)
        for (int k = 0; k < nk; k++) {
            gemm_kernel_set((GemmKernel)k);
            g.C = C[k];
            t[k][i] = bench_time(gemm_body, &g, g_seconds / ROUNDS);
        }
    double flop = 2.0 * M * N * K, gf[2];
    for (int k = 0; k < nk; k++) gf[k] = flop / bench_median(t[k], ROUNDS) * 1e-9;
    printf("gemm  %-30s %5d x %5d x %5d  %c%c  blas %6.1f GFLOP/s", what, M, N, K, ta ? 'T' : 'N', tb ? 'T' : 'N',
           gf[0]);
    if (nk == 2) printf("  avx512 %6.1f GFLOP/s  ratio %.2f", gf[1], gf[1] / gf[0]);
    if (!ta && !tb && K % 4 == 0) {
        // the export's integer GEMM of the same shape (int_gemm: s8 weights, u8 col4 activations,
        // int32 sums; 4-bit levels as the W4A4 layers hold them), its rounds after the FP ones
        int K4 = K / 4;
        int8_t *W = malloc((size_t)M * K);
        uint8_t *Aq = malloc((size_t)K * N);
        int32_t *Ci = malloc((size_t)M * N * sizeof(int32_t));
        if (!W || !Aq || !Ci) die("gemm", "out of memory");
        for (size_t i = 0; i < (size_t)M * K; i++) W[i] = (int8_t)((int)rng_below(r, 15) - 7);
        for (size_t i = 0; i < (size_t)K * N; i++) Aq[i] = (uint8_t)rng_below(r, 16);
        IntGemmArgs ig = {int_gemm_best(), Ci, W, Aq, M, N, K4};
        double ti[ROUNDS];
        for (int i = 0; i < ROUNDS; i++) ti[i] = bench_time(int_gemm_body, &ig, g_seconds / ROUNDS);
        double gi = flop / bench_median(ti, ROUNDS) * 1e-9;
        printf("  int8 %s %6.1f GOP/s  int8/%s %.2f", int_gemm_name(ig.k), gi, nk == 2 ? "avx512" : "blas",
               gi / gf[nk - 1]);
        free(W), free(Aq), free(Ci);
    }
    printf("  thr=%d\n", threads_get());
    free(A);
    free(B);
    free(C[0]);
    free(C[1]);
}

static void bench_gemm(Rng *r) {
    printf("FP32 GEMM kernels, gemm_rm: blas = OpenBLAS %s kernels (single-threaded per tile), avx512 = effdm's own\n",
           openblas_get_corename());
    bench_gemm_shape("teacher conv 32 ch, 8x8 x32", 0, 0, 32, 2048, 288, r);
    bench_gemm_shape("teacher conv 64 ch, 4x4 x32", 0, 0, 64, 512, 576, r);
    bench_gemm_shape("step conv, 1 image 8x8 x2", 0, 0, 64, 128, 576, r);
    bench_gemm_shape("step conv dW (dY col^T)", 0, 1, 64, 576, 128, r);
    bench_gemm_shape("step conv dcol (W^T dY)", 1, 0, 576, 128, 64, r);
    bench_gemm_shape("linear 4096 x 512 -> 512", 0, 1, 4096, 512, 512, r);
    bench_gemm_shape("Inception 147x147 conv", 0, 0, 32, 21609, 288, r);
    bench_gemm_shape("LDM 32x32 conv, 320 ch", 0, 0, 320, 1024, 2880, r);
    bench_gemm_shape("square", 0, 0, 1024, 1024, 1024, r);
}

static void usage(void) {
    fprintf(stderr, "usage: ops [--threads N] [--seconds S] [--gemm]\n"
                    "  --threads N   OpenMP and OpenBLAS threads (default: EFFDM_THREADS or all cores)\n"
                    "  --seconds S   minimum timing per measurement (default 1)\n"
                    "  --gemm        only the FP32 GEMM kernels (OpenBLAS, effdm's AVX-512) on the UNet's,\n"
                    "                the step's and Inception's shapes, and on the untransposed ones the\n"
                    "                exports' int8 GEMM (int_gemm, the best kernel this CPU runs)\n");
}

int main(int argc, char **argv) {
    threads_reexec_spinning(argv);  // as effdm does (util/threads.h)
    int threads = 0, gemm_only = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--gemm")) {
            gemm_only = 1;
            continue;
        }
        if (!strcmp(argv[i], "--threads") && i + 1 < argc) {
            char *end;
            long v = strtol(argv[++i], &end, 10);
            if (*end || v < 1 || v > 4096) {
                usage();
                return 2;
            }
            threads = (int)v;
        } else if (!strcmp(argv[i], "--seconds") && i + 1 < argc) {
            char *end;
            g_seconds = strtod(argv[++i], &end);
            if (*end || !(g_seconds > 0)) {
                usage();
                return 2;
            }
        } else {
            usage();
            return 2;
        }
    }
    threads_set(threads);
    const char *flags = bench_cpu_flags();
    snprintf(g_tags, sizeof g_tags, "thr=%d blas=%s gemm=%s simd=%s", threads_get(), threads_blas_name(),
             gemm_kernel_name(gemm_kernel_get()), strstr(flags, "avx512f") ? "avx512" : strstr(flags, "avx2") ? "avx2" : "none");
    const char *policy = getenv("OMP_WAIT_POLICY");
    const char *spin = getenv("GOMP_SPINCOUNT");
    printf("bench ops: threads=%d blas=%s (core %s) OMP_WAIT_POLICY=%s GOMP_SPINCOUNT=%s cpu flags: %s\n",
           threads_get(), threads_blas_name(), openblas_get_corename(), policy ? policy : "(default)",
           spin ? spin : "(default)", flags);
    Rng rng;
    rng_seed(&rng, 2024, 0);
    if (gemm_only) {
        bench_gemm(&rng);
        return 0;
    }
    bench_conv(8, 64, 32, 3, &rng);
    bench_conv(8, 128, 16, 3, &rng);
    bench_conv(16, 64, 8, 3, &rng);  // the small teacher's 8x8 latents: one GEMM per group
    bench_linear(4096, 512, 512, &rng);
    bench_attention(1, 16, 256, 64, &rng);
    bench_attention(32, 1, 16, 64, &rng);  // the small teacher's 4x4 latent self-attention
    bench_group_norm(8, 64, 32, 32, &rng);
    if (fflush(stdout) || ferror(stdout)) {
        fprintf(stderr, "bench ops: writing stdout failed\n");
        return 1;
    }
    return 0;
}
