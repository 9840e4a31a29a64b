/* quantizer.c: the kind-independent half of quantizer.h - argument checks, slicing
   (channels, or fixed chunks of a layer-wise x), threading and ordered reductions - around
   the kinds' kernels, reached only through the kind table (qkind.h). The tape op is in
   fake_quant.c, the kernels in qkind_<name>.c. */
#include "qalora/quantizer.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "qalora/qkind.h"
#include "util/par.h"

// Elements per chunk of a layer-wise call; a reduction sums chunks in double and adds them
// in order, 64 chunks per parallel region (so the partials fit on the stack).
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

void quantizer_setup_param(Quantizer *q, float *param, float *dparam) {
    int np = quantizer_ops(q)->n_param;
    tensor_init_param(&q->param, param, dparam, 1, (int[]){q->n * np});
}

void quantizer_setup_side(Quantizer *q, int n_side, int32_t *idx, float *val) {
    q->n_side = n_side;
    q->side_idx = n_side ? idx : NULL;
    q->side_val = n_side ? val : NULL;
}

int quantizer_side_count(const Quantizer *q, size_t slice_len) { return quantizer_ops(q)->side_count(q, slice_len); }

int quantizer_qmax(const Quantizer *q) { return (1 << q->bits) - 1; }

// Slice length of a call: channel-wise slices are the rows of x.
static size_t q_slice_len(const Quantizer *q, size_t n) {
    return q->channel_wise ? (q->n > 0 ? n / (size_t)q->n : 0) : n;
}

int quantizer_fit(Quantizer *q, const float *x, size_t n, QuantInit how, int entry, Err *e) {
    if (!qkind_valid((int)q->kind))
        return err_set(e, ERR_INTERNAL, "quantizer: kind %d is not in the kind table", (int)q->kind);
    if (q->bits < QUANT_MIN_BITS || q->bits > QUANT_MAX_BITS)
        return err_set(e, ERR_VALUE, "quantizer: %d bits (supported: %d..%d)", q->bits, QUANT_MIN_BITS,
                       QUANT_MAX_BITS);
    if (q->channel_wise && (q->n <= 0 || n % (size_t)q->n != 0))
        return err_set(e, ERR_VALUE, "quantizer: %zu values do not split into %d channels", n, q->n);
    if (!q->channel_wise && quantizer_ops(q)->weight_only)
        return err_set(e, ERR_VALUE, "quantizer: the %s kind quantizes weights (channel-wise) only",
                       quant_kind_name(q->kind));
    if (!q->channel_wise && entry >= q->n)
        return err_set(e, ERR_VALUE, "quantizer: entry %d of a %d-entry table", entry, q->n);
    if (n == 0) return err_set(e, ERR_VALUE, "quantizer: no data to fit");
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i])) return err_set(e, ERR_VALUE, "quantizer: non-finite value %g at index %zu", x[i], i);
    const QKindOps *ops = quantizer_ops(q);
    if (q->channel_wise) {
        size_t len = q_slice_len(q, n);
        int bad = 0;
        PAR_FOR(schedule(static) reduction(| : bad), 1,
        for (int ch = 0; ch < q->n; ch++) bad |= ops->fit(q, ch, x + (size_t)ch * len, len, how, 0) != 0;);
        return bad ? err_set(e, ERR_NOMEM, "quantizer: out of memory fitting %s ranges", ops->name) : 0;
    }
    // one fit into the entry (entry 0 for a fresh table), copied into the others
    int k0 = entry >= 0 ? entry : 0;
    if (ops->fit(q, k0, x, n, how, 1))
        return err_set(e, ERR_NOMEM, "quantizer: out of memory fitting %s ranges", ops->name);
    if (entry >= 0) return 0;
    int np = ops->n_param;
    for (int k = 0; k < q->n; k++) {
        if (k == k0) continue;
        q->delta.data[k] = q->delta.data[k0];
        q->zero.data[k] = q->zero.data[k0];
        for (int j = 0; j < np; j++) q->param.data[(size_t)k * np + j] = q->param.data[(size_t)k0 * np + j];
    }
    return 0;
}

// One slice of a call: channel ch of a channel-wise x, or chunk k of a layer-wise one (with the
// call's entry). Slices are independent, so the same slices give the same bits on any threads.
typedef struct {
    int entry;
    size_t lo, len;
} QSlice;

static size_t q_slice_count(const Quantizer *q, size_t n) {
    return q->channel_wise ? (size_t)(q->n > 0 ? q->n : 0) : (n + QCHUNK - 1) / QCHUNK;
}

static QSlice q_slice_at(const Quantizer *q, size_t n, int entry, size_t k) {
    if (q->channel_wise) {
        size_t len = q_slice_len(q, n);
        return (QSlice){(int)k, k * len, len};
    }
    size_t lo = k * QCHUNK, hi = lo + QCHUNK < n ? lo + QCHUNK : n;
    return (QSlice){entry, lo, hi - lo};
}

// An element-wise call: fake (y = q(x)), encode (out = levels of x) or decode (y = values of in).
typedef enum { Q_FAKE, Q_ENCODE, Q_DECODE } QMapOp;
typedef struct {
    QMapOp op;
    float *y;
    uint8_t *out;
    const float *x;
    const uint8_t *in;
} QMapCall;

// Runs the call's kernel on every slice, slices in parallel (each writes only its own).
static void q_map(const Quantizer *q, const QMapCall *c, size_t n, int entry) {
    const QKindOps *ops = quantizer_ops(q);
    size_t ns = q_slice_count(q, n);
    PAR_FOR(schedule(static), n >= QUANT_OMP_MIN_WORK,
    for (size_t k = 0; k < ns; k++) {
        QSlice s = q_slice_at(q, n, entry, k);
        if (c->op == Q_FAKE)
            ops->fake(q, s.entry, c->y + s.lo, c->x + s.lo, s.len);
        else if (c->op == Q_ENCODE)
            ops->encode(q, s.entry, c->out + s.lo, c->x + s.lo, s.len);
        else
            ops->decode(q, s.entry, c->y + s.lo, c->in + s.lo, s.len);
    });
}

void quantizer_fake(const Quantizer *q, float *y, const float *x, size_t n, int entry) {
    q_map(q, &(QMapCall){Q_FAKE, y, NULL, x, NULL}, n, entry);
}

void quantizer_fake_backward(const Quantizer *q, float *dx, float *ddelta, float *dzero, const float *dy,
                             const float *x, size_t n, int entry) {
    quantizer_fake_backward_all(q, dx, ddelta, dzero, NULL, dy, x, n, entry);
}

// Adds one entry's gradient sums g (double) into the float gradients.
static void add_grads(float *ddelta, float *dzero, float *dparam, int np, int k, const double *g) {
    if (ddelta) ddelta[k] += (float)g[0];
    if (dzero) dzero[k] += (float)g[1];
    for (int j = 0; dparam && j < np; j++) dparam[(size_t)k * np + j] += (float)g[2 + j];
}

// What a backward call differentiates: q(x) (dx may be NULL) or, with decode set, decode(in).
typedef struct {
    int decode;
    float *dx;
    const float *dy, *x;
    const uint8_t *in;
} QGradCall;

// The gradient sums of one slice, from the kind's backward or decode_backward kernel.
static void q_slice_grad(const QKindOps *ops, const Quantizer *q, const QGradCall *c, QSlice s, double *g) {
    if (c->decode)
        ops->decode_backward(q, s.entry, g, c->dy + s.lo, c->in + s.lo, s.len);
    else
        ops->backward(q, s.entry, c->dx ? c->dx + s.lo : NULL, g, c->dy + s.lo, c->x + s.lo, s.len);
}

// Channel-wise: each channel's sums go into its own entry. Layer-wise: the chunks' sums are
// added in chunk order (QCHUNK_GROUP per parallel region), so the result does not depend on
// the thread count, then go into the call's entry.
static void q_grads(const Quantizer *q, const QGradCall *c, float *ddelta, float *dzero, float *dparam, size_t n,
                    int entry) {
    const QKindOps *ops = quantizer_ops(q);
    int np = ops->n_param;
    if (q->channel_wise) {
        PAR_FOR(schedule(static), n >= QUANT_OMP_MIN_WORK,
        for (int ch = 0; ch < q->n; ch++) {
            double g[QKIND_GRAD_SLOTS];
            q_slice_grad(ops, q, c, q_slice_at(q, n, entry, (size_t)ch), g);
            add_grads(ddelta, dzero, dparam, np, ch, g);
        });
        return;
    }
    size_t nchunks = q_slice_count(q, n);
    double total[QKIND_GRAD_SLOTS] = {0};
    for (size_t g0 = 0; g0 < nchunks; g0 += QCHUNK_GROUP) {
        size_t gn = nchunks - g0 < QCHUNK_GROUP ? nchunks - g0 : QCHUNK_GROUP;
        double part[QCHUNK_GROUP][QKIND_GRAD_SLOTS];
        PAR_FOR(schedule(static), gn > 1 && n >= QUANT_OMP_MIN_WORK,
        for (size_t k = 0; k < gn; k++) q_slice_grad(ops, q, c, q_slice_at(q, n, entry, g0 + k), part[k]););
        for (size_t k = 0; k < gn; k++)
            for (int j = 0; j < QKIND_GRAD_SLOTS; j++) total[j] += part[k][j];
    }
    add_grads(ddelta, dzero, dparam, np, entry, total);
}

void quantizer_fake_backward_all(const Quantizer *q, float *dx, float *ddelta, float *dzero, float *dparam,
                                 const float *dy, const float *x, size_t n, int entry) {
    q_grads(q, &(QGradCall){0, dx, dy, x, NULL}, ddelta, dzero, dparam, n, entry);
}

void quantizer_encode(const Quantizer *q, uint8_t *out, const float *x, size_t n, int entry) {
    q_map(q, &(QMapCall){Q_ENCODE, NULL, out, x, NULL}, n, entry);
}

void quantizer_decode(const Quantizer *q, float *y, const uint8_t *in, size_t n, int entry) {
    q_map(q, &(QMapCall){Q_DECODE, y, NULL, NULL, in}, n, entry);
}

void quantizer_decode_backward(const Quantizer *q, float *ddelta, float *dzero, float *dparam, const float *dy,
                               const uint8_t *in, size_t n, int entry) {
    q_grads(q, &(QGradCall){1, NULL, dy, NULL, in}, ddelta, dzero, dparam, n, entry);
}

int quantizer_side_values(const Quantizer *q, float *val, const float *x, size_t n) {
    if (!q->n_side) return 0;
    size_t len = q_slice_len(q, n);
    float *y = malloc((len ? len : 1) * sizeof(float));
    if (!y) return ERR_NOMEM;
    const QKindOps *ops = quantizer_ops(q);
    for (int ch = 0; ch < q->n; ch++) {
        ops->fake(q, ch, y, x + (size_t)ch * len, len);
        for (int s = 0; s < q->n_side; s++) {
            size_t j = (size_t)ch * q->n_side + s;
            val[j] = y[q->side_idx[j]];
        }
    }
    free(y);
    return 0;
}

void quantizer_round_zero(Quantizer *q) {
    for (int k = 0; k < q->n; k++) q->zero.data[k] = rintf(q->zero.data[k]);
}
