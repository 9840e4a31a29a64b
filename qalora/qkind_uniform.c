/* qkind_uniform.c: the uniform affine quantizer (EfficientDM quant_layer.py
   UniformAffineQuantizer, asymmetric; formulas and gradients in quantizer.h, their
   derivation in fake_quant.c), the first row of the kind table (qkind.h):
       q(x) = (clamp(round(x/Δ) + z, 0, 2^b - 1) - z) · Δ
   Fit: 'max' (naive PTQ) or 'mse' (the reference's 80-candidate L_2.4 search). Levels:
   clamp(round(round(x/Δ) + z)), packed as pack.h defines. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops/fastmath.h"
#include "qalora/pack.h"
#include "qalora/qkind.h"
#include "util/par.h"

// Elements per chunk of the threaded 'mse' search; chunks are summed in double and added in
// order, 64 chunks per parallel region (so the partials fit on the stack).
#define QCHUNK 4096
#define QCHUNK_GROUP 64

static inline float uq_level(float x, float delta, float zero, float qmax) {
    float u = rintf(x / delta) + zero;  // x / Δ (not x * (1/Δ)): torch divides
    return u < 0.0f ? 0.0f : (u > qmax ? qmax : u);
}

// The weight path runs this and uq_backward over every weight twice per step: compiled for
// AVX-512 / AVX2 too (fastmath.h), where rintf is one instruction instead of a branchy
// sequence and the loop vectorizes. The same operations per element, so the same bits.
FASTMATH_CLONES void quant_uniform_fake(float *y, const float *x, size_t n, float delta, float zero, int qmax) {
    const float fq = (float)qmax;
    for (size_t i = 0; i < n; i++) {
        float u = rintf(x[i] / delta) + zero;
        u = u < 0.0f ? 0.0f : u;  // as uq_level, one clamp at a time (NaN passes both)
        u = u > fq ? fq : u;
        y[i] = (u - zero) * delta;
    }
}

/* ---- fit ----------------------------------------------------------------------------- */

void quant_uniform_fit_max(const float *x, size_t n, int bits, float *delta, float *zero) {
    // In double like the reference, which works on .item() values (Python floats).
    double lo = 0, hi = 0;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < lo) lo = x[i];
        if (x[i] > hi) hi = x[i];
    }
    double d = (hi - lo) / (double)((1 << bits) - 1);
    if (d < QUANT_MIN_DELTA) d = QUANT_MIN_DELTA;
    *delta = (float)d;
    *zero = (float)rint(-lo / d);  // Python round(): half to even
}

// The search's settings with the reference's where kp leaves them zero (or kp is NULL).
typedef struct {
    int steps;
    double shrink;
    float p;
} UqMse;

static UqMse uq_mse_of(const QKindParams *kp) {
    UqMse m = {QUANT_MSE_STEPS, QUANT_MSE_SHRINK, QUANT_MSE_P};
    if (kp && kp->mse_steps > 0) m.steps = kp->mse_steps < QUANT_MSE_MAX_STEPS ? kp->mse_steps : QUANT_MSE_MAX_STEPS;
    if (kp && kp->mse_shrink > 0) m.shrink = kp->mse_shrink;
    if (kp && kp->mse_p > 0) m.p = (float)kp->mse_p;
    return m;
}

// Candidate i of the 'mse' search, in float32 as the reference's tensor arithmetic:
// the Python factor (1 - shrink i) is a double cast to float by torch before the multiply.
static void uq_mse_candidate(float xmin, float xmax, int i, double shrink, int qmax, float *delta, float *zero) {
    float s = (float)(1.0 - (double)i * shrink);
    float nmax = xmax * s, nmin = xmin * s;
    float d = (nmax - nmin) / (float)qmax;
    *delta = d;
    *zero = rintf(-nmin / d);
}

// sums[k] += sum over x of |x - q_k(x)|^p for every candidate k (serial).
static void uq_mse_sums(double *sums, const float *x, size_t n, const float *cd, const float *cz, int qmax,
                        const UqMse *m) {
    float fq = (float)qmax;
    for (int k = 0; k < m->steps; k++) {
        float d = cd[k], z = cz[k];
        double s = 0;
        for (size_t i = 0; i < n; i++) {
            float xq = (uq_level(x[i], d, z, fq) - z) * d;
            float diff = fabsf(x[i] - xq);
            if (diff > 0.0f) s += (double)powf(diff, m->p);
        }
        sums[k] += s;
    }
}

// The 'mse' fit of one slice: serial (a channel, inside a parallel loop over channels) or
// threaded over chunks (one big activation).
static void uq_fit_mse_impl(const float *x, size_t n, int bits, const QKindParams *kp, float *delta, float *zero,
                            int parallel) {
    const UqMse m = uq_mse_of(kp);
    int qmax = (1 << bits) - 1;
    float xmin = INFINITY, xmax = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < xmin) xmin = x[i];
        if (x[i] > xmax) xmax = x[i];
    }
    float cd[QUANT_MSE_MAX_STEPS], cz[QUANT_MSE_MAX_STEPS];
    for (int k = 0; k < m.steps; k++) uq_mse_candidate(xmin, xmax, k, m.shrink, qmax, &cd[k], &cz[k]);
    // per-chunk partial sums: on the heap (up to QCHUNK_GROUP x QUANT_MSE_MAX_STEPS doubles)
    double *part = malloc((size_t)QCHUNK_GROUP * (size_t)m.steps * sizeof *part);
    if (!(cd[0] > 0.0f) || !isfinite(cd[0]) || !part) {  // constant data: every candidate has Δ = 0
        free(part);
        quant_uniform_fit_max(x, n, bits, delta, zero);  // (or no memory for the search: the max range)
        return;
    }
    // Fixed chunks summed in order whether or not they run in parallel: one summation
    // order for a given n, so the serial and the threaded fit pick the same candidate.
    double sums[QUANT_MSE_MAX_STEPS] = {0};
    size_t nchunks = (n + QCHUNK - 1) / QCHUNK;
    for (size_t g0 = 0; g0 < nchunks; g0 += QCHUNK_GROUP) {
        size_t gn = nchunks - g0 < QCHUNK_GROUP ? nchunks - g0 : QCHUNK_GROUP;
        PAR_FOR(schedule(static), parallel && gn > 1,
        for (size_t k = 0; k < gn; k++) {
            size_t lo = (g0 + k) * QCHUNK, hi = lo + QCHUNK < n ? lo + QCHUNK : n;
            double *pk = part + k * (size_t)m.steps;
            memset(pk, 0, (size_t)m.steps * sizeof *pk);
            uq_mse_sums(pk, x + lo, hi - lo, cd, cz, qmax, &m);
        });
        for (size_t k = 0; k < gn; k++)
            for (int j = 0; j < m.steps; j++) sums[j] += part[k * (size_t)m.steps + (size_t)j];
    }
    free(part);
    // The reference keeps the first strictly better score, starting below 1e10.
    double best = 1e10;
    int best_k = -1;
    for (int k = 0; k < m.steps; k++) {
        double score = sums[k] / (double)n;
        if (cd[k] > 0.0f && score < best) {
            best = score;
            best_k = k;
        }
    }
    if (best_k < 0) {
        quant_uniform_fit_max(x, n, bits, delta, zero);
        return;
    }
    *delta = cd[best_k];
    *zero = cz[best_k];
}

void quant_uniform_fit_mse(const float *x, size_t n, int bits, const QKindParams *kp, float *delta, float *zero) {
    uq_fit_mse_impl(x, n, bits, kp, delta, zero, 0);
}

/* ---- the row's kernels ----------------------------------------------------------------- */

static int uq_fit(Quantizer *q, int k, const float *x, size_t n, QuantInit how, int parallel) {
    float *d = &q->delta.data[k], *z = &q->zero.data[k];
    if (how == QUANT_INIT_MAX) quant_uniform_fit_max(x, n, q->bits, d, z);
    else uq_fit_mse_impl(x, n, q->bits, &q->kp, d, z, parallel);
    return 0;
}

static void uq_fake(const Quantizer *q, int k, float *y, const float *x, size_t n) {
    quant_uniform_fake(y, x, n, q->delta.data[k], q->zero.data[k], quantizer_qmax(q));
}

// Gradient of sum(q(x) * dy) over one slice: dx += (and g[0], g[1] = the slice's sums for Δ, z).
// With u = round(x/Δ) + z and "inside" = 0 <= u <= qmax:
//   dq/dx = inside; dq/dΔ = (clamp(u) - z) - inside * x/Δ; dq/dz = -Δ (1 - inside).
// The float work of a block vectorizes (clones as quant_uniform_fake); the sums run in double
// over UQ_LANES interleaved partial sums (element i into lane i % UQ_LANES, the lanes added
// pairwise at the end), a fixed order whatever the threads: one chain of dependent double
// adds per element was the slowest part of the weight path's backward.
#define UQ_BLOCK 256
#define UQ_LANES 8

// Pairwise total of the lanes.
static double lanes_total(const double *a) {
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]));
}

FASTMATH_CLONES static void uq_backward(const Quantizer *q, int k, float *dx, double g[QKIND_GRAD_SLOTS],
                                        const float *dy, const float *x, size_t n) {
    float delta = q->delta.data[k], zero = q->zero.data[k], fq = (float)quantizer_qmax(q);
    double acc_d[UQ_LANES] = {0}, acc_z[UQ_LANES] = {0};
    // per element of a block: x/Δ where inside (else 0), clamp(u) - z, inside (1 or 0), and
    // Δ where outside (else 0)
    float vin[UQ_BLOCK], lvl[UQ_BLOCK], ins[UQ_BLOCK], outd[UQ_BLOCK];
    for (size_t b = 0; b < n; b += UQ_BLOCK) {
        size_t m = n - b < UQ_BLOCK ? n - b : UQ_BLOCK;
        const float *xb = x + b, *gb = dy + b;
        for (size_t i = 0; i < m; i++) {
            float v = xb[i] / delta;
            float u = rintf(v) + zero;
            // integer-mask selects (fastmath.h): a float ?: keeps GCC from vectorizing
            uint32_t inside = -(uint32_t)((u >= 0.0f) & (u <= fq)), below = -(uint32_t)(u < 0.0f);
            float uc = fm_select(inside, u, fm_select(below, 0.0f, fq));
            vin[i] = fm_select(inside, v, 0.0f);
            lvl[i] = uc - zero;
            ins[i] = fm_select(inside, 1.0f, 0.0f);
            outd[i] = fm_select(inside, 0.0f, delta);
        }
        if (dx)
            for (size_t i = 0; i < m; i++) dx[b + i] = fm_select(-(uint32_t)(ins[i] != 0.0f), dx[b + i] + gb[i], dx[b + i]);
        // a block is UQ_BLOCK long (a multiple of the lanes) but for the last
        for (size_t i0 = 0; i0 < m; i0 += UQ_LANES) {
            size_t w = m - i0 < UQ_LANES ? m - i0 : UQ_LANES;
            for (size_t j = 0; j < w; j++) {
                size_t i = i0 + j;
                acc_d[j] += (double)gb[i] * ((double)lvl[i] - (double)vin[i]);
                acc_z[j] -= (double)gb[i] * (double)outd[i];
            }
        }
    }
    memset(g, 0, QKIND_GRAD_SLOTS * sizeof g[0]);
    g[0] = lanes_total(acc_d);
    g[1] = lanes_total(acc_z);
}

static void uq_encode(const Quantizer *q, int k, uint8_t *out, const float *x, size_t n) {
    float d = q->delta.data[k], z = q->zero.data[k], fq = (float)quantizer_qmax(q);
    for (size_t i = 0; i < n; i++) {
        float u = rintf(rintf(x[i] / d) + z);
        u = u > fq ? fq : u;
        out[i] = (uint8_t)(u >= 0.0f ? u : 0.0f);  // NaN fails the test: level 0, never a cast of NaN
    }
}

static void uq_decode(const Quantizer *q, int k, float *y, const uint8_t *in, size_t n) {
    float d = q->delta.data[k], z = q->zero.data[k];
    for (size_t i = 0; i < n; i++) y[i] = ((float)in[i] - z) * d;
}

// d/dΔ of Σ dy (l - z) Δ is Σ dy (l - z); d/dz is -Δ Σ dy.
// Lanes as uq_backward's.
FASTMATH_CLONES static void uq_decode_backward(const Quantizer *q, int k, double g[QKIND_GRAD_SLOTS],
                                               const float *dy, const uint8_t *in, size_t n) {
    double z = (double)q->zero.data[k], sd[UQ_LANES] = {0}, sy[UQ_LANES] = {0};
    for (size_t i0 = 0; i0 < n; i0 += UQ_LANES) {
        size_t w = n - i0 < UQ_LANES ? n - i0 : UQ_LANES;
        for (size_t j = 0; j < w; j++) {
            sd[j] += (double)dy[i0 + j] * ((double)in[i0 + j] - z);
            sy[j] += (double)dy[i0 + j];
        }
    }
    memset(g, 0, QKIND_GRAD_SLOTS * sizeof g[0]);
    g[0] = lanes_total(sd);
    g[1] = -(double)q->delta.data[k] * lanes_total(sy);
}

size_t qkind_uniform_packed_size(const Quantizer *q, size_t n) { return pack_size(n, q->bits); }

void qkind_uniform_pack(const Quantizer *q, uint8_t *dst, const uint8_t *levels, size_t n) {
    pack_ints(dst, levels, n, q->bits);
}

void qkind_uniform_unpack(const Quantizer *q, uint8_t *levels, const uint8_t *src, size_t n) {
    unpack_ints(levels, src, n, q->bits);
}

int qkind_no_side(const Quantizer *q, size_t slice_len) {
    (void)q, (void)slice_len;
    return 0;
}

const QKindOps QKIND_UNIFORM_OPS = {
    .name = "uniform",
    .n_param = 0,
    .affine = 1,
    .weight_only = 0,
    .side = 0,
    .fit = uq_fit,
    .fake = uq_fake,
    .backward = uq_backward,
    .encode = uq_encode,
    .decode = uq_decode,
    .decode_backward = uq_decode_backward,
    .packed_size = qkind_uniform_packed_size,
    .pack = qkind_uniform_pack,
    .unpack = qkind_uniform_unpack,
    .side_count = qkind_no_side,
};
