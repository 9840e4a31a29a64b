/* token_quant.c: dynamic per-token activation quantization (token_quant.h), its kernels over
   one outer slice (a conv input's image, a linear input's row) and its op on the tape. */
#include "qalora/token_quant.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/ops/fastmath.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many elements the loops run on one thread (quantizer.h's rule).
#define TOKQ_OMP_MIN_WORK QUANT_OMP_MIN_WORK

/* Δ_t into d and z_t into z for the inner tokens of one slice (C channels at stride inner),
   and the unscaled step s_t into s (NULL: not needed). A token of zeros (s_t = 0, or a range
   that is not finite) gets Δ = 1, z = 0: q = 0 at zeros, and the NaN or inf it holds passes
   through as the static quantizer lets it. */
FASTMATH_CLONES static void token_ranges(float *d, float *z, float *s, const float *x, size_t C, size_t inner,
                                         float alpha, float L) {
    if (inner == 1) {  // a row: one token, contiguous
        // 16 running extremes, so that the loop runs in vectors (a min or max is the same in
        // any order: equal values have equal bits, NaN is never taken)
        float lo16[16] = {0}, hi16[16] = {0}, lo = 0.0f, hi = 0.0f;
        size_t c = 0;
        for (; c + 16 <= C; c += 16)
#pragma GCC unroll 1  // kept a loop for the vectorizer (unrolled, its 16 statements stayed scalar)
            for (int i = 0; i < 16; i++) {
                lo16[i] = x[c + i] < lo16[i] ? x[c + i] : lo16[i];
                hi16[i] = x[c + i] > hi16[i] ? x[c + i] : hi16[i];
            }
        for (; c < C; c++) {
            lo = x[c] < lo ? x[c] : lo;
            hi = x[c] > hi ? x[c] : hi;
        }
        for (int i = 0; i < 16; i++) {
            lo = lo16[i] < lo ? lo16[i] : lo;
            hi = hi16[i] > hi ? hi16[i] : hi;
        }
        d[0] = lo, z[0] = hi;
    } else {
        for (size_t p = 0; p < inner; p++) d[p] = 0.0f, z[p] = 0.0f;  // lo in d, hi in z first
        for (size_t c = 0; c < C; c++) {
            const float *xc = x + c * inner;
            for (size_t p = 0; p < inner; p++) {
                float v = xc[p];
                d[p] = v < d[p] ? v : d[p];
                z[p] = v > z[p] ? v : z[p];
            }
        }
    }
    for (size_t p = 0; p < inner; p++) {
        float lo = d[p], sp = (z[p] - lo) / L;
        int none = !(sp > 0.0f && sp < INFINITY);
        if (s) s[p] = none ? 0.0f : sp;
        d[p] = none ? 1.0f : alpha * sp;
        z[p] = none ? 0.0f : rintf(-lo / sp);
    }
}

// A token's level before rounding to an integer type: clamp(rint(x / d) + z, 0, L), one clamp at
// a time as the static kernel (NaN passes both).
static inline float token_level(float x, float d, float z, float L) {
    float u = rintf(x / d) + z;
    u = u < 0.0f ? 0.0f : u;
    return u > L ? L : u;
}

FASTMATH_CLONES static void token_fake_slice(float *y, const float *x, size_t C, size_t inner, const float *d,
                                             const float *z, float L) {
    if (inner == 1) {  // a row, as token_levels_slice
        const float dd = d[0], zz = z[0];
        for (size_t c = 0; c < C; c++) y[c] = (token_level(x[c], dd, zz, L) - zz) * dd;
        return;
    }
    for (size_t c = 0; c < C; c++) {
        const float *xc = x + c * inner;
        float *yc = y + c * inner;
        for (size_t p = 0; p < inner; p++) yc[p] = (token_level(xc[p], d[p], z[p], L) - z[p]) * d[p];
    }
}

// g[p] = Σ_c dy·dq/dΔ_t over token p of the slice (double, channel order); dx += dy inside.
FASTMATH_CLONES static void token_backward_slice(float *dx, double *g, const float *dy, const float *x, size_t C,
                                                 size_t inner, const float *d, const float *z, float L) {
    for (size_t p = 0; p < inner; p++) g[p] = 0.0;
    for (size_t c = 0; c < C; c++) {
        const float *xc = x + c * inner, *gc = dy + c * inner;
        float *dxc = dx ? dx + c * inner : NULL;
        for (size_t p = 0; p < inner; p++) {
            float v = xc[p] / d[p], r = rintf(v), u = r + z[p];
            int in = u >= 0.0f && u <= L;
            float uc = u < 0.0f ? 0.0f : (u > L ? L : u);
            float gd = in ? r - v : uc - z[p];
            g[p] += (double)gc[p] * (double)gd;
            if (dxc) dxc[p] += in ? gc[p] : 0.0f;
        }
    }
}

int token_quant_view(const Tensor *x, int planes, size_t *outer, size_t *C, size_t *inner) {
    if (x->ndim < (planes ? 2 : 1)) return -1;
    if (planes) {
        *outer = (size_t)x->shape[0];
        *C = (size_t)x->shape[1];
    } else {
        *C = (size_t)x->shape[x->ndim - 1];
        *outer = *C ? x->n / *C : 0;
    }
    *inner = planes && *outer && *C ? x->n / (*outer * *C) : 1;
    return 0;
}

void token_quant_fake(float *y, const float *x, size_t outer, size_t C, size_t inner, float alpha, int bits,
                      float *scratch) {
    const float L = (float)((1 << bits) - 1);
    float *own = NULL;
    if (!scratch && !(scratch = own = malloc(2 * outer * inner * sizeof(float)))) {
        for (size_t i = 0; i < outer * C * inner; i++) y[i] = NAN;  // no partial result passes for a real one
        return;
    }
    float *d = scratch, *z = scratch + outer * inner;
    size_t slice = C * inner;
    PAR_FOR(schedule(static), outer > 1 && outer * slice >= TOKQ_OMP_MIN_WORK,
    for (size_t o = 0; o < outer; o++) {
        token_ranges(d + o * inner, z + o * inner, NULL, x + o * slice, C, inner, alpha, L);
        token_fake_slice(y + o * slice, x + o * slice, C, inner, d + o * inner, z + o * inner, L);
    });
    free(own);
}

FASTMATH_CLONES static void token_levels_slice(uint8_t *q, const float *x, size_t C, size_t inner, const float *d,
                                               const float *z, float L) {
    if (inner == 1) {  // a row: the channels are contiguous, the token's step and zero point fixed
        const float dd = d[0], zz = z[0];
        for (size_t c = 0; c < C; c++) {
            float u = token_level(x[c], dd, zz, L);
            q[c] = (uint8_t)(u == u ? u : 0.0f);  // NaN: level 0
        }
        return;
    }
    for (size_t c = 0; c < C; c++) {
        const float *xc = x + c * inner;
        uint8_t *qc = q + c * inner;
        for (size_t p = 0; p < inner; p++) {
            float u = token_level(xc[p], d[p], z[p], L);
            qc[p] = (uint8_t)(u == u ? u : 0.0f);  // NaN: level 0
        }
    }
}

void token_quant_levels(uint8_t *q, size_t ldq, float *d, float *z, const float *x, size_t outer, size_t C,
                        size_t inner, float alpha, int bits) {
    const float L = (float)((1 << bits) - 1);
    size_t slice = C * inner;
    PAR_FOR(schedule(static), outer > 1 && outer * slice >= TOKQ_OMP_MIN_WORK,
    for (size_t o = 0; o < outer; o++) {
        token_ranges(d + o * inner, z + o * inner, NULL, x + o * slice, C, inner, alpha, L);
        token_levels_slice(q + o * ldq, x + o * slice, C, inner, d + o * inner, z + o * inner, L);
        memset(q + o * ldq + slice, 0, ldq - slice);
    });
}

// A level minus its token's zero point (NaN: level 0).
static inline int32_t token_centred(float x, float d, float z, float L) {
    float u = token_level(x, d, z, L);
    return (int32_t)(u == u ? u : 0.0f) - (int32_t)z;
}

// token_quant_words' slice: channel c's s8 (level - z) into byte c % 4 of word row c / 4 (the
// first channel of a word sets it, so pad bytes past C stay 0), its sum into T.
FASTMATH_CLONES static void token_words_slice(uint32_t *w, int32_t *T, const float *x, size_t C, size_t inner,
                                              const float *d, const float *z, float L) {
    for (size_t p = 0; p < inner; p++) T[p] = 0;
    for (size_t c = 0; c < C; c++) {
        const float *xc = x + c * inner;
        uint32_t *wc = w + c / 4 * inner, sh = 8 * (uint32_t)(c % 4);
        if (sh == 0)
            for (size_t p = 0; p < inner; p++) {
                int32_t v = token_centred(xc[p], d[p], z[p], L);
                T[p] += v;
                wc[p] = (uint32_t)v & 0xffu;
            }
        else
            for (size_t p = 0; p < inner; p++) {
                int32_t v = token_centred(xc[p], d[p], z[p], L);
                T[p] += v;
                wc[p] |= ((uint32_t)v & 0xffu) << sh;
            }
    }
}

void token_quant_words(uint32_t *w, int32_t *T, float *d, float *z, const float *x, size_t outer, size_t C,
                       size_t inner, float alpha, int bits) {
    const float L = (float)((1 << bits) - 1);
    size_t slice = C * inner, ldw = (C + 3) / 4 * inner;
    PAR_FOR(schedule(static), outer > 1 && outer * slice >= TOKQ_OMP_MIN_WORK,
    for (size_t o = 0; o < outer; o++) {
        token_ranges(d + o * inner, z + o * inner, NULL, x + o * slice, C, inner, alpha, L);
        token_words_slice(w + o * ldw, T + o * inner, x + o * slice, C, inner, d + o * inner, z + o * inner, L);
    });
}

size_t token_quant_backward_scratch(size_t outer, size_t inner) {
    return outer * inner * (3 * sizeof(float) + sizeof(double));
}

double token_quant_backward(float *dx, const float *dy, const float *x, size_t outer, size_t C, size_t inner,
                            float alpha, int bits, void *scratch) {
    const float L = (float)((1 << bits) - 1);
    void *own = NULL;
    size_t nt = outer * inner, slice = C * inner;
    if (!scratch && !(scratch = own = malloc(token_quant_backward_scratch(outer, inner)))) return NAN;
    double *g = scratch;  // first: doubles stay aligned
    float *d = (float *)(g + nt), *z = d + nt, *s = z + nt;
    PAR_FOR(schedule(static), outer > 1 && outer * slice >= TOKQ_OMP_MIN_WORK,
    for (size_t o = 0; o < outer; o++) {
        size_t t = o * inner;
        token_ranges(d + t, z + t, s + t, x + o * slice, C, inner, alpha, L);
        token_backward_slice(dx ? dx + o * slice : NULL, g + t, dy + o * slice, x + o * slice, C, inner, d + t, z + t,
                             L);
    });
    double sum = 0.0;  // in token order: the same for any thread count
    for (size_t t = 0; t < nt; t++) sum += (double)s[t] * g[t];
    free(own);
    return sum;
}

// Σ |x - q(x)|^p over one slice with the token ranges d, z.
static double token_err_slice(const float *x, size_t C, size_t inner, const float *d, const float *z, float L,
                              float p) {
    double sum = 0.0;
    for (size_t c = 0; c < C; c++) {
        const float *xc = x + c * inner;
        for (size_t q = 0; q < inner; q++) {
            float u = token_level(xc[q], d[q], z[q], L);
            sum += (double)powf(fabsf(xc[q] - (u - z[q]) * d[q]), p);
        }
    }
    return sum;
}

float token_quant_fit(const float *x, size_t outer, size_t C, size_t inner, int bits, QuantInit how,
                      const QKindParams *kp) {
    if (how != QUANT_INIT_MSE || !outer || !C || !inner) return 1.0f;
    int steps = kp && kp->mse_steps > 0 ? kp->mse_steps : QUANT_MSE_STEPS;
    if (steps > QUANT_MSE_MAX_STEPS) steps = QUANT_MSE_MAX_STEPS;
    double shrink = kp && kp->mse_shrink > 0 ? kp->mse_shrink : QUANT_MSE_SHRINK;
    float p = kp && kp->mse_p > 0 ? (float)kp->mse_p : QUANT_MSE_P;
    const float L = (float)((1 << bits) - 1);
    size_t nt = outer * inner, slice = C * inner;
    float *d = malloc(2 * nt * sizeof(float));
    double *part = malloc(outer * sizeof(double));
    if (!d || !part) {
        free(d);
        free(part);
        return -1.0f;
    }
    float *z = d + nt, best = 1.0f;
    double best_err = INFINITY;
    for (int i = 0; i < steps; i++) {
        float alpha = (float)(1.0 - (double)i * shrink);
        if (!(alpha > 0.0f)) break;
        PAR_FOR(schedule(static), outer > 1 && outer * slice >= TOKQ_OMP_MIN_WORK / 8,
        for (size_t o = 0; o < outer; o++) {
            token_ranges(d + o * inner, z + o * inner, NULL, x + o * slice, C, inner, alpha, L);
            part[o] = token_err_slice(x + o * slice, C, inner, d + o * inner, z + o * inner, L, p);
        });
        double err = 0.0;
        for (size_t o = 0; o < outer; o++) err += part[o];
        if (err < best_err) best_err = err, best = alpha;  // the first of equal scores: the widest range
    }
    free(d);
    free(part);
    return best;
}

/* ---- the op ---------------------------------------------------------------------- */

// in[0] = x, in[1] = the table's delta (α); saved = the quantizer; iarg = entry, planes.
static void token_quant_backward_op(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *alpha = nd->in[1];
    const Quantizer *q = nd->saved;
    int entry = nd->iarg[0];
    size_t outer = 0, C = 0, inner = 0;
    float *dx = x->requires_grad ? tensor_grad(c, x) : NULL;
    float *da = alpha->requires_grad ? tensor_grad(c, alpha) : NULL;
    if ((x->requires_grad && !dx) || (alpha->requires_grad && !da)) return;
    token_quant_view(x, nd->iarg[1], &outer, &C, &inner);
    void *scr = ctx_alloc(c, token_quant_backward_scratch(outer, inner));
    if (!scr) return;
    double g = token_quant_backward(dx, nd->out->grad, x->data, outer, C, inner, q->delta.data[entry], q->bits, scr);
    if (da) da[entry] += (float)g;
}

static Tensor *token_quant_op(Ctx *c, Tensor *x, Quantizer *q, int entry, int planes) {
    if (!x || !q) return NULL;
    size_t outer = 0, C = 0, inner = 0;
    if (q->bits < QUANT_MIN_BITS || q->bits > QUANT_MAX_BITS || q->channel_wise) {
        err_set(&c->err, ERR_VALUE, "fake_quant_token: a %s%d-bit quantizer (expected a layer-wise one of %d..%d bits)",
                q->channel_wise ? "channel-wise " : "", q->bits, QUANT_MIN_BITS, QUANT_MAX_BITS);
        return NULL;
    }
    if (entry < 0 || entry >= q->n) {
        err_set(&c->err, ERR_VALUE, "fake_quant_token: entry %d of a %d-entry table", entry, q->n);
        return NULL;
    }
    if (token_quant_view(x, planes, &outer, &C, &inner)) {
        char s[64];
        err_set(&c->err, ERR_SHAPE, "fake_quant_token: a tensor of shape %s (expected %s)",
                tensor_shape_str(x, s, sizeof s), planes ? "(N, C, ...)" : "(..., C)");
        return NULL;
    }
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    float *scr = out ? ctx_alloc(c, 2 * outer * inner * sizeof(float)) : NULL;
    if (!scr) return NULL;
    token_quant_fake(out->data, x->data, outer, C, inner, q->delta.data[entry], q->bits, scr);
    Tensor *in[2] = {x, &q->delta};
    TapeNode *nd = tape_record(c, OP_FAKE_QUANT, token_quant_backward_op, out, in, 2);
    if (nd) {
        nd->saved = q;  // model-owned: outlives the step
        nd->iarg[0] = entry;
        nd->iarg[1] = planes;
    }
    return out;
}

Tensor *t_fake_quant_token(Ctx *c, Tensor *x, Quantizer *aq, int entry, int planes) {
    PROF_OP(c, OP_FAKE_QUANT, token_quant_op(c, x, aq, entry, planes), 0.0);
}
