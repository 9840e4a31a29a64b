/* quantizer.c: the quantizer kernels (fit, fake forward/backward, encode/decode) and the
   kind switch in front of them. The tape ops are in fake_quant.c. */
#include "qalora/quantizer.h"

#include <math.h>
#include <string.h>

// Elements per chunk of a layer-wise reduction; chunks are summed in double and added in
// order, 64 chunks per parallel region (so the partials fit on the stack).
#define QCHUNK 4096
#define QCHUNK_GROUP 64

Quantizer *quantizer_setup(Quantizer *q, QuantKind kind, int bits, int channel_wise, int n, float *delta,
                           float *zero, float *ddelta, float *dzero) {
    memset(q, 0, sizeof *q);
    q->kind = kind;
    q->bits = bits;
    q->channel_wise = channel_wise;
    q->n = n;
    tensor_init_param(&q->delta, delta, ddelta, 1, (int[]){n});
    tensor_init_param(&q->zero, zero, dzero, 1, (int[]){n});
    return q;
}

int quantizer_qmax(const Quantizer *q) { return (1 << q->bits) - 1; }

const char *quant_kind_name(QuantKind k) {
    switch (k) {
    case QUANT_UNIFORM: return "uniform";
    default: return "?";
    }
}

/* ---- uniform affine: one (Δ, z) over a slice -------------------------------------- */

static inline float uq_level(float x, float delta, float zero, float qmax) {
    float u = rintf(x / delta) + zero;  // x / Δ (not x * (1/Δ)): torch divides
    return u < 0.0f ? 0.0f : (u > qmax ? qmax : u);
}

void quant_uniform_fake(float *y, const float *x, size_t n, float delta, float zero, int qmax) {
    for (size_t i = 0; i < n; i++) y[i] = (uq_level(x[i], delta, zero, (float)qmax) - zero) * delta;
}

static void uq_fake_par(float *y, const float *x, size_t n, float delta, float zero, int qmax) {
    float fq = (float)qmax;
#pragma omp parallel for schedule(static) if (n >= QUANT_OMP_MIN_WORK)
    for (size_t i = 0; i < n; i++) y[i] = (uq_level(x[i], delta, zero, fq) - zero) * delta;
}

// Gradient of sum(q(x) * dy) over one slice: dx += (and *sd, *sz = the slice's sums for Δ, z).
// With u = round(x/Δ) + z and "inside" = 0 <= u <= qmax:
//   dq/dx = inside; dq/dΔ = (clamp(u) - z) - inside * x/Δ; dq/dz = -Δ (1 - inside).
static void uq_backward_slice(float *dx, double *sd, double *sz, const float *dy, const float *x, size_t n,
                              float delta, float zero, int qmax) {
    float fq = (float)qmax;
    double acc_d = 0, acc_z = 0;
    for (size_t i = 0; i < n; i++) {
        float v = x[i] / delta;
        float u = rintf(v) + zero;
        int inside = u >= 0.0f && u <= fq;
        float uc = inside ? u : (u < 0.0f ? 0.0f : fq);
        float g = dy[i];
        if (dx && inside) dx[i] += g;
        acc_d += (double)g * ((double)(uc - zero) - (inside ? (double)v : 0.0));
        if (!inside) acc_z -= (double)g * (double)delta;
    }
    *sd = acc_d;
    *sz = acc_z;
}

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

// Candidate i of the 'mse' search, in float32 as the reference's tensor arithmetic:
// the Python factor (1 - 0.01 i) is a double cast to float by torch before the multiply.
static void uq_mse_candidate(float xmin, float xmax, int i, int qmax, float *delta, float *zero) {
    float s = (float)(1.0 - (double)i * 0.01);
    float nmax = xmax * s, nmin = xmin * s;
    float d = (nmax - nmin) / (float)qmax;
    *delta = d;
    *zero = rintf(-nmin / d);
}

// sums[k] += sum over x of |x - q_k(x)|^p for every candidate k (serial).
static void uq_mse_sums(double *sums, const float *x, size_t n, const float *cd, const float *cz, int qmax) {
    float fq = (float)qmax;
    for (int k = 0; k < QUANT_MSE_STEPS; k++) {
        float d = cd[k], z = cz[k];
        double s = 0;
        for (size_t i = 0; i < n; i++) {
            float xq = (uq_level(x[i], d, z, fq) - z) * d;
            float diff = fabsf(x[i] - xq);
            if (diff > 0.0f) s += (double)powf(diff, QUANT_MSE_P);
        }
        sums[k] += s;
    }
}

// The 'mse' fit of one slice: serial (a channel, inside a parallel loop over channels) or
// threaded over chunks (one big activation).
static void uq_fit_mse_impl(const float *x, size_t n, int bits, float *delta, float *zero, int parallel) {
    int qmax = (1 << bits) - 1;
    float xmin = INFINITY, xmax = -INFINITY;
    for (size_t i = 0; i < n; i++) {
        if (x[i] < xmin) xmin = x[i];
        if (x[i] > xmax) xmax = x[i];
    }
    float cd[QUANT_MSE_STEPS], cz[QUANT_MSE_STEPS];
    for (int k = 0; k < QUANT_MSE_STEPS; k++) uq_mse_candidate(xmin, xmax, k, qmax, &cd[k], &cz[k]);
    if (!(cd[0] > 0.0f) || !isfinite(cd[0])) {  // constant data: every candidate has Δ = 0
        quant_uniform_fit_max(x, n, bits, delta, zero);
        return;
    }
    // Fixed chunks summed in order whether or not they run in parallel: one summation
    // order for a given n, so the serial and the threaded fit pick the same candidate.
    double sums[QUANT_MSE_STEPS] = {0};
    size_t nchunks = (n + QCHUNK - 1) / QCHUNK;
    for (size_t g0 = 0; g0 < nchunks; g0 += QCHUNK_GROUP) {
        size_t gn = nchunks - g0 < QCHUNK_GROUP ? nchunks - g0 : QCHUNK_GROUP;
        double part[QCHUNK_GROUP][QUANT_MSE_STEPS];
#pragma omp parallel for schedule(static) if (parallel && gn > 1)
        for (size_t k = 0; k < gn; k++) {
            size_t lo = (g0 + k) * QCHUNK, hi = lo + QCHUNK < n ? lo + QCHUNK : n;
            memset(part[k], 0, sizeof part[k]);
            uq_mse_sums(part[k], x + lo, hi - lo, cd, cz, qmax);
        }
        for (size_t k = 0; k < gn; k++)
            for (int j = 0; j < QUANT_MSE_STEPS; j++) sums[j] += part[k][j];
    }
    // The reference keeps the first strictly better score, starting below 1e10.
    double best = 1e10;
    int best_k = -1;
    for (int k = 0; k < QUANT_MSE_STEPS; k++) {
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

void quant_uniform_fit_mse(const float *x, size_t n, int bits, float *delta, float *zero) {
    uq_fit_mse_impl(x, n, bits, delta, zero, 0);
}

/* ---- the kind switch ------------------------------------------------------------- */

// Slice length of a call: channel-wise slices are the rows of x.
static size_t q_slice_len(const Quantizer *q, size_t n) {
    return q->channel_wise ? (q->n > 0 ? n / (size_t)q->n : 0) : n;
}

int quantizer_fit(Quantizer *q, const float *x, size_t n, QuantInit how, int entry, Err *e) {
    if (q->bits < QUANT_MIN_BITS || q->bits > QUANT_MAX_BITS)
        return err_set(e, ERR_VALUE, "quantizer: %d bits (supported: %d..%d)", q->bits, QUANT_MIN_BITS,
                       QUANT_MAX_BITS);
    if (q->channel_wise && (q->n <= 0 || n % (size_t)q->n != 0))
        return err_set(e, ERR_VALUE, "quantizer: %zu values do not split into %d channels", n, q->n);
    if (!q->channel_wise && entry >= q->n)
        return err_set(e, ERR_VALUE, "quantizer: entry %d of a %d-entry table", entry, q->n);
    if (n == 0) return err_set(e, ERR_VALUE, "quantizer: no data to fit");
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return err_set(e, ERR_VALUE, "quantizer: non-finite value %g at index %zu", x[i], i);
    if (q->kind != QUANT_UNIFORM)
        return err_set(e, ERR_INTERNAL, "quantizer: kind %d has no fit", (int)q->kind);
    float *d = q->delta.data, *z = q->zero.data;
    if (q->channel_wise) {
        size_t len = q_slice_len(q, n);
#pragma omp parallel for schedule(static)
        for (int ch = 0; ch < q->n; ch++) {
            const float *xs = x + (size_t)ch * len;
            if (how == QUANT_INIT_MAX) quant_uniform_fit_max(xs, len, q->bits, &d[ch], &z[ch]);
            else uq_fit_mse_impl(xs, len, q->bits, &d[ch], &z[ch], 0);
        }
        return 0;
    }
    float fd, fz;
    if (how == QUANT_INIT_MAX) quant_uniform_fit_max(x, n, q->bits, &fd, &fz);
    else uq_fit_mse_impl(x, n, q->bits, &fd, &fz, 1);
    for (int k = 0; k < q->n; k++) {
        if (entry >= 0 && k != entry) continue;
        d[k] = fd;
        z[k] = fz;
    }
    return 0;
}

void quantizer_fake(const Quantizer *q, float *y, const float *x, size_t n, int entry) {
    switch (q->kind) {
    case QUANT_UNIFORM:
        if (q->channel_wise) {
            size_t len = q_slice_len(q, n);
            int qmax = quantizer_qmax(q);
#pragma omp parallel for schedule(static) if (n >= QUANT_OMP_MIN_WORK)
            for (int ch = 0; ch < q->n; ch++)
                quant_uniform_fake(y + (size_t)ch * len, x + (size_t)ch * len, len, q->delta.data[ch],
                                       q->zero.data[ch], qmax);
        } else {
            uq_fake_par(y, x, n, q->delta.data[entry], q->zero.data[entry], quantizer_qmax(q));
        }
        break;
    default: break;
    }
}

void quantizer_fake_backward(const Quantizer *q, float *dx, float *ddelta, float *dzero, const float *dy,
                             const float *x, size_t n, int entry) {
    if (q->kind != QUANT_UNIFORM) return;
    int qmax = quantizer_qmax(q);
    if (q->channel_wise) {
        size_t len = q_slice_len(q, n);
#pragma omp parallel for schedule(static) if (n >= QUANT_OMP_MIN_WORK)
        for (int ch = 0; ch < q->n; ch++) {
            double sd, sz;
            size_t off = (size_t)ch * len;
            uq_backward_slice(dx ? dx + off : NULL, &sd, &sz, dy + off, x + off, len, q->delta.data[ch],
                              q->zero.data[ch], qmax);
            if (ddelta) ddelta[ch] += (float)sd;
            if (dzero) dzero[ch] += (float)sz;
        }
        return;
    }
    float d = q->delta.data[entry], z = q->zero.data[entry];
    size_t nchunks = (n + QCHUNK - 1) / QCHUNK;
    double total_d = 0, total_z = 0;
    for (size_t g0 = 0; g0 < nchunks; g0 += QCHUNK_GROUP) {
        size_t gn = nchunks - g0 < QCHUNK_GROUP ? nchunks - g0 : QCHUNK_GROUP;
        double pd[QCHUNK_GROUP], pz[QCHUNK_GROUP];
#pragma omp parallel for schedule(static) if (gn > 1 && n >= QUANT_OMP_MIN_WORK)
        for (size_t k = 0; k < gn; k++) {
            size_t lo = (g0 + k) * QCHUNK, hi = lo + QCHUNK < n ? lo + QCHUNK : n;
            uq_backward_slice(dx ? dx + lo : NULL, &pd[k], &pz[k], dy + lo, x + lo, hi - lo, d, z, qmax);
        }
        for (size_t k = 0; k < gn; k++) {
            total_d += pd[k];
            total_z += pz[k];
        }
    }
    if (ddelta) ddelta[entry] += (float)total_d;
    if (dzero) dzero[entry] += (float)total_z;
}

void quantizer_encode(const Quantizer *q, uint8_t *out, const float *x, size_t n, int entry) {
    if (q->kind != QUANT_UNIFORM) return;
    size_t len = q_slice_len(q, n);
    float fq = (float)quantizer_qmax(q);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        size_t k = q->channel_wise ? i / len : (size_t)entry;
        float u = rintf(rintf(x[i] / q->delta.data[k]) + q->zero.data[k]);
        u = u > fq ? fq : u;
        out[i] = (uint8_t)(u >= 0.0f ? u : 0.0f);  // NaN fails the test: level 0, never a cast of NaN
    }
}

void quantizer_decode(const Quantizer *q, float *y, const uint8_t *in, size_t n, int entry) {
    if (q->kind != QUANT_UNIFORM) return;
    size_t len = q_slice_len(q, n);
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        size_t k = q->channel_wise ? i / len : (size_t)entry;
        y[i] = ((float)in[i] - q->zero.data[k]) * q->delta.data[k];
    }
}

void quantizer_round_zero(Quantizer *q) {
    for (int k = 0; k < q->n; k++) q->zero.data[k] = rintf(q->zero.data[k]);
}
