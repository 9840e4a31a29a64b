/* reduce.c: sum, mean and the MSE loss (whole-tensor reductions to one value).
   Sums run over fixed chunks in double and add the chunks in order, so the result does
   not depend on how OpenMP splits the loop. */
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "util/par.h"

#define REDUCE_CHUNK 4096

// sum of x[i] (or of (a[i]-b[i])^2 when b != NULL) in double, deterministic across thread counts
static double reduce_sum(const float *a, const float *b, size_t n) {
    size_t nchunks = (n + REDUCE_CHUNK - 1) / REDUCE_CHUNK;
    double stack_partial[64];
    double *partial = nchunks <= 64 ? stack_partial : NULL;
    double total = 0;
    if (!partial) {
        // large tensors: sum chunk groups of 64 chunks at a time, still in a fixed order
        for (size_t g = 0; g < nchunks; g += 64) {
            size_t lo = g * REDUCE_CHUNK, hi = (g + 64) * REDUCE_CHUNK;
            if (hi > n) hi = n;
            total += reduce_sum(a + lo, b ? b + lo : NULL, hi - lo);
        }
        return total;
    }
    PAR_FOR(schedule(static), 1,
    for (size_t k = 0; k < nchunks; k++) {
        size_t lo = k * REDUCE_CHUNK, hi = lo + REDUCE_CHUNK < n ? lo + REDUCE_CHUNK : n;
        double s = 0;
        if (b) {
            for (size_t i = lo; i < hi; i++) {
                double d = (double)a[i] - (double)b[i];
                s += d * d;
            }
        } else {
            for (size_t i = lo; i < hi; i++) s += a[i];
        }
        partial[k] = s;
    });
    for (size_t k = 0; k < nchunks; k++) total += partial[k];
    return total;
}

// farg[0]: the factor d out / d x[i] (1 for sum, 1/n for mean)
static void sum_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0];
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    float g = nd->out->grad[0] * nd->farg[0];
    PAR_FOR(schedule(static), 1,
    for (size_t i = 0; i < x->n; i++) dx[i] += g;);
}

static Tensor *reduce_op(Ctx *c, Tensor *x, int op, float factor) {
    if (!x) return NULL;
    Tensor *out = tensor_new1(c, 1);
    if (!out) return NULL;
    out->data[0] = (float)(reduce_sum(x->data, NULL, x->n) * factor);
    TapeNode *nd = tape_record(c, op, sum_backward, out, &x, 1);
    if (nd) nd->farg[0] = factor;
    return out;
}

static Tensor *sum_op(Ctx *c, Tensor *x) { return reduce_op(c, x, OP_SUM, 1.0f); }

static Tensor *mean_op(Ctx *c, Tensor *x) {
    return x ? reduce_op(c, x, OP_MEAN, x->n ? 1.0f / (float)x->n : 0.0f) : NULL;
}

// d/da sum (a-b)^2 = 2 (a - b) * factor; d/db = -2 (a - b) * factor
static void mse_backward(Ctx *c, TapeNode *nd) {
    Tensor *a = nd->in[0], *b = nd->in[1];
    float g = 2.0f * nd->out->grad[0] * nd->farg[0];
    float *da = a->requires_grad ? tensor_grad(c, a) : NULL;
    float *db = b->requires_grad ? tensor_grad(c, b) : NULL;
    if ((a->requires_grad && !da) || (b->requires_grad && !db)) return;
    PAR_FOR(schedule(static), 1,
    for (size_t i = 0; i < a->n; i++) {
        float d = g * (a->data[i] - b->data[i]);
        if (da) da[i] += d;
        if (db) db[i] -= d;
    });
}

static Tensor *mse_loss_op(Ctx *c, Tensor *a, Tensor *b, int mean) {
    if (!a || !b) return NULL;
    if (!tensor_same_shape(a, b)) {
        char sa[64], sb[64];
        err_set(&c->err, ERR_SHAPE, "mse_loss: shapes %s and %s differ", tensor_shape_str(a, sa, sizeof sa),
                tensor_shape_str(b, sb, sizeof sb));
        return NULL;
    }
    Tensor *out = tensor_new1(c, 1);
    if (!out) return NULL;
    float factor = mean ? (a->n ? 1.0f / (float)a->n : 0.0f) : 1.0f;
    out->data[0] = (float)(reduce_sum(a->data, b->data, a->n) * factor);
    Tensor *in[2] = {a, b};
    TapeNode *nd = tape_record(c, OP_MSE_LOSS, mse_backward, out, in, 2);
    if (nd) nd->farg[0] = factor;
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_sum(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_SUM, sum_op(c, x), 0.0);
}

Tensor *t_mean(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_MEAN, mean_op(c, x), 0.0);
}

Tensor *t_mse_loss(Ctx *c, Tensor *a, Tensor *b, int mean) {
    PROF_OP(c, OP_MSE_LOSS, mse_loss_op(c, a, b, mean), 0.0);
}
