/* norm.c: layer norm (over the last dim) and group norm (torch.nn.GroupNorm).

   Both normalise x by the mean and biased variance of a set of elements, eps inside the
   square root, then apply the optional per-channel affine gamma, beta:
       y = (x - mean) * rstd * gamma + beta,   rstd = 1 / sqrt(var + eps)
   Statistics are summed in double, two passes (mean, then squared deviations), by the one
   thread that owns the row or group, each pass into NORM_LANES fixed partial sums added in
   lane order at the end: one summation order on every machine, and loops the AVX-512 / AVX2
   clones vectorize (a single running double sum cannot be reordered, so it ran scalar). The forward saves mean and rstd only (node->saved:
   mean[0..m) then rstd[0..m)); the backward recomputes xhat = (x - mean) * rstd.

   Backward, with dxhat = dy * gamma and means over the normalised set:
       dx = rstd * (dxhat - mean(dxhat) - xhat * mean(dxhat * xhat))
       dgamma[c] = sum dy * xhat,  dbeta[c] = sum dy   (over every element of channel c)
   dgamma/dbeta sums have a fixed order: group norm owns one channel per iteration; layer
   norm sums fixed row blocks into per-block partials, then adds the blocks in order.
*/
#include <math.h>

#include "autograd/ops.h"
#include "autograd/ops/fastmath.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many elements the loops run on one thread.
#define NORM_PAR_MIN 16384
// Layer norm dgamma/dbeta: rows per partial-sum block (at least), and at most this many blocks.
#define LN_ROW_BLOCK 64
#define LN_MAX_BLOCKS 256

#define NORM_LANES 8

// Mean and rstd = 1 / sqrt(biased variance + eps) of x[0..n), in double (see the top comment).
FASTMATH_CLONES static void norm_stats(const float *x, size_t n, float eps, double *mean, double *rstd) {
    double p[NORM_LANES] = {0}, s = 0, v = 0;
    size_t i = 0;
    for (; i + NORM_LANES <= n; i += NORM_LANES)
        for (int l = 0; l < NORM_LANES; l++) p[l] += x[i + l];
    for (int l = 0; l < NORM_LANES; l++) s += p[l];
    for (; i < n; i++) s += x[i];
    double m = n ? s / (double)n : 0.0;
    for (int l = 0; l < NORM_LANES; l++) p[l] = 0;
    for (i = 0; i + NORM_LANES <= n; i += NORM_LANES)
        for (int l = 0; l < NORM_LANES; l++) p[l] += (x[i + l] - m) * (x[i + l] - m);
    for (int l = 0; l < NORM_LANES; l++) v += p[l];
    for (; i < n; i++) v += (x[i] - m) * (x[i] - m);
    *mean = m;
    *rstd = 1.0 / sqrt((n ? v / (double)n : 0.0) + eps);
}

// y = (float)((x - m) rs) * gamma + beta over one channel's n values (gamma, beta scalars).
FASTMATH_CLONES static void norm_apply(float *y, const float *x, size_t n, double m, double rs, float gam, float bet) {
    for (size_t i = 0; i < n; i++) y[i] = (float)((x[i] - m) * rs) * gam + bet;
}

static int affine_check(Ctx *c, const char *op, const Tensor *x, const Tensor *p, const char *what, int C) {
    if (!p || p->n == (size_t)C) return 0;
    char s1[64], s2[64];
    return err_set(&c->err, ERR_SHAPE, "%s: %s has shape %s, expected (%d) for input %s", op, what,
                   tensor_shape_str(p, s1, sizeof s1), C, tensor_shape_str(x, s2, sizeof s2));
}

/* ---- layer norm: x (R, C) as rows ------------------------------------------------ */

static void layer_norm_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *gamma = nd->in[1], *beta = nd->in[2], *out = nd->out;
    size_t C = (size_t)tensor_dim(x, -1), R = C ? x->n / C : 0;
    const float *mean = nd->saved, *rstd = mean + R;
    const float *xd = x->data, *g = out->grad, *gm = gamma ? gamma->data : NULL;
    float *dx = x->requires_grad ? tensor_grad(c, x) : NULL;
    float *dgamma = gamma && gamma->requires_grad ? tensor_grad(c, gamma) : NULL;
    float *dbeta = beta && beta->requires_grad ? tensor_grad(c, beta) : NULL;
    if (c->err.code || R == 0) return;

    if (dx) {
        PAR_FOR(schedule(static), x->n >= NORM_PAR_MIN,
        for (size_t r = 0; r < R; r++) {
            const float *xr = xd + r * C, *gr = g + r * C;
            float *dr = dx + r * C;
            double m = mean[r], rs = rstd[r], s1 = 0, s2 = 0;
            for (size_t i = 0; i < C; i++) {
                double dxh = (double)gr[i] * (gm ? gm[i] : 1.0f);
                s1 += dxh;
                s2 += dxh * ((xr[i] - m) * rs);
            }
            s1 /= (double)C;
            s2 /= (double)C;
            for (size_t i = 0; i < C; i++) {
                double dxh = (double)gr[i] * (gm ? gm[i] : 1.0f);
                double xh = (xr[i] - m) * rs;
                dr[i] += (float)(rs * (dxh - s1 - xh * s2));
            }
        });
    }
    if (!dgamma && !dbeta) return;
    size_t rows_per = (R + LN_MAX_BLOCKS - 1) / LN_MAX_BLOCKS;
    if (rows_per < LN_ROW_BLOCK) rows_per = LN_ROW_BLOCK;
    size_t nblk = (R + rows_per - 1) / rows_per;
    size_t mark = arena_mark(&c->arena);
    // partial[b][0][i]: block b's sum of dy * xhat for channel i; partial[b][1][i]: of dy
    double *partial = ctx_alloc(c, nblk * 2 * C * sizeof(double));
    if (!partial) return;
    PAR_FOR(schedule(static), x->n >= NORM_PAR_MIN,
    for (size_t b = 0; b < nblk; b++) {
        double *pg = partial + b * 2 * C, *pb = pg + C;
        for (size_t i = 0; i < C; i++) pg[i] = pb[i] = 0;
        size_t r1 = (b + 1) * rows_per < R ? (b + 1) * rows_per : R;
        for (size_t r = b * rows_per; r < r1; r++) {
            const float *xr = xd + r * C, *gr = g + r * C;
            double m = mean[r], rs = rstd[r];
            for (size_t i = 0; i < C; i++) {
                pg[i] += (double)gr[i] * ((xr[i] - m) * rs);
                pb[i] += gr[i];
            }
        }
    });
    PAR_FOR(schedule(static), C * nblk >= NORM_PAR_MIN,
    for (size_t i = 0; i < C; i++) {
        double sg = 0, sb = 0;
        for (size_t b = 0; b < nblk; b++) {
            sg += partial[b * 2 * C + i];
            sb += partial[b * 2 * C + C + i];
        }
        if (dgamma) dgamma[i] += (float)sg;
        if (dbeta) dbeta[i] += (float)sb;
    });
    arena_release(&c->arena, mark);
}

static Tensor *layer_norm_op(Ctx *c, Tensor *x, Tensor *gamma, Tensor *beta, float eps) {
    if (!x) return NULL;
    if (x->ndim == 0) {
        err_set(&c->err, ERR_SHAPE, "layer_norm: input has no dimensions");
        return NULL;
    }
    int Ci = tensor_dim(x, -1);
    if (affine_check(c, "layer_norm", x, gamma, "gamma", Ci) || affine_check(c, "layer_norm", x, beta, "beta", Ci))
        return NULL;
    size_t C = (size_t)Ci, R = C ? x->n / C : 0;
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    float *stats = ctx_alloc(c, (R > 0 ? 2 * R : 1) * sizeof(float));
    if (!out || !stats) return NULL;
    float *mean = stats, *rstd = stats + R;
    const float *xd = x->data, *gm = gamma ? gamma->data : NULL, *bt = beta ? beta->data : NULL;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= NORM_PAR_MIN,
    for (size_t r = 0; r < R; r++) {
        const float *xr = xd + r * C;
        float *yr = y + r * C;
        double m, rs;
        norm_stats(xr, C, eps, &m, &rs);
        mean[r] = (float)m;
        rstd[r] = (float)rs;
        for (size_t i = 0; i < C; i++) {
            float yh = (float)((xr[i] - m) * rs);
            yr[i] = (gm ? yh * gm[i] : yh) + (bt ? bt[i] : 0.0f);
        }
    });
    Tensor *in[3] = {x, gamma, beta};
    TapeNode *nd = tape_record(c, OP_LAYER_NORM, layer_norm_backward, out, in, 3);
    if (nd) nd->saved = stats;
    return out;
}

/* ---- group norm: x (N, C, S) with S the product of the spatial dims --------------- */

// iarg[0] = G
static void group_norm_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *gamma = nd->in[1], *beta = nd->in[2], *out = nd->out;
    size_t N = (size_t)x->shape[0], C = (size_t)x->shape[1], G = (size_t)nd->iarg[0];
    size_t S = N * C > 0 ? x->n / (N * C) : 0, CG = C / G, M = CG * S;
    const float *mean = nd->saved, *rstd = mean + N * G;
    const float *xd = x->data, *g = out->grad, *gm = gamma ? gamma->data : NULL;
    float *dx = x->requires_grad ? tensor_grad(c, x) : NULL;
    float *dgamma = gamma && gamma->requires_grad ? tensor_grad(c, gamma) : NULL;
    float *dbeta = beta && beta->requires_grad ? tensor_grad(c, beta) : NULL;
    if (c->err.code || x->n == 0) return;

    if (dx) {
        PAR_FOR(schedule(static), x->n >= NORM_PAR_MIN,
        for (size_t ng = 0; ng < N * G; ng++) {
            size_t c0 = (ng % G) * CG;
            const float *xg = xd + ng * M, *gg = g + ng * M;  // a group's channels are contiguous
            float *dg = dx + ng * M;
            double m = mean[ng], rs = rstd[ng], s1 = 0, s2 = 0;
            for (size_t k = 0; k < CG; k++) {
                double gam = gm ? gm[c0 + k] : 1.0f;
                for (size_t s = 0; s < S; s++) {
                    double dxh = (double)gg[k * S + s] * gam;
                    s1 += dxh;
                    s2 += dxh * ((xg[k * S + s] - m) * rs);
                }
            }
            s1 /= (double)M;
            s2 /= (double)M;
            for (size_t k = 0; k < CG; k++) {
                double gam = gm ? gm[c0 + k] : 1.0f;
                for (size_t s = 0; s < S; s++) {
                    double xh = (xg[k * S + s] - m) * rs;
                    dg[k * S + s] += (float)(rs * ((double)gg[k * S + s] * gam - s1 - xh * s2));
                }
            }
        });
    }
    if (!dgamma && !dbeta) return;
    PAR_FOR(schedule(static), x->n >= NORM_PAR_MIN,
    for (size_t ch = 0; ch < C; ch++) {
        double sg = 0, sb = 0;
        for (size_t n = 0; n < N; n++) {
            size_t ng = n * G + ch / CG;
            double m = mean[ng], rs = rstd[ng];
            const float *xc = xd + (n * C + ch) * S, *gc = g + (n * C + ch) * S;
            for (size_t s = 0; s < S; s++) {
                sg += (double)gc[s] * ((xc[s] - m) * rs);
                sb += gc[s];
            }
        }
        if (dgamma) dgamma[ch] += (float)sg;
        if (dbeta) dbeta[ch] += (float)sb;
    });
}

static Tensor *group_norm_op(Ctx *c, Tensor *x, Tensor *gamma, Tensor *beta, int G, float eps) {
    if (!x) return NULL;
    char s[64];
    if (x->ndim < 2) {
        err_set(&c->err, ERR_SHAPE, "group_norm: input %s: expected (N, C, *)", tensor_shape_str(x, s, sizeof s));
        return NULL;
    }
    int Ci = x->shape[1];
    if (G <= 0 || Ci % G) {
        err_set(&c->err, ERR_SHAPE, "group_norm: input %s: %d channels do not split into %d groups",
                tensor_shape_str(x, s, sizeof s), Ci, G);
        return NULL;
    }
    if (affine_check(c, "group_norm", x, gamma, "gamma", Ci) || affine_check(c, "group_norm", x, beta, "beta", Ci))
        return NULL;
    size_t N = (size_t)x->shape[0], C = (size_t)Ci, S = N * C > 0 ? x->n / (N * C) : 0;
    size_t CG = C / (size_t)G, M = CG * S, NG = N * (size_t)G;
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    float *stats = ctx_alloc(c, (NG > 0 ? 2 * NG : 1) * sizeof(float));
    if (!out || !stats) return NULL;
    float *mean = stats, *rstd = stats + NG;
    const float *xd = x->data, *gm = gamma ? gamma->data : NULL, *bt = beta ? beta->data : NULL;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= NORM_PAR_MIN,
    for (size_t ng = 0; ng < NG; ng++) {
        size_t c0 = (ng % (size_t)G) * CG;
        const float *xg = xd + ng * M;  // group ng = (n, g) covers channels c0 .. c0 + CG of sample n
        float *yg = y + ng * M;
        double m, rs;
        norm_stats(xg, M, eps, &m, &rs);
        mean[ng] = (float)m;
        rstd[ng] = (float)rs;
        for (size_t k = 0; k < CG; k++)
            norm_apply(yg + k * S, xg + k * S, S, m, rs, gm ? gm[c0 + k] : 1.0f, bt ? bt[c0 + k] : 0.0f);
    });
    Tensor *in[3] = {x, gamma, beta};
    TapeNode *nd = tape_record(c, OP_GROUP_NORM, group_norm_backward, out, in, 3);
    if (nd) {
        nd->saved = stats;
        nd->iarg[0] = G;
    }
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_layer_norm(Ctx *c, Tensor *x, Tensor *gamma, Tensor *beta, float eps) {
    PROF_OP(c, OP_LAYER_NORM, layer_norm_op(c, x, gamma, beta, eps), 0.0);
}

Tensor *t_group_norm(Ctx *c, Tensor *x, Tensor *gamma, Tensor *beta, int G, float eps) {
    PROF_OP(c, OP_GROUP_NORM, group_norm_op(c, x, gamma, beta, G, eps), 0.0);
}
