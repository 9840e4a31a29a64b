/* conv.c: 2-D convolution (cross-correlation, groups = 1) as im2col + cblas_sgemm.

   Layouts: x (N, Cin, H, W); w (Cout, Cin, kh, kw), read as a (Cout, K) matrix with
   K = Cin kh kw; y (N, Cout, Ho, Wo); P = Ho Wo output positions per image.
   Images are processed in groups of G: col (K, G P) holds the patches of G images side
   by side (row r = (ci, ki, kj), w's column order; image g in columns [g P, (g+1) P)),
   so one GEMM covers the group: small feature maps (the 8x8 latents of our UNet) would
   otherwise give GEMMs too small to run fast. G is the largest count whose col fits in
   CONV_COL_BUDGET bytes; col and the (Cout, G P) staging block come from the Ctx arena
   and are released when the op returns.
   Backward recomputes col instead of keeping it from the forward pass (it is kh kw times
   the size of x): dw += dY col^T, dcol = w^T dY, then col2im adds dcol into dx.
   1x1 convolutions with stride 1 and no padding need no im2col: x itself is the (Cin, P)
   matrix of each image. */
#include <limits.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/ops/gemm_util.h"

// Bytes of im2col scratch one group may use: large enough that a group of small images
// makes a GEMM of a few hundred columns, small enough to stay far below the activations.
#define CONV_COL_BUDGET ((size_t)8 << 20)

typedef struct {
    int N, Cin, H, W, Cout, kh, kw, sh, sw, ph, pw, Ho, Wo;
    int K;      // Cin kh kw
    size_t P;   // Ho Wo
} ConvGeom;

// iarg layout of a conv node
enum { CV_SH, CV_SW, CV_PH, CV_PW };

static int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* Output columns ow whose input column iw = ow sw - pw + kj lies in [0, W): [*lo, *hi). */
static void valid_cols(const ConvGeom *s, int kj, int *lo, int *hi) {
    int a = s->pw - kj;                       // ow sw >= a
    int l = a > 0 ? (a + s->sw - 1) / s->sw : 0;
    int h = floor_div(s->W - 1 + s->pw - kj, s->sw) + 1;  // ow sw <= W - 1 + pw - kj
    if (h > s->Wo) h = s->Wo;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* col (K, ld): columns [g P, (g+1) P) of row (ci, ki, kj) get
   x[g, ci, oh sh - ph + ki, ow sw - pw + kj] (0 in the padding), for G images x (G, Cin, H, W). */
static void im2col(float *col, size_t ld, const float *x, int G, const ConvGeom *s) {
    int khw = s->kh * s->kw;
#pragma omp parallel for schedule(static) collapse(2)
    for (int r = 0; r < s->K; r++) {
        for (int g = 0; g < G; g++) {
            int ci = r / khw, ki = (r / s->kw) % s->kh, kj = r % s->kw;
            const float *xp = x + ((size_t)g * s->Cin + ci) * s->H * s->W;
            float *dst = col + (size_t)r * ld + (size_t)g * s->P;
            int lo, hi;
            valid_cols(s, kj, &lo, &hi);
            for (int oh = 0; oh < s->Ho; oh++) {
                int ih = oh * s->sh - s->ph + ki;
                float *row = dst + (size_t)oh * s->Wo;
                if (ih < 0 || ih >= s->H || lo == hi) {
                    memset(row, 0, (size_t)s->Wo * sizeof(float));
                    continue;
                }
                const float *xrow = xp + (size_t)ih * s->W - s->pw + kj;  // xrow[ow sw] = x[ih, ow sw - pw + kj]
                if (lo > 0) memset(row, 0, (size_t)lo * sizeof(float));
                if (s->sw == 1) {
                    memcpy(row + lo, xrow + lo, (size_t)(hi - lo) * sizeof(float));
                } else {
                    for (int ow = lo; ow < hi; ow++) row[ow] = xrow[ow * s->sw];
                }
                if (hi < s->Wo) memset(row + hi, 0, (size_t)(s->Wo - hi) * sizeof(float));
            }
        }
    }
}

/* dx (G, Cin, H, W) += col2im(col (K, ld)), the adjoint of im2col. Each thread owns whole
   rows (g, ci, ih) of dx and adds their contributions in fixed (ki, kj, ow) order, so
   the result does not depend on the thread count. */
static void col2im_add(float *dx, const float *col, size_t ld, int G, const ConvGeom *s) {
#pragma omp parallel for schedule(static) collapse(3)
    for (int g = 0; g < G; g++) {
        for (int ci = 0; ci < s->Cin; ci++) {
            for (int ih = 0; ih < s->H; ih++) {
                float *dxrow = dx + (((size_t)g * s->Cin + ci) * s->H + ih) * s->W;
                for (int ki = 0; ki < s->kh; ki++) {
                    int t = ih + s->ph - ki;  // = oh sh
                    if (t < 0 || t % s->sh) continue;
                    int oh = t / s->sh;
                    if (oh >= s->Ho) continue;
                    for (int kj = 0; kj < s->kw; kj++) {
                        int r = (ci * s->kh + ki) * s->kw + kj, lo, hi;
                        valid_cols(s, kj, &lo, &hi);
                        const float *src = col + (size_t)r * ld + (size_t)g * s->P + (size_t)oh * s->Wo;
                        float *d = dxrow - s->pw + kj;  // d[ow sw] = dx[ih, ow sw - pw + kj]
                        if (s->sw == 1) {
                            for (int ow = lo; ow < hi; ow++) d[ow] += src[ow];
                        } else {
                            for (int ow = lo; ow < hi; ow++) d[ow * s->sw] += src[ow];
                        }
                    }
                }
            }
        }
    }
}

/* y (G, Cout, P) = tmp (Cout, G P) + b (b may be NULL). */
static void unstage_output(float *y, const float *tmp, const float *b, int G, const ConvGeom *s) {
    size_t gp = (size_t)G * s->P;
#pragma omp parallel for schedule(static) collapse(2)
    for (int g = 0; g < G; g++) {
        for (int co = 0; co < s->Cout; co++) {
            float *dst = y + ((size_t)g * s->Cout + co) * s->P;
            const float *src = tmp + (size_t)co * gp + (size_t)g * s->P;
            float bias = b ? b[co] : 0.0f;
            for (size_t p = 0; p < s->P; p++) dst[p] = src[p] + bias;
        }
    }
}

/* tmp (Cout, G P) = dy (G, Cout, P), the transpose of unstage_output. */
static void stage_grad(float *tmp, const float *dy, int G, const ConvGeom *s) {
    size_t gp = (size_t)G * s->P;
#pragma omp parallel for schedule(static) collapse(2)
    for (int g = 0; g < G; g++) {
        for (int co = 0; co < s->Cout; co++)
            memcpy(tmp + (size_t)co * gp + (size_t)g * s->P, dy + ((size_t)g * s->Cout + co) * s->P,
                   s->P * sizeof(float));
    }
}

static int is_pointwise(const ConvGeom *s) {
    return s->kh == 1 && s->kw == 1 && s->sh == 1 && s->sw == 1 && s->ph == 0 && s->pw == 0;
}

// Images per im2col group (>= 1): as many as CONV_COL_BUDGET holds.
static int group_size(const ConvGeom *s) {
    size_t per = (size_t)s->K * s->P * sizeof(float);
    size_t g = per ? CONV_COL_BUDGET / per : (size_t)s->N;
    if (g < 1) g = 1;
    if (g > (size_t)s->N) g = (size_t)s->N;
    return (int)g;
}

// 0, or -1 when the scratch did not fit in the arena (c->err says so).
static int conv_forward(Ctx *c, float *y, const float *x, const float *w, const float *b, const ConvGeom *s) {
    size_t xs = (size_t)s->Cin * s->H * s->W, ys = (size_t)s->Cout * s->P;
    if (is_pointwise(s)) {
        for (int n = 0; n < s->N; n++) {
            float *yn = y + n * ys;
            if (b) {
#pragma omp parallel for schedule(static)
                for (int co = 0; co < s->Cout; co++)
                    for (size_t p = 0; p < s->P; p++) yn[co * s->P + p] = b[co];
            }
            gemm_rm(0, 0, s->Cout, (int)s->P, s->Cin, 1.0f, w, s->Cin, x + n * xs, (int)s->P, b ? 1.0f : 0.0f,
                    yn, (int)s->P);
        }
        return 0;
    }
    int G = group_size(s);
    size_t mark = arena_mark(&c->arena);
    float *col = ctx_alloc(c, (size_t)s->K * G * s->P * sizeof(float));
    float *tmp = G > 1 ? ctx_alloc(c, (size_t)s->Cout * G * s->P * sizeof(float)) : NULL;
    if (!col || (G > 1 && !tmp)) return -1;
    for (int n0 = 0; n0 < s->N; n0 += G) {
        int g = s->N - n0 < G ? s->N - n0 : G;
        int gp = g * (int)s->P;
        im2col(col, (size_t)gp, x + n0 * xs, g, s);
        if (g == 1) {
            float *yn = y + n0 * ys;
            if (b) {
#pragma omp parallel for schedule(static)
                for (int co = 0; co < s->Cout; co++)
                    for (size_t p = 0; p < s->P; p++) yn[co * s->P + p] = b[co];
            }
            gemm_rm(0, 0, s->Cout, gp, s->K, 1.0f, w, s->K, col, gp, b ? 1.0f : 0.0f, yn, gp);
        } else {
            gemm_rm(0, 0, s->Cout, gp, s->K, 1.0f, w, s->K, col, gp, 0.0f, tmp, gp);
            unstage_output(y + n0 * ys, tmp, b, g, s);
        }
    }
    arena_release(&c->arena, mark);
    return 0;
}

static void geom_from(ConvGeom *s, const Tensor *x, const Tensor *w, const int *iarg) {
    s->N = x->shape[0];
    s->Cin = x->shape[1];
    s->H = x->shape[2];
    s->W = x->shape[3];
    s->Cout = w->shape[0];
    s->kh = w->shape[2];
    s->kw = w->shape[3];
    s->sh = iarg[CV_SH];
    s->sw = iarg[CV_SW];
    s->ph = iarg[CV_PH];
    s->pw = iarg[CV_PW];
    s->Ho = (s->H + 2 * s->ph - s->kh) / s->sh + 1;
    s->Wo = (s->W + 2 * s->pw - s->kw) / s->sw + 1;
    s->K = s->Cin * s->kh * s->kw;
    s->P = (size_t)s->Ho * s->Wo;
}

static void conv_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *w = nd->in[1], *b = nd->in[2];
    ConvGeom s;
    geom_from(&s, x, w, nd->iarg);
    const float *dy = nd->out->grad;
    float *dx = x->requires_grad ? tensor_grad(c, x) : NULL;
    float *dw = w->requires_grad ? tensor_grad(c, w) : NULL;
    float *db = b && b->requires_grad ? tensor_grad(c, b) : NULL;
    if ((x->requires_grad && !dx) || (w->requires_grad && !dw) || (b && b->requires_grad && !db)) return;
    size_t xs = (size_t)s.Cin * s.H * s.W, ys = (size_t)s.Cout * s.P;
    int P = (int)s.P;
    if (db) gemm_channel_sum_add(db, dy, s.N, s.Cout, s.P);
    if (is_pointwise(&s)) {
        // beta = 1 throughout: the batch entries (and other uses of w, x) add into one gradient
        for (int n = 0; n < s.N; n++) {
            if (dw) gemm_rm(0, 1, s.Cout, s.Cin, P, 1.0f, dy + n * ys, P, x->data + n * xs, P, 1.0f, dw, s.Cin);
            if (dx) gemm_rm(1, 0, s.Cin, P, s.Cout, 1.0f, w->data, s.Cin, dy + n * ys, P, 1.0f, dx + n * xs, P);
        }
        return;
    }
    if (!dw && !dx) return;
    int G = group_size(&s);
    size_t mark = arena_mark(&c->arena);
    float *col = ctx_alloc(c, (size_t)s.K * G * s.P * sizeof(float));
    float *tmp = G > 1 ? ctx_alloc(c, (size_t)s.Cout * G * s.P * sizeof(float)) : NULL;
    if (!col || (G > 1 && !tmp)) return;
    for (int n0 = 0; n0 < s.N; n0 += G) {
        int g = s.N - n0 < G ? s.N - n0 : G;
        int gp = g * P;
        const float *dyg = dy + n0 * ys;  // (Cout, g P) after staging
        if (g > 1) {
            stage_grad(tmp, dyg, g, &s);
            dyg = tmp;
        }
        if (dw) {  // dw (Cout, K) += dY (Cout, gP) col^T; beta = 1 sums the groups in order
            im2col(col, (size_t)gp, x->data + n0 * xs, g, &s);
            gemm_rm(0, 1, s.Cout, s.K, gp, 1.0f, dyg, gp, col, gp, 1.0f, dw, s.K);
        }
        if (dx) {  // dcol (K, gP) = w^T dY, reusing col's memory
            gemm_rm(1, 0, s.K, gp, s.Cout, 1.0f, w->data, s.K, dyg, gp, 0.0f, col, gp);
            col2im_add(dx + n0 * xs, col, (size_t)gp, g, &s);
        }
    }
    arena_release(&c->arena, mark);
}

Tensor *t_conv2d_ex(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride_h, int stride_w, int pad_h, int pad_w) {
    if (!x || !w) return NULL;
    char sx[96], sw[96];
    if (x->ndim != 4 || w->ndim != 4 || x->shape[1] != w->shape[1]) {
        err_set(&c->err, ERR_SHAPE, "conv2d: x %s must be (N, Cin, H, W) and w %s (Cout, Cin, kh, kw)",
                tensor_shape_str(x, sx, sizeof sx), tensor_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    if (b && (b->ndim != 1 || b->shape[0] != w->shape[0])) {
        err_set(&c->err, ERR_SHAPE, "conv2d: bias %s must be (Cout) for w %s", tensor_shape_str(b, sx, sizeof sx),
                tensor_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    if (stride_h < 1 || stride_w < 1 || pad_h < 0 || pad_w < 0 || w->shape[2] < 1 || w->shape[3] < 1 ||
        x->shape[2] + 2 * pad_h < w->shape[2] || x->shape[3] + 2 * pad_w < w->shape[3]) {
        err_set(&c->err, ERR_SHAPE, "conv2d: x %s, w %s, stride (%d, %d), pad (%d, %d) give no output",
                tensor_shape_str(x, sx, sizeof sx), tensor_shape_str(w, sw, sizeof sw), stride_h, stride_w, pad_h,
                pad_w);
        return NULL;
    }
    int iarg[4] = {stride_h, stride_w, pad_h, pad_w};
    ConvGeom s;
    geom_from(&s, x, w, iarg);
    // cblas dimensions are int: one group's columns (at most N P) and K must fit
    if ((size_t)s.N * s.P > INT_MAX || (size_t)s.K > INT_MAX / 2) {
        err_set(&c->err, ERR_SHAPE, "conv2d: x %s with w %s exceeds int GEMM dimensions",
                tensor_shape_str(x, sx, sizeof sx), tensor_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    Tensor *y = tensor_new4(c, s.N, s.Cout, s.Ho, s.Wo);
    if (!y) return NULL;
    if (conv_forward(c, y->data, x->data, w->data, b ? b->data : NULL, &s)) return NULL;
    Tensor *in[3] = {x, w, b};
    TapeNode *nd = tape_record(c, OP_CONV2D, conv_backward, y, in, 3);
    if (nd) memcpy(nd->iarg, iarg, sizeof iarg);
    return y;
}

Tensor *t_conv2d(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride, int pad) {
    return t_conv2d_ex(c, x, w, b, stride, stride, pad, pad);
}
