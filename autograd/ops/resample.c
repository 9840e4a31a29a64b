/* resample.c: nearest x2 upsampling, average and max pooling, constant 2-D padding.
   All take x (N, C, H, W) and work plane by plane: every loop runs over the N*C planes,
   and a backward scatter stays inside its plane, so planes are independent outputs. */
#include <math.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many elements the planes run on one thread.
#define RS_PAR_MIN 16384

static int need_4d(Ctx *c, const char *op, const Tensor *x) {
    if (x->ndim == 4) return 0;
    char s[64];
    return err_set(&c->err, ERR_SHAPE, "%s: input %s: expected (N, C, H, W)", op, tensor_shape_str(x, s, sizeof s));
}

/* ---- nearest x2 upsampling ----------------------------------------------------- */

static void upsample_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0];
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1], H = (size_t)x->shape[2], W = (size_t)x->shape[3];
    const float *g = nd->out->grad;
    PAR_FOR(schedule(static), nd->out->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++) {
        const float *gp = g + p * 4 * H * W;
        float *dp = dx + p * H * W;
        for (size_t h = 0; h < H; h++) {
            const float *g0 = gp + 2 * h * 2 * W, *g1 = g0 + 2 * W;  // output rows 2h and 2h+1
            for (size_t w = 0; w < W; w++) dp[h * W + w] += g0[2 * w] + g0[2 * w + 1] + g1[2 * w] + g1[2 * w + 1];
        }
    });
}

static Tensor *upsample_nearest2x_op(Ctx *c, Tensor *x) {
    if (!x) return NULL;
    if (need_4d(c, "upsample_nearest2x", x)) return NULL;
    Tensor *out = tensor_new4(c, x->shape[0], x->shape[1], 2 * x->shape[2], 2 * x->shape[3]);
    if (!out) return NULL;
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1], H = (size_t)x->shape[2], W = (size_t)x->shape[3];
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), out->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++) {
        const float *xp = xd + p * H * W;
        float *yp = y + p * 4 * H * W;
        for (size_t h = 0; h < H; h++) {
            float *y0 = yp + 2 * h * 2 * W;
            for (size_t w = 0; w < W; w++) y0[2 * w] = y0[2 * w + 1] = xp[h * W + w];
            memcpy(y0 + 2 * W, y0, 2 * W * sizeof(float));
        }
    });
    tape_record(c, OP_UPSAMPLE_NEAREST2X, upsample_backward, out, &x, 1);
    return out;
}

/* ---- pooling --------------------------------------------------------------------- */

// Checks k, stride, pad as torch does (pad at most half the kernel) and computes the output
// size (floor mode). 0 or an error in c->err.
static int pool_shape(Ctx *c, const char *op, const Tensor *x, int k, int stride, int pad, int *Ho, int *Wo) {
    if (need_4d(c, op, x)) return c->err.code;
    if (k <= 0 || stride <= 0 || pad < 0 || pad > k / 2)
        return err_set(&c->err, ERR_VALUE, "%s: kernel %d, stride %d, pad %d: need k, stride > 0 and 0 <= pad <= k/2",
                       op, k, stride, pad);
    int H = x->shape[2], W = x->shape[3];
    if (H + 2 * pad < k || W + 2 * pad < k) {
        char s[64];
        return err_set(&c->err, ERR_SHAPE, "%s: input %s is smaller than kernel %d with pad %d", op,
                       tensor_shape_str(x, s, sizeof s), k, pad);
    }
    *Ho = (H + 2 * pad - k) / stride + 1;
    *Wo = (W + 2 * pad - k) / stride + 1;
    return 0;
}

// Window of output (oh, ow) clipped to the input: rows [*h0, *h1), cols [*w0, *w1).
static void pool_window(int oh, int ow, int k, int stride, int pad, int H, int W, int *h0, int *h1, int *w0,
                        int *w1) {
    int hs = oh * stride - pad, ws = ow * stride - pad;
    *h0 = hs < 0 ? 0 : hs;
    *w0 = ws < 0 ? 0 : ws;
    *h1 = hs + k < H ? hs + k : H;
    *w1 = ws + k < W ? ws + k : W;
}

// Outputs ow in [*lo, *hi) of a row have their whole window inside the input's columns
// (ow stride - pad >= 0 and ow stride - pad + k <= W): no clipping, so the pooling loops can
// run over ow innermost (vectorized for stride 1), each output still taking its elements in
// the plain loop's order (rows, then columns), which keeps the results bit for bit.
static void pool_interior(int k, int stride, int pad, int W, int Wo, int *lo, int *hi) {
    *lo = (pad + stride - 1) / stride;
    *hi = W - k + pad >= 0 ? (W - k + pad) / stride + 1 : 0;
    if (*hi > Wo) *hi = Wo;
    if (*lo > *hi) *lo = *hi;
}

// Widest output row pool_interior's loops keep on the stack; wider rows take the plain loop.
#define POOL_ROW_MAX 1024

// iarg: k, stride, pad, count_include_pad
static void avg_pool_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *out = nd->out;
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    int k = nd->iarg[0], stride = nd->iarg[1], pad = nd->iarg[2], incl = nd->iarg[3];
    int H = x->shape[2], W = x->shape[3], Ho = out->shape[2], Wo = out->shape[3];
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1];
    const float *g = out->grad;
    PAR_FOR(schedule(static), x->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++) {
        const float *gp = g + p * (size_t)Ho * Wo;
        float *dp = dx + p * (size_t)H * W;
        for (int oh = 0; oh < Ho; oh++) {
            for (int ow = 0; ow < Wo; ow++) {
                int h0, h1, w0, w1;
                pool_window(oh, ow, k, stride, pad, H, W, &h0, &h1, &w0, &w1);
                int cnt = incl ? k * k : (h1 - h0) * (w1 - w0);
                float v = gp[oh * Wo + ow] / (float)cnt;
                for (int h = h0; h < h1; h++)
                    for (int w = w0; w < w1; w++) dp[h * W + w] += v;
            }
        }
    });
}

static Tensor *avg_pool2d_op(Ctx *c, Tensor *x, int k, int stride, int pad, int count_include_pad) {
    if (!x) return NULL;
    int Ho, Wo;
    if (pool_shape(c, "avg_pool2d", x, k, stride, pad, &Ho, &Wo)) return NULL;
    Tensor *out = tensor_new4(c, x->shape[0], x->shape[1], Ho, Wo);
    if (!out) return NULL;
    int H = x->shape[2], W = x->shape[3];
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1];
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++) {
        const float *xp = xd + p * (size_t)H * W;
        float *yp = y + p * (size_t)Ho * Wo;
        int lo, hi;
        pool_interior(k, stride, pad, W, Wo, &lo, &hi);
        if (Wo > POOL_ROW_MAX) lo = hi = 0;
        for (int oh = 0; oh < Ho; oh++) {
            for (int ow = 0; ow < Wo; ow++) {
                if (ow == lo && lo < hi) ow = hi;  // the interior runs below
                if (ow >= Wo) break;
                int h0, h1, w0, w1;
                pool_window(oh, ow, k, stride, pad, H, W, &h0, &h1, &w0, &w1);
                // floor mode keeps every window inside the padded input, so the full
                // window is k*k (torch's pool_size before clipping)
                int cnt = count_include_pad ? k * k : (h1 - h0) * (w1 - w0);
                float s = 0;
                for (int h = h0; h < h1; h++)
                    for (int w = w0; w < w1; w++) s += xp[h * W + w];
                yp[oh * Wo + ow] = s / (float)cnt;
            }
            if (lo < hi) {
                int h0, h1, w0, w1;
                pool_window(oh, lo, k, stride, pad, H, W, &h0, &h1, &w0, &w1);
                float acc[POOL_ROW_MAX], cnt = (float)(count_include_pad ? k * k : (h1 - h0) * k);
                for (int ow = lo; ow < hi; ow++) acc[ow] = 0;
                for (int h = h0; h < h1; h++)
                    for (int j = 0; j < k; j++) {
                        const float *src = xp + (size_t)h * W + (lo * stride - pad + j);
                        float *a = acc + lo;
                        if (stride == 1)
                            for (int i = 0; i < hi - lo; i++) a[i] += src[i];
                        else
                            for (int i = 0; i < hi - lo; i++) a[i] += src[(size_t)i * stride];
                    }
                for (int ow = lo; ow < hi; ow++) yp[oh * Wo + ow] = acc[ow] / cnt;
            }
        }
    });
    TapeNode *nd = tape_record(c, OP_AVG_POOL2D, avg_pool_backward, out, &x, 1);
    if (nd) {
        nd->iarg[0] = k;
        nd->iarg[1] = stride;
        nd->iarg[2] = pad;
        nd->iarg[3] = count_include_pad != 0;
    }
    return out;
}

// saved: int argmax[N*C*Ho*Wo], the index inside its input plane of each output's max
static void max_pool_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *out = nd->out;
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    const int *arg = nd->saved;
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1];
    size_t HW = (size_t)x->shape[2] * (size_t)x->shape[3], HWo = (size_t)out->shape[2] * (size_t)out->shape[3];
    const float *g = out->grad;
    PAR_FOR(schedule(static), x->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++)
        for (size_t o = 0; o < HWo; o++) dx[p * HW + (size_t)arg[p * HWo + o]] += g[p * HWo + o];);
}

static Tensor *max_pool2d_op(Ctx *c, Tensor *x, int k, int stride, int pad) {
    if (!x) return NULL;
    int Ho, Wo;
    if (pool_shape(c, "max_pool2d", x, k, stride, pad, &Ho, &Wo)) return NULL;
    Tensor *out = tensor_new4(c, x->shape[0], x->shape[1], Ho, Wo);
    if (!out) return NULL;
    int need = tape_needs_grad(c, &x, 1);
    int *arg = need ? ctx_alloc(c, (out->n ? out->n : 1) * sizeof(int)) : NULL;
    if (need && !arg) return NULL;
    int H = x->shape[2], W = x->shape[3];
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1];
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++) {
        const float *xp = xd + p * (size_t)H * W;
        float *yp = y + p * (size_t)Ho * Wo;
        int lo, hi;
        pool_interior(k, stride, pad, W, Wo, &lo, &hi);
        if (arg || Wo > POOL_ROW_MAX) lo = hi = 0;  // the backward needs each argmax: plain loop
        for (int oh = 0; oh < Ho; oh++) {
            if (lo < hi) {
                int h0, h1, w0, w1;
                pool_window(oh, lo, k, stride, pad, H, W, &h0, &h1, &w0, &w1);
                float acc[POOL_ROW_MAX];
                for (int ow = lo; ow < hi; ow++) acc[ow] = -INFINITY;
                for (int h = h0; h < h1; h++)
                    for (int j = 0; j < k; j++) {
                        const float *src = xp + (size_t)h * W + (lo * stride - pad + j);
                        float *a = acc + lo;
                        for (int i = 0; i < hi - lo; i++) {
                            float v = src[(size_t)i * stride];
                            a[i] = v > a[i] || isnan(v) ? v : a[i];  // as the plain loop below
                        }
                    }
                for (int ow = lo; ow < hi; ow++) yp[oh * Wo + ow] = acc[ow];
            }
            for (int ow = 0; ow < Wo; ow++) {
                if (ow == lo && lo < hi) ow = hi;  // done above
                if (ow >= Wo) break;
                int h0, h1, w0, w1;
                pool_window(oh, ow, k, stride, pad, H, W, &h0, &h1, &w0, &w1);
                // pad <= k/2 leaves at least one input element in every window; padding
                // never wins (it is -inf). Strict > keeps the first max; a NaN wins, as in
                // torch's kernel.
                int best = h0 * W + w0;
                float mx = -INFINITY;
                for (int h = h0; h < h1; h++) {
                    for (int w = w0; w < w1; w++) {
                        float v = xp[h * W + w];
                        if (v > mx || isnan(v)) {
                            mx = v;
                            best = h * W + w;
                        }
                    }
                }
                yp[oh * Wo + ow] = mx;
                if (arg) arg[p * (size_t)Ho * Wo + (size_t)(oh * Wo + ow)] = best;
            }
        }
    });
    TapeNode *nd = tape_record(c, OP_MAX_POOL2D, max_pool_backward, out, &x, 1);
    if (nd) nd->saved = arg;
    return out;
}

/* ---- constant padding -------------------------------------------------------------- */

// iarg: left, top
static void pad_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *out = nd->out;
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    size_t left = (size_t)nd->iarg[0], top = (size_t)nd->iarg[1];
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1], H = (size_t)x->shape[2], W = (size_t)x->shape[3];
    size_t Ho = (size_t)out->shape[2], Wo = (size_t)out->shape[3];
    const float *g = out->grad;
    PAR_FOR(schedule(static), out->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++)
        for (size_t h = 0; h < H; h++) {
            const float *gr = g + (p * Ho + top + h) * Wo + left;
            float *dr = dx + (p * H + h) * W;
            for (size_t w = 0; w < W; w++) dr[w] += gr[w];
        });
}

static Tensor *pad2d_op(Ctx *c, Tensor *x, int left, int right, int top, int bottom, float value) {
    if (!x) return NULL;
    if (need_4d(c, "pad2d", x)) return NULL;
    if (left < 0 || right < 0 || top < 0 || bottom < 0) {
        err_set(&c->err, ERR_VALUE, "pad2d: negative padding (left %d, right %d, top %d, bottom %d)", left, right,
                top, bottom);
        return NULL;
    }
    int H = x->shape[2], W = x->shape[3];
    Tensor *out = tensor_new4(c, x->shape[0], x->shape[1], H + top + bottom, W + left + right);
    if (!out) return NULL;
    size_t P = (size_t)x->shape[0] * (size_t)x->shape[1], Ho = (size_t)out->shape[2], Wo = (size_t)out->shape[3];
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), out->n >= RS_PAR_MIN,
    for (size_t p = 0; p < P; p++) {
        float *yp = y + p * Ho * Wo;
        for (size_t i = 0; i < Ho * Wo; i++) yp[i] = value;
        for (size_t h = 0; h < (size_t)H; h++)
            memcpy(yp + ((size_t)top + h) * Wo + (size_t)left, xd + (p * (size_t)H + h) * (size_t)W,
                   (size_t)W * sizeof(float));
    });
    TapeNode *nd = tape_record(c, OP_PAD2D, pad_backward, out, &x, 1);
    if (nd) {
        nd->iarg[0] = left;
        nd->iarg[1] = top;
    }
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_upsample_nearest2x(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_UPSAMPLE_NEAREST2X, upsample_nearest2x_op(c, x), 0.0);
}

Tensor *t_avg_pool2d(Ctx *c, Tensor *x, int k, int stride, int pad, int count_include_pad) {
    PROF_OP(c, OP_AVG_POOL2D, avg_pool2d_op(c, x, k, stride, pad, count_include_pad), 0.0);
}

Tensor *t_max_pool2d(Ctx *c, Tensor *x, int k, int stride, int pad) {
    PROF_OP(c, OP_MAX_POOL2D, max_pool2d_op(c, x, k, stride, pad), 0.0);
}

Tensor *t_pad2d(Ctx *c, Tensor *x, int left, int right, int top, int bottom, float value) {
    PROF_OP(c, OP_PAD2D, pad2d_op(c, x, left, right, top, bottom, value), 0.0);
}
