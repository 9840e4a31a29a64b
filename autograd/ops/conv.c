/* conv.c: 2-D convolution (cross-correlation, groups = 1) as im2col + cblas_sgemm.

   Layouts: x (N, Cin, H, W); w (Cout, Cin, kh, kw), read as a (Cout, K) matrix with
   K = Cin kh kw; y (N, Cout, Ho, Wo); P = Ho Wo output positions per image.

   col (K, G P) holds the patches of G images side by side: row r = (ci, ki, kj) in w's
   column order, image g in columns [g P, (g+1) P). The batch is split into the fewest
   equal groups whose col fits in CONV_COL_BUDGET (fewer, larger im2col loops: each
   hand-over between OpenMP and OpenBLAS threads costs time). Then either
   - per image: one GEMM per image reads its columns of col (leading dimension G P) and
     writes its output in place, when P >= CONV_GEMM_MIN_COLS; or
   - per group: one GEMM for the whole group into a (M, G P) staging block, then copied
     to (G, M, P): small feature maps (the 8x8 latents of our UNet) would otherwise give
     GEMMs too narrow to run fast.
   1x1 convolutions with stride 1 and no padding done per image need no im2col: x itself
   is the (Cin, P) matrix of each image. All scratch comes from the Ctx arena and is
   released before the op (or its backward) returns.

   Backward recomputes col instead of keeping it from the forward pass (kh kw times the
   size of x; memory matters more): dw += dY col^T. For dx, a stride-1 convolution's input
   gradient is itself a stride-1 convolution: of dY, padded by k - 1 - pad, with w flipped
   in both spatial axes and its channel axes swapped, so it runs as the forward does (one
   GEMM with inner dimension Cout kh kw, no scatter). Strided convolutions (and padding
   >= kernel size) take the adjoint route: dcol = w^T dY, then col2im adds dcol into dx. */
#include <limits.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "autograd/ops/gemm_util.h"
#include "util/par.h"

// Bytes of im2col scratch a group may use: 8 MiB keeps a few 32x32 images of 64
// channels (2.3 MiB each) or a whole batch of 8x8 latents per group, while staying well
// below the activations of a training step.
#define CONV_COL_BUDGET ((size_t)8 << 20)
// Output positions per image from which one GEMM per image runs as fast as one per group,
// so the staging copy is skipped. Measured (one thread, 3x3, 64-128 channels): staging
// 10% faster at 8x8 and 16x16, equal at 32x32.
#define CONV_GEMM_MIN_COLS 1024

/* One im2col pass: images (C, H, W) -> col (C kh kw, Ho Wo). */
typedef struct {
    int C, H, W, kh, kw, sh, sw, ph, pw, Ho, Wo;
    int K;     // C kh kw
    size_t P;  // Ho Wo
} Patch;

static Patch patch_make(int C, int H, int W, int kh, int kw, int sh, int sw, int ph, int pw) {
    Patch p = {C, H, W, kh, kw, sh, sw, ph, pw, 0, 0, 0, 0};
    p.Ho = (H + 2 * ph - kh) / sh + 1;
    p.Wo = (W + 2 * pw - kw) / sw + 1;
    p.K = C * kh * kw;
    p.P = (size_t)p.Ho * p.Wo;
    return p;
}

static int patch_is_pointwise(const Patch *p) {
    return p->kh == 1 && p->kw == 1 && p->sh == 1 && p->sw == 1 && p->ph == 0 && p->pw == 0;
}

static int floor_div(int a, int b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }

/* Output columns ow whose input column iw = ow sw - pw + kj lies in [0, W): [*lo, *hi). */
static void valid_cols(const Patch *p, int kj, int *lo, int *hi) {
    int a = p->pw - kj;  // ow sw >= a
    int l = a > 0 ? (a + p->sw - 1) / p->sw : 0;
    int h = floor_div(p->W - 1 + p->pw - kj, p->sw) + 1;  // ow sw <= W - 1 + pw - kj
    if (h > p->Wo) h = p->Wo;
    if (l > h) l = h;
    *lo = l;
    *hi = h;
}

/* One image's part of a col row (ci, ki, kj) when stride is 1 and Wo == W (the usual
   "same" convolutions): output rows then read consecutive input rows at the same stride,
   so all valid rows are one block copy of the plane xp (H, W) shifted by ki - ph rows and
   kj - pw columns; the columns that wrapped around the row ends are zeroed after. For 8x8
   latents this is one memcpy instead of 3 small calls per output row (in perf, im2col
   was a fifth of a teacher-size convolution). */
static void im2col_row_same_width(float *dst, const float *xp, int ki, int kj, const Patch *p) {
    int W = p->W, Ho = p->Ho, lo, hi;
    int oh0 = p->ph - ki > 0 ? p->ph - ki : 0;               // first oh with ih = oh - ph + ki >= 0
    int oh1 = p->H + p->ph - ki < Ho ? p->H + p->ph - ki : Ho;  // end of the oh with ih < H
    if (oh1 < oh0) oh1 = oh0;
    if (oh0 > 0) memset(dst, 0, (size_t)oh0 * W * sizeof(float));
    if (oh1 < Ho) memset(dst + (size_t)oh1 * W, 0, (size_t)(Ho - oh1) * W * sizeof(float));
    if (oh1 == oh0) return;
    float *blk = dst + (size_t)oh0 * W;
    // blk[e] = xp[s0 + e]; elements whose source falls outside the plane are all in
    // wrapped columns (a valid (ih, iw) is inside it), so they are zeroed instead
    long s0 = (long)(oh0 - p->ph + ki) * W + (kj - p->pw), n = (long)(oh1 - oh0) * W, plane = (long)p->H * W;
    long e0 = s0 < 0 ? -s0 : 0, e1 = s0 + n > plane ? plane - s0 : n;
    if (e1 < e0) e1 = e0;
    if (e0 > 0) memset(blk, 0, (size_t)e0 * sizeof(float));
    if (e1 > e0) memcpy(blk + e0, xp + s0 + e0, (size_t)(e1 - e0) * sizeof(float));
    if (n > e1) memset(blk + e1, 0, (size_t)(n - e1) * sizeof(float));
    // wrapped columns, a few per row: column-wise, so the compiler does not turn each
    // row's 1-element run into a memset call
    valid_cols(p, kj, &lo, &hi);
    for (int ow = 0; ow < lo; ow++)
        for (int r = 0; r < oh1 - oh0; r++) blk[(size_t)r * W + ow] = 0.0f;
    for (int ow = hi; ow < W; ow++)
        for (int r = 0; r < oh1 - oh0; r++) blk[(size_t)r * W + ow] = 0.0f;
}

/* col (K, ld): columns [g P, (g+1) P) of row (ci, ki, kj) get
   x[g, ci, oh sh - ph + ki, ow sw - pw + kj] (0 in the padding), for G images x (G, C, H, W). */
static void im2col(float *col, size_t ld, const float *x, int G, const Patch *p) {
    int khw = p->kh * p->kw, same_width = p->sh == 1 && p->sw == 1 && p->Wo == p->W;
    PAR_FOR(schedule(static) collapse(2), (size_t)p->K * G * p->P >= GEMM_OMP_MIN_WORK,
    for (int r = 0; r < p->K; r++) {
        for (int g = 0; g < G; g++) {
            int ci = r / khw, ki = (r / p->kw) % p->kh, kj = r % p->kw;
            const float *xp = x + ((size_t)g * p->C + ci) * p->H * p->W;
            float *dst = col + (size_t)r * ld + (size_t)g * p->P;
            if (same_width) {
                im2col_row_same_width(dst, xp, ki, kj, p);
                continue;
            }
            int lo, hi;
            valid_cols(p, kj, &lo, &hi);
            for (int oh = 0; oh < p->Ho; oh++) {
                int ih = oh * p->sh - p->ph + ki;
                float *row = dst + (size_t)oh * p->Wo;
                if (ih < 0 || ih >= p->H || lo == hi) {
                    memset(row, 0, (size_t)p->Wo * sizeof(float));
                    continue;
                }
                const float *xrow = xp + (size_t)ih * p->W - p->pw + kj;  // xrow[ow sw] = x[ih, ow sw - pw + kj]
                if (lo > 0) memset(row, 0, (size_t)lo * sizeof(float));
                if (p->sw == 1) {
                    memcpy(row + lo, xrow + lo, (size_t)(hi - lo) * sizeof(float));
                } else {
                    for (int ow = lo; ow < hi; ow++) row[ow] = xrow[ow * p->sw];
                }
                if (hi < p->Wo) memset(row + hi, 0, (size_t)(p->Wo - hi) * sizeof(float));
            }
        }
    });
}

/* dx (G, C, H, W) += col2im(col (K, ld)), the adjoint of im2col. Each thread owns whole
   rows (g, ci, ih) of dx and adds their contributions in fixed (ki, kj, ow) order, so
   the result does not depend on the thread count. */
static void col2im_add(float *dx, const float *col, size_t ld, int G, const Patch *p) {
    PAR_FOR(schedule(static) collapse(3), (size_t)p->K * G * p->P >= GEMM_OMP_MIN_WORK,
    for (int g = 0; g < G; g++) {
        for (int ci = 0; ci < p->C; ci++) {
            for (int ih = 0; ih < p->H; ih++) {
                float *dxrow = dx + (((size_t)g * p->C + ci) * p->H + ih) * p->W;
                for (int ki = 0; ki < p->kh; ki++) {
                    int t = ih + p->ph - ki;  // = oh sh
                    if (t < 0 || t % p->sh) continue;
                    int oh = t / p->sh;
                    if (oh >= p->Ho) continue;
                    for (int kj = 0; kj < p->kw; kj++) {
                        int r = (ci * p->kh + ki) * p->kw + kj, lo, hi;
                        valid_cols(p, kj, &lo, &hi);
                        const float *src = col + (size_t)r * ld + (size_t)g * p->P + (size_t)oh * p->Wo;
                        float *d = dxrow - p->pw + kj;  // d[ow sw] = dx[ih, ow sw - pw + kj]
                        if (p->sw == 1) {
                            for (int ow = lo; ow < hi; ow++) d[ow] += src[ow];
                        } else {
                            for (int ow = lo; ow < hi; ow++) d[ow * p->sw] += src[ow];
                        }
                    }
                }
            }
        }
    });
}

/* y (G, M, P) = tmp (M, G P) [+ y when accumulate] [+ bias (M)]. */
static void unstage(float *y, const float *tmp, const float *bias, int accumulate, int G, int M, size_t P) {
    size_t gp = (size_t)G * P;
    PAR_FOR(schedule(static) collapse(2), gp * M >= GEMM_OMP_MIN_WORK,
    for (int g = 0; g < G; g++) {
        for (int m = 0; m < M; m++) {
            float *dst = y + ((size_t)g * M + m) * P;
            const float *src = tmp + (size_t)m * gp + (size_t)g * P;
            float b = bias ? bias[m] : 0.0f;
            if (accumulate) {
                for (size_t i = 0; i < P; i++) dst[i] += src[i] + b;
            } else {
                for (size_t i = 0; i < P; i++) dst[i] = src[i] + b;
            }
        }
    });
}

/* tmp (M, G P) = y (G, M, P), the transpose of unstage. */
static void stage(float *tmp, const float *y, int G, int M, size_t P) {
    size_t gp = (size_t)G * P;
    PAR_FOR(schedule(static) collapse(2), gp * M >= GEMM_OMP_MIN_WORK,
    for (int g = 0; g < G; g++) {
        for (int m = 0; m < M; m++)
            memcpy(tmp + (size_t)m * gp + (size_t)g * P, y + ((size_t)g * M + m) * P, P * sizeof(float));
    });
}

typedef struct {
    int G;          // images per im2col group
    int per_image;  // one GEMM per image (else per group, through a staging block)
    int direct;     // per image, and x is its own col (1x1, stride 1, no padding)
} Plan;

static Plan plan_make(const Patch *p, int N) {
    Plan pl;
    pl.per_image = p->P >= CONV_GEMM_MIN_COLS;
    pl.direct = pl.per_image && patch_is_pointwise(p);
    size_t per = (size_t)p->K * p->P * sizeof(float);
    size_t g = per ? CONV_COL_BUDGET / per : (size_t)N;
    g = g < 1 ? 1 : g > (size_t)N ? (size_t)N : g;
    // equal groups (8 images at 6 per group: 4 + 4, not 6 + 2): no small last GEMM
    size_t groups = g ? ((size_t)N + g - 1) / g : 0;
    pl.G = groups ? (int)(((size_t)N + groups - 1) / groups) : 0;
    return pl;
}

// col (K, G P) and, when staging, tmp (M, G P) from the arena; 0 or -1 (c->err set).
static int scratch_alloc(Ctx *c, const Patch *p, const Plan *pl, int M, float **col, float **tmp) {
    size_t cols = (size_t)pl->G * p->P;
    *col = ctx_alloc(c, (size_t)p->K * cols * sizeof(float));
    *tmp = NULL;
    if (!*col) return -1;
    if (!pl->per_image) {
        *tmp = ctx_alloc(c, (size_t)M * cols * sizeof(float));
        if (!*tmp) return -1;
    }
    return 0;
}

/* y (N, M, P) = A (M, K) im2col(x) + bias (M, may be NULL), or y += A im2col(x) when
   accumulate (bias then NULL); x (N, C, H, W). 0, or -1 when scratch did not fit. */
static int patch_gemm(Ctx *c, float *y, const float *x, const float *A, int M, const float *bias, int accumulate,
                      int N, const Patch *p) {
    Plan pl = plan_make(p, N);
    size_t xs = (size_t)p->C * p->H * p->W, ys = (size_t)M * p->P;
    int P = (int)p->P, K = p->K;
    float beta = accumulate || bias ? 1.0f : 0.0f;
    if (pl.per_image && bias) {
        // y starts as the bias; the GEMMs then add (beta = 1)
        PAR_FOR(schedule(static) collapse(2), N * ys >= GEMM_OMP_MIN_WORK,
        for (int n = 0; n < N; n++)
            for (int m = 0; m < M; m++) {
                float *row = y + n * ys + (size_t)m * P;
                for (int i = 0; i < P; i++) row[i] = bias[m];
            });
    }
    if (pl.direct) {
        for (int n = 0; n < N; n++) gemm_rm(0, 0, M, P, K, 1.0f, A, K, x + n * xs, P, beta, y + n * ys, P);
        return 0;
    }
    size_t mark = arena_mark(&c->arena);
    float *col, *tmp;
    if (scratch_alloc(c, p, &pl, M, &col, &tmp)) return -1;
    for (int n0 = 0; n0 < N; n0 += pl.G) {
        int g = N - n0 < pl.G ? N - n0 : pl.G, gp = g * P;
        im2col(col, (size_t)gp, x + n0 * xs, g, p);
        if (pl.per_image) {
            for (int i = 0; i < g; i++)
                gemm_rm(0, 0, M, P, K, 1.0f, A, K, col + (size_t)i * P, gp, beta, y + (n0 + i) * ys, P);
        } else {
            gemm_rm(0, 0, M, gp, K, 1.0f, A, K, col, gp, 0.0f, tmp, gp);
            unstage(y + n0 * ys, tmp, bias, accumulate, g, M, p->P);
        }
    }
    arena_release(&c->arena, mark);
    return 0;
}

/* dw (M, K) += sum over the batch of dy_n im2col(x_n)^T; dy (N, M, P), x (N, C, H, W).
   beta = 1 throughout, adding images (and groups) in order. 0, or -1 (scratch). */
static int patch_gemm_wgrad(Ctx *c, float *dw, const float *dy, const float *x, int M, int N, const Patch *p) {
    Plan pl = plan_make(p, N);
    size_t xs = (size_t)p->C * p->H * p->W, ys = (size_t)M * p->P;
    int P = (int)p->P, K = p->K;
    if (pl.direct) {
        for (int n = 0; n < N; n++) gemm_rm(0, 1, M, K, P, 1.0f, dy + n * ys, P, x + n * xs, P, 1.0f, dw, K);
        return 0;
    }
    size_t mark = arena_mark(&c->arena);
    float *col, *tmp;
    if (scratch_alloc(c, p, &pl, M, &col, &tmp)) return -1;
    for (int n0 = 0; n0 < N; n0 += pl.G) {
        int g = N - n0 < pl.G ? N - n0 : pl.G, gp = g * P;
        im2col(col, (size_t)gp, x + n0 * xs, g, p);
        if (pl.per_image) {
            for (int i = 0; i < g; i++)
                gemm_rm(0, 1, M, K, P, 1.0f, dy + (n0 + i) * ys, P, col + (size_t)i * P, gp, 1.0f, dw, K);
        } else {
            stage(tmp, dy + n0 * ys, g, M, p->P);
            gemm_rm(0, 1, M, K, gp, 1.0f, tmp, gp, col, gp, 1.0f, dw, K);
        }
    }
    arena_release(&c->arena, mark);
    return 0;
}

/* dx (N, C, H, W) += col2im(A^T dy_n) for each image; A (M, K) = w, dy (N, M, P).
   For any stride. 0, or -1 (scratch). */
static int patch_gemm_xgrad_col2im(Ctx *c, float *dx, const float *dy, const float *A, int M, int N,
                                   const Patch *p) {
    Plan pl = plan_make(p, N);
    pl.direct = 0;  // dcol is never dx itself here (the stride-1 route handles 1x1)
    size_t xs = (size_t)p->C * p->H * p->W, ys = (size_t)M * p->P;
    int P = (int)p->P, K = p->K;
    size_t mark = arena_mark(&c->arena);
    float *col, *tmp;
    if (scratch_alloc(c, p, &pl, M, &col, &tmp)) return -1;
    for (int n0 = 0; n0 < N; n0 += pl.G) {
        int g = N - n0 < pl.G ? N - n0 : pl.G, gp = g * P;
        if (pl.per_image) {
            for (int i = 0; i < g; i++)
                gemm_rm(1, 0, K, P, M, 1.0f, A, K, dy + (n0 + i) * ys, P, 0.0f, col + (size_t)i * P, gp);
        } else {
            stage(tmp, dy + n0 * ys, g, M, p->P);
            gemm_rm(1, 0, K, gp, M, 1.0f, A, K, tmp, gp, 0.0f, col, gp);
        }
        col2im_add(dx + n0 * xs, col, (size_t)gp, g, p);
    }
    arena_release(&c->arena, mark);
    return 0;
}

/* dx += the stride-1 input gradient as a convolution of dy: wf (Cin, Cout, kh, kw) with
   wf[ci, co, a, b] = w[co, ci, kh-1-a, kw-1-b], padding kh-1-ph, kw-1-pw. Needs stride 1
   and pad < kernel size (so that padding is not negative). 0, or -1 (scratch). */
static int conv_xgrad_flipped(Ctx *c, float *dx, const float *dy, const float *w, int N, int Cout,
                              const Patch *p) {
    int Cin = p->C, kh = p->kh, kw = p->kw, khw = kh * kw;
    size_t mark = arena_mark(&c->arena);
    float *wf = ctx_alloc(c, (size_t)Cin * Cout * khw * sizeof(float));
    if (!wf) return -1;
    // flipping both spatial axes reverses each kh x kw block: (kh-1-a) kw + (kw-1-b) = khw-1-(a kw + b)
    for (int co = 0; co < Cout; co++)
        for (int ci = 0; ci < Cin; ci++) {
            const float *src = w + ((size_t)co * Cin + ci) * khw;
            float *dst = wf + ((size_t)ci * Cout + co) * khw;
            for (int j = 0; j < khw; j++) dst[j] = src[khw - 1 - j];
        }
    Patch q = patch_make(Cout, p->Ho, p->Wo, kh, kw, 1, 1, kh - 1 - p->ph, kw - 1 - p->pw);
    int rc = patch_gemm(c, dx, dy, wf, Cin, NULL, 1, N, &q);
    arena_release(&c->arena, mark);
    return rc;
}

/* ---- the op ------------------------------------------------------------------------ */

// iarg layout of a conv node
enum { CV_SH, CV_SW, CV_PH, CV_PW };

static Patch patch_of(const Tensor *x, const Tensor *w, const int *iarg) {
    return patch_make(x->shape[1], x->shape[2], x->shape[3], w->shape[2], w->shape[3], iarg[CV_SH], iarg[CV_SW],
                      iarg[CV_PH], iarg[CV_PW]);
}

static void conv_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *w = nd->in[1], *b = nd->in[2];
    Patch p = patch_of(x, w, nd->iarg);
    int N = x->shape[0], Cout = w->shape[0];
    const float *dy = nd->out->grad;
    float *dx = x->requires_grad ? tensor_grad(c, x) : NULL;
    float *dw = w->requires_grad ? tensor_grad(c, w) : NULL;
    float *db = b && b->requires_grad ? tensor_grad(c, b) : NULL;
    if ((x->requires_grad && !dx) || (w->requires_grad && !dw) || (b && b->requires_grad && !db)) return;
    if (db) gemm_channel_sum_add(db, dy, N, Cout, p.P);
    if (dw && patch_gemm_wgrad(c, dw, dy, x->data, Cout, N, &p)) return;
    if (!dx) return;
    if (p.sh == 1 && p.sw == 1 && p.ph < p.kh && p.pw < p.kw)
        conv_xgrad_flipped(c, dx, dy, w->data, N, Cout, &p);
    else
        patch_gemm_xgrad_col2im(c, dx, dy, w->data, Cout, N, &p);
}

static Tensor *conv2d_ex_op(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride_h, int stride_w, int pad_h, int pad_w) {
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
    Patch p = patch_of(x, w, iarg);
    int N = x->shape[0], Cout = w->shape[0];
    // cblas dimensions are int: a group's columns (at most N max(P, H W)) and the inner
    // dimensions (K, and Cout kh kw of the flipped input gradient) must fit
    size_t hw = (size_t)p.H * p.W, cols = (size_t)N * (p.P > hw ? p.P : hw);
    size_t inner = (size_t)p.kh * p.kw * (size_t)(Cout > p.C ? Cout : p.C);
    if (cols > INT_MAX || inner > INT_MAX) {
        err_set(&c->err, ERR_SHAPE, "conv2d: x %s with w %s exceeds int GEMM dimensions",
                tensor_shape_str(x, sx, sizeof sx), tensor_shape_str(w, sw, sizeof sw));
        return NULL;
    }
    Tensor *y = tensor_new4(c, N, Cout, p.Ho, p.Wo);
    if (!y) return NULL;
    if (patch_gemm(c, y->data, x->data, w->data, Cout, b ? b->data : NULL, 0, N, &p)) return NULL;
    Tensor *in[3] = {x, w, b};
    TapeNode *nd = tape_record(c, OP_CONV2D, conv_backward, y, in, 3);
    if (nd) memcpy(nd->iarg, iarg, sizeof iarg);
    return y;
}

static Tensor *conv2d_op(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride, int pad) {
    return t_conv2d_ex(c, x, w, b, stride, stride, pad, pad);
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_conv2d_ex(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride_h, int stride_w, int pad_h, int pad_w) {
    PROF_OP(c, OP_CONV2D, conv2d_ex_op(c, x, w, b, stride_h, stride_w, pad_h, pad_w),
            out ? 2.0 * (double)out->n * (double)(w->n / (size_t)w->shape[0]) : 0.0);
}

Tensor *t_conv2d(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride, int pad) {
    PROF_OP(c, OP_CONV2D, conv2d_op(c, x, w, b, stride, pad),
            out ? 2.0 * (double)out->n * (double)(w->n / (size_t)w->shape[0]) : 0.0);
}
