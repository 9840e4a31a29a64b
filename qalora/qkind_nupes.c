/* qkind_nupes.c: NUPES (Yvinec, Dapogny, Bailly, "NUPES: Non-Uniform Post-Training
   Quantization via Power Exponent Search", 2023) as a quantizer kind (qkind.h): a uniform
   affine grid in a power-warped domain. With the power map p(x) = sign(x) |x|^a and its
   inverse p⁻¹(v) = sign(v) |v|^(1/a):
       q(x) = p⁻¹((clamp(round(p(x)/Δ) + z, 0, 2^b - 1) - z) · Δ)
   so the 2^b levels of an entry are p⁻¹((l - z) Δ): denser near 0 for a < 1, where the bell-
   shaped weights and activations have most of their mass. At a = 1 it is the uniform kind,
   bit for bit (the same float operations: p is skipped, not computed as |x|^1).
   One learnable value per entry (Quantizer.param): the exponent a, used clamped to
   [NUPES_A_MIN, NUPES_A_MAX] (a learned value may leave it; the clamp keeps p⁻¹'s derivative
   bounded).
   Fit (per channel for weights, per table entry on the calibration inputs for activations):
   for each a of the grid 1.0, 0.9, ..., 0.4, the uniform range (the run's init: max / mse) of
   p(x), scored by the squared reconstruction error Σ (x - q(x))² on at most NUPES_SEARCH_MAX
   values (an evenly strided subset of larger inputs); the best a (ties: the larger, so a = 1
   when the warp does not help) then gets its range fitted on all of x.
   Gradients (the straight-through rules of the uniform kind, through the warp): with
   s = p(x)/Δ, u = round(s) + z, "inside" = 0 <= u <= 2^b - 1, v = (clamp(u) - z) Δ, y = p⁻¹(v):
       d/dx = 1 inside, 0 outside              (the whole quantizer straight through)
       d/dΔ = p⁻¹'(v) · (inside ? round(s) - s : clamp(u) - z)
       d/dz = p⁻¹'(v) · (inside ? 0 : -Δ)
       d/da = -y ln|v| / a² + (inside ? p⁻¹'(v) p(x) ln|x| : 0)
   with p⁻¹'(v) = |v|^(1/a - 1) / a (0 at v = 0). These are the exact derivatives of the
   straight-through surrogate (round(s) replaced by s + r, r frozen) except d/dx, which is the
   identity rather than p⁻¹'(v) p'(x): that product is 0 on the whole zero bin for a < 1, and
   QALoRA trains the weights through this gradient (tests/test_qkind.c checks each).
   Levels: clamp(round(round(p(x)/Δ) + z)); decode(l) = p⁻¹((l - z) Δ). Bytes: the uniform
   ones (pack.h). Not affine, but its levels are monotone (lut): the export's integer path
   runs them through 8-bit level tables (export_int.h), its float path decodes the weight
   through p⁻¹ and fake-quantizes the input. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/pack.h"
#include "qalora/qkind.h"

#define NUPES_A_MIN 0.2f
#define NUPES_A_MAX 1.5f
#define NUPES_SEARCH_MAX 16384
#define NUPES_GRID 7  // a = 1.0, 0.9, ..., 0.4

static inline float nu_a(const Quantizer *q, int k) {
    float a = q->param.data[k];
    return a < NUPES_A_MIN ? NUPES_A_MIN : (a > NUPES_A_MAX ? NUPES_A_MAX : a);
}

// p(x) = sign(x) |x|^a, exactly x at a = 1; lx (when not NULL) gets ln|x| (0 at x = 0), which
// the exponent's gradient needs: |x|^a is computed as exp(a ln|x|) so the two share one log.
static inline float warp_log(float x, float a, float *lx) {
    if (a == 1.0f) {
        if (lx) *lx = x != 0.0f ? logf(fabsf(x)) : 0.0f;
        return x;
    }
    float m = fabsf(x);
    if (!(m > 0.0f)) {
        if (lx) *lx = 0.0f;
        return copysignf(0.0f, x);
    }
    float l = logf(m);
    if (lx) *lx = l;
    return copysignf(expf(a * l), x);
}

static inline float warp(float x, float a) { return warp_log(x, a, NULL); }

// p⁻¹(v) = sign(v) |v|^(1/a) (inv_a = 1/a), exactly v at a = 1.
static inline float unwarp(float v, float a, float inv_a) {
    if (a == 1.0f) return v;
    float m = fabsf(v);
    return copysignf(m > 0.0f ? powf(m, inv_a) : 0.0f, v);
}

// p⁻¹'(v) = |v|^(1/a - 1) / a, in double; 0 at v = 0 (the limit for a < 1).
static inline double unwarp_slope(double v, double a) {
    if (a == 1.0) return 1.0;
    double m = fabs(v);
    return m > 0.0 ? pow(m, 1.0 / a - 1.0) / a : 0.0;
}

static inline float nu_level(float t, float delta, float zero, float qmax) {
    float u = rintf(t / delta) + zero;
    return u < 0.0f ? 0.0f : (u > qmax ? qmax : u);
}

/* An entry's 2^b levels are few: with an integer zero point (weights; every exported table)
   everything that depends on the level alone (the value p⁻¹((l - z) Δ), p⁻¹'s slope there,
   y ln|v| for the exponent's gradient) is tabulated once per slice, so the per-value work is
   one warp and a lookup. The table holds the very expressions the per-value code computes: no
   bit changes. A real zero point (activation tables while training) makes clamp(u) a non-
   integer: then every value computes its own. */
typedef struct {
    float y[256];
    double slope[256], ylnv[256];  // p⁻¹'(v); y ln|v| (0 at v = 0)
} LevelTable;

static void level_table(LevelTable *t, float delta, float zero, float a, int qmax, int grads) {
    float inv_a = 1.0f / a;
    for (int l = 0; l <= qmax; l++) {
        float v = ((float)l - zero) * delta;
        t->y[l] = unwarp(v, a, inv_a);
        if (!grads) continue;
        t->slope[l] = unwarp_slope(v, (double)a);
        t->ylnv[l] = v != 0.0f ? (double)t->y[l] * log(fabs((double)v)) : 0.0;
    }
}

// q(x) over one slice with (Δ, z, a).
static void nu_fake_with(float *y, const float *x, size_t n, float delta, float zero, float a, int qmax) {
    if (a == 1.0f) {
        quant_uniform_fake(y, x, n, delta, zero, qmax);
        return;
    }
    float fq = (float)qmax;
    if (zero != rintf(zero)) {
        float inv_a = 1.0f / a;
        for (size_t i = 0; i < n; i++) y[i] = unwarp((nu_level(warp(x[i], a), delta, zero, fq) - zero) * delta, a, inv_a);
        return;
    }
    LevelTable t;
    level_table(&t, delta, zero, a, qmax, 0);
    for (size_t i = 0; i < n; i++) y[i] = t.y[(int)nu_level(warp(x[i], a), delta, zero, fq)];
}

/* ---- fit ------------------------------------------------------------------------------ */

// The uniform range of p_a(x) by the init `how` (t: scratch of n floats).
static void range_of_warped(float *t, const float *x, size_t n, float a, int bits, QuantInit how,
                            const QKindParams *kp, float *delta, float *zero) {
    for (size_t i = 0; i < n; i++) t[i] = warp(x[i], a);
    if (how == QUANT_INIT_MAX) quant_uniform_fit_max(t, n, bits, delta, zero);
    else quant_uniform_fit_mse(t, n, bits, kp, delta, zero);
}

static int nu_fit(Quantizer *q, int k, const float *x, size_t n, QuantInit how, int parallel) {
    (void)parallel;  // serial: the same bits either way
    size_t stride = n > NUPES_SEARCH_MAX ? (n + NUPES_SEARCH_MAX - 1) / NUPES_SEARCH_MAX : 1;
    size_t m = (n + stride - 1) / stride;
    float *sub = malloc(m * sizeof(float)), *t = malloc(n * sizeof(float)), *y = malloc(m * sizeof(float));
    if (!sub || !t || !y) {
        free(sub), free(t), free(y);
        return ERR_NOMEM;
    }
    for (size_t i = 0; i < m; i++) sub[i] = x[i * stride];
    const int qmax = quantizer_qmax(q);
    float best_a = 1.0f;
    double best_err = INFINITY;
    for (int g = 0; g < NUPES_GRID; g++) {
        float a = (float)(1.0 - 0.1 * g), d, z;
        range_of_warped(t, sub, m, a, q->bits, how, &q->kp, &d, &z);
        nu_fake_with(y, sub, m, d, z, a, qmax);
        double err = 0;
        for (size_t i = 0; i < m; i++) err += ((double)y[i] - sub[i]) * ((double)y[i] - sub[i]);
        if (err < best_err) {  // strictly better: ties keep the larger exponent
            best_err = err;
            best_a = a;
        }
    }
    range_of_warped(t, x, n, best_a, q->bits, how, &q->kp, &q->delta.data[k], &q->zero.data[k]);
    q->param.data[k] = best_a;
    free(sub), free(t), free(y);
    return 0;
}

/* ---- the row's kernels ------------------------------------------------------------------ */

static void nu_fake(const Quantizer *q, int k, float *y, const float *x, size_t n) {
    nu_fake_with(y, x, n, q->delta.data[k], q->zero.data[k], nu_a(q, k), quantizer_qmax(q));
}

static void nu_backward(const Quantizer *q, int k, float *dx, double g[QKIND_GRAD_SLOTS], const float *dy,
                        const float *x, size_t n) {
    const float delta = q->delta.data[k], zero = q->zero.data[k], a = nu_a(q, k);
    const int qmax = quantizer_qmax(q);
    const float fq = (float)qmax;
    const double ad = (double)a;
    const int table = zero == rintf(zero);
    const float inv_a = 1.0f / a;
    LevelTable t;
    if (table) level_table(&t, delta, zero, a, qmax, 1);
    double acc_d = 0, acc_z = 0, acc_a = 0;
    for (size_t i = 0; i < n; i++) {
        float lx, px = warp_log(x[i], a, &lx), s = px / delta, u = rintf(s) + zero;
        int inside = u >= 0.0f && u <= fq;
        float uc = inside ? u : (u < 0.0f ? 0.0f : fq);
        double gi = dy[i], slope, ylnv;
        if (table) {
            slope = t.slope[(int)uc];
            ylnv = t.ylnv[(int)uc];
        } else {
            float v = (uc - zero) * delta;
            slope = unwarp_slope(v, ad);
            ylnv = v != 0.0f ? (double)unwarp(v, a, inv_a) * log(fabs((double)v)) : 0.0;
        }
        if (dx && inside) dx[i] += dy[i];
        acc_d += gi * slope * ((double)(uc - zero) - (inside ? (double)s : 0.0));  // as the uniform kind at a = 1
        if (!inside) acc_z -= gi * slope * (double)delta;
        acc_a -= gi * ylnv / (ad * ad);
        if (inside && x[i] != 0.0f) acc_a += gi * slope * (double)px * (double)lx;
    }
    memset(g, 0, QKIND_GRAD_SLOTS * sizeof g[0]);
    g[0] = acc_d;
    g[1] = acc_z;
    g[2] = acc_a;
}

static void nu_encode(const Quantizer *q, int k, uint8_t *out, const float *x, size_t n) {
    const float d = q->delta.data[k], z = q->zero.data[k], a = nu_a(q, k), fq = (float)quantizer_qmax(q);
    for (size_t i = 0; i < n; i++) {
        float u = rintf(rintf(warp(x[i], a) / d) + z);
        u = u > fq ? fq : u;
        out[i] = (uint8_t)(u >= 0.0f ? u : 0.0f);  // NaN fails the test: level 0
    }
}

static void nu_decode(const Quantizer *q, int k, float *y, const uint8_t *in, size_t n) {
    LevelTable t;
    level_table(&t, q->delta.data[k], q->zero.data[k], nu_a(q, k), quantizer_qmax(q), 0);
    for (size_t i = 0; i < n; i++) y[i] = t.y[in[i]];
}

// y = p⁻¹((l - z) Δ), l fixed: d/dΔ = p⁻¹'(v) (l - z), d/dz = -Δ p⁻¹'(v), d/da = -y ln|v| / a².
// dy is summed per level (in double), then each level's terms are added once. At a = 1, d/dΔ
// and d/dz are the uniform kind's own sums (bit for bit).
static void nu_decode_backward(const Quantizer *q, int k, double g[QKIND_GRAD_SLOTS], const float *dy,
                               const uint8_t *in, size_t n) {
    const float d = q->delta.data[k], z = q->zero.data[k], a = nu_a(q, k);
    const int qmax = quantizer_qmax(q);
    LevelTable t;
    level_table(&t, d, z, a, qmax, 1);
    double sum[256] = {0};
    for (size_t i = 0; i < n; i++) sum[in[i]] += (double)dy[i];
    double sd = 0, sz = 0, sa = 0;
    for (int l = 0; l <= qmax; l++) {
        sd += sum[l] * t.slope[l] * ((double)l - (double)z);
        sz -= sum[l] * t.slope[l] * (double)d;
        sa -= sum[l] * t.ylnv[l] / ((double)a * a);
    }
    if (a == 1.0f) QKIND_UNIFORM_OPS.decode_backward(q, k, g, dy, in, n);
    else {
        memset(g, 0, QKIND_GRAD_SLOTS * sizeof g[0]);
        g[0] = sd;
        g[1] = sz;
    }
    g[2] = sa;
}

const QKindOps QKIND_NUPES_OPS = {
    .name = "nupes",
    .n_param = 1,
    .affine = 0,
    .lut = 1,  // p and p⁻¹ are increasing: the export's integer path runs it through level tables
    .weight_only = 0,
    .side = 0,
    .fit = nu_fit,
    .fake = nu_fake,
    .backward = nu_backward,
    .encode = nu_encode,
    .decode = nu_decode,
    .decode_backward = nu_decode_backward,
    .packed_size = qkind_uniform_packed_size,  // the levels' bytes: uniform's (pack.h)
    .pack = qkind_uniform_pack,
    .unpack = qkind_uniform_unpack,
    .side_count = qkind_no_side,
};
