/* qkind_easyquant.c: EasyQuant (Tang et al., "EasyQuant: An Efficient Data-free Quantization
   Algorithm for LLMs", EMNLP 2023) as a weight quantizer kind (qkind.h). Per output channel
   (slice of n weights), the m = ceil(outlier_fraction · n) weights of largest magnitude are
   outliers, kept unquantized in float16 in the quantizer's sparse side table (position +
   value); the others are quantized by the uniform affine quantizer (qkind_uniform.c), whose
   range is fitted to them alone and then refined by gradient descent on their
   reconstruction error:
       q(x)_j = f16(x_j)                 j an outlier of the channel (positions fixed by fit)
              = uniform q(x_j; Δ, z)     otherwise
   f16 rounds to the nearest float16 (half to even), saturating at ±65504.
   Fit: the outliers are the largest |x| (ties: the lower position), their values f16(x);
   Δ, z by the run's init (max / mse) on the rest; then fit_steps Adam steps on Δ (z fixed) of
       L(Δ) = mean over the rest of (q(x) - x)^2        (the LSQ gradient, quantizer.h)
   with learning rate fit_lr · Δ_0, keeping the Δ of the lowest L met (the initial one
   included), so the refined range is never worse than the init's.
   Gradients: the rest as uniform; at an outlier dy passes straight to x (f16 rounding as
   straight-through) and nothing reaches Δ or z.
   Levels: uniform's; an outlier's level is clamp(round(z)) - the level of 0 when z is in
   range - and decode returns its side value there. Bytes: uniform's (pack.h). The export's
   integer path runs the dense levels and adds the outliers back as a sparse correction
   (export_int.h). Weights only (the side table is per channel). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"
#include "qalora/pack.h"
#include "qalora/qkind.h"

#define F16_MAX 65504.0f

static float f16_round(float x) {
    if (x > F16_MAX) return F16_MAX;
    if (x < -F16_MAX) return -F16_MAX;
    return f16_to_f32(f32_to_f16(x));
}

// Entry k's outlier positions (ascending) and values; NULL when the quantizer keeps none.
static const int32_t *side_idx(const Quantizer *q, int k) {
    return q->n_side ? q->side_idx + (size_t)k * q->n_side : NULL;
}

static const float *side_val(const Quantizer *q, int k) {
    return q->n_side ? q->side_val + (size_t)k * q->n_side : NULL;
}

/* Each kernel walks the channel as runs of non-outlier positions [a, b) - handed to the
   uniform row - separated by the outliers at b = idx[s]. */

static void eq_fake(const Quantizer *q, int k, float *y, const float *x, size_t n) {
    const int32_t *idx = side_idx(q, k);
    size_t a = 0;
    for (int s = 0; s <= q->n_side; s++) {
        size_t b = s < q->n_side ? (size_t)idx[s] : n;
        QKIND_UNIFORM_OPS.fake(q, k, y + a, x + a, b - a);
        if (s == q->n_side) break;
        y[b] = f16_round(x[b]);
        a = b + 1;
    }
}

static void eq_backward(const Quantizer *q, int k, float *dx, double g[QKIND_GRAD_SLOTS], const float *dy,
                        const float *x, size_t n) {
    const int32_t *idx = side_idx(q, k);
    memset(g, 0, QKIND_GRAD_SLOTS * sizeof g[0]);
    size_t a = 0;
    for (int s = 0; s <= q->n_side; s++) {
        size_t b = s < q->n_side ? (size_t)idx[s] : n;
        double gs[QKIND_GRAD_SLOTS];
        QKIND_UNIFORM_OPS.backward(q, k, dx ? dx + a : NULL, gs, dy + a, x + a, b - a);
        for (int j = 0; j < QKIND_GRAD_SLOTS; j++) g[j] += gs[j];
        if (s == q->n_side) break;
        if (dx) dx[b] += dy[b];
        a = b + 1;
    }
}

static void eq_encode(const Quantizer *q, int k, uint8_t *out, const float *x, size_t n) {
    const int32_t *idx = side_idx(q, k);
    float fq = (float)quantizer_qmax(q), z = rintf(q->zero.data[k]);
    uint8_t zl = (uint8_t)(z > fq ? fq : (z >= 0.0f ? z : 0.0f));
    size_t a = 0;
    for (int s = 0; s <= q->n_side; s++) {
        size_t b = s < q->n_side ? (size_t)idx[s] : n;
        QKIND_UNIFORM_OPS.encode(q, k, out + a, x + a, b - a);
        if (s == q->n_side) break;
        out[b] = zl;
        a = b + 1;
    }
}

static void eq_decode(const Quantizer *q, int k, float *y, const uint8_t *in, size_t n) {
    const int32_t *idx = side_idx(q, k);
    const float *val = side_val(q, k);
    size_t a = 0;
    for (int s = 0; s <= q->n_side; s++) {
        size_t b = s < q->n_side ? (size_t)idx[s] : n;
        QKIND_UNIFORM_OPS.decode(q, k, y + a, in + a, b - a);
        if (s == q->n_side) break;
        y[b] = val[s];
        a = b + 1;
    }
}

static void eq_decode_backward(const Quantizer *q, int k, double g[QKIND_GRAD_SLOTS], const float *dy,
                               const uint8_t *in, size_t n) {
    const int32_t *idx = side_idx(q, k);
    memset(g, 0, QKIND_GRAD_SLOTS * sizeof g[0]);
    size_t a = 0;
    for (int s = 0; s <= q->n_side; s++) {
        size_t b = s < q->n_side ? (size_t)idx[s] : n;
        double gs[QKIND_GRAD_SLOTS];
        QKIND_UNIFORM_OPS.decode_backward(q, k, gs, dy + a, in + a, b - a);
        for (int j = 0; j < QKIND_GRAD_SLOTS; j++) g[j] += gs[j];
        if (s == q->n_side) break;
        a = b + 1;
    }
}

/* ---- fit ------------------------------------------------------------------------------ */

typedef struct {
    float mag;
    int32_t pos;
} Cand;

// Largest magnitude first; ties: the lower position (a total order: the fit is deterministic).
static int cand_cmp(const void *pa, const void *pb) {
    const Cand *a = pa, *b = pb;
    if (a->mag != b->mag) return a->mag > b->mag ? -1 : 1;
    return (a->pos > b->pos) - (a->pos < b->pos);
}

static int pos_cmp(const void *pa, const void *pb) {
    int32_t a = *(const int32_t *)pa, b = *(const int32_t *)pb;
    return (a > b) - (a < b);
}

// L(Δ) = mean (q(x) - x)^2 over r (n values) with the uniform kernel's float arithmetic, and
// its LSQ gradient in *grad (both in double).
static double rest_loss(const float *r, size_t n, float d, float z, int qmax, double *grad) {
    float fq = (float)qmax;
    double L = 0, G = 0;
    for (size_t i = 0; i < n; i++) {
        float v = r[i] / d, rv = rintf(v), u = rv + z;
        int inside = u >= 0.0f && u <= fq;
        float uc = inside ? u : (u < 0.0f ? 0.0f : fq);
        double err = (double)((uc - z) * d) - (double)r[i];
        L += err * err;
        G += 2.0 * err * (inside ? (double)rv - (double)v : (double)(uc - z));
    }
    *grad = G / (double)n;
    return L / (double)n;
}

// Adam on Δ (z fixed) from *delta, keeping the best Δ met (EasyQuant's range optimisation).
static void refine_delta(const float *r, size_t n, float *delta, float z, int qmax, int steps, double lr_rel) {
    const double b1 = 0.9, b2 = 0.999, eps = 1e-30;
    double d = *delta, m1 = 0, m2 = 0, lr = lr_rel * d, grad;
    float best = *delta;
    double best_L = rest_loss(r, n, best, z, qmax, &grad);
    for (int t = 1; t <= steps; t++) {
        m1 = b1 * m1 + (1 - b1) * grad;
        m2 = b2 * m2 + (1 - b2) * grad * grad;
        double mh = m1 / (1 - pow(b1, t)), vh = m2 / (1 - pow(b2, t));
        d -= lr * mh / (sqrt(vh) + eps);
        if (!(d > QUANT_MIN_DELTA)) break;
        double L = rest_loss(r, n, (float)d, z, qmax, &grad);
        if (L < best_L) {
            best_L = L;
            best = (float)d;
        }
    }
    *delta = best;
}

static int eq_fit(Quantizer *q, int k, const float *x, size_t n, QuantInit how, int parallel) {
    int m = q->n_side;
    size_t nr = n - (size_t)m;
    Cand *c = malloc((n ? n : 1) * sizeof *c);
    float *rest = malloc((nr ? nr : 1) * sizeof *rest);
    if (!c || !rest) {
        free(c);
        free(rest);
        return ERR_NOMEM;
    }
    if (m > 0) {
        int32_t *idx = q->side_idx + (size_t)k * m;
        float *val = q->side_val + (size_t)k * m;
        for (size_t i = 0; i < n; i++) c[i] = (Cand){fabsf(x[i]), (int32_t)i};
        qsort(c, n, sizeof *c, cand_cmp);
        for (int s = 0; s < m; s++) idx[s] = c[s].pos;
        qsort(idx, (size_t)m, sizeof *idx, pos_cmp);
        for (int s = 0; s < m; s++) val[s] = f16_round(x[idx[s]]);
    }
    const int32_t *idx = side_idx(q, k);
    size_t j = 0;
    for (size_t i = 0, s = 0; i < n; i++) {
        if (s < (size_t)m && (size_t)idx[s] == i) {
            s++;
            continue;
        }
        rest[j++] = x[i];
    }
    float *d = &q->delta.data[k], *z = &q->zero.data[k];
    if (nr == 0) {  // every weight an outlier: any range will do
        *d = 1.0f;
        *z = 0.0f;
    } else {
        if (how == QUANT_INIT_MAX) quant_uniform_fit_max(rest, nr, q->bits, d, z);
        else quant_uniform_fit_mse(rest, nr, q->bits, &q->kp, d, z);
        if (q->kp.fit_steps > 0 && q->kp.fit_lr > 0)
            refine_delta(rest, nr, d, *z, quantizer_qmax(q), q->kp.fit_steps, q->kp.fit_lr);
    }
    free(c);
    free(rest);
    return 0;
}

static int eq_side_count(const Quantizer *q, size_t slice_len) {
    double f = q->kp.outlier_fraction;
    if (!(f > 0)) return 0;
    // ceil, robust to 0.005 * 200 landing a hair above 1
    double m = ceil(f * (double)slice_len - 1e-9);
    return m > (double)slice_len ? (int)slice_len : (int)m;
}

const QKindOps QKIND_EASYQUANT_OPS = {
    .name = "easyquant",
    .n_param = 0,
    .affine = 1,
    .weight_only = 1,
    .side = 1,
    .fit = eq_fit,
    .fake = eq_fake,
    .backward = eq_backward,
    .encode = eq_encode,
    .decode = eq_decode,
    .decode_backward = eq_decode_backward,
    .packed_size = qkind_uniform_packed_size,  // the dense levels' bytes: uniform's (pack.h)
    .pack = qkind_uniform_pack,
    .unpack = qkind_uniform_unpack,
    .side_count = eq_side_count,
};
