/* softmax.c: softmax over the last dimension, rows independent.
   The forward subtracts the row max before exp (so large logits do not overflow) and sums
   the row in double. The backward needs only the output y, which the tape already holds
   (node->out): dx = y * (g - sum(g * y)). */
#include <math.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many elements the rows run on one thread.
#define SOFTMAX_PAR_MIN 16384

static void softmax_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *out = nd->out;
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    size_t C = (size_t)tensor_dim(out, -1), R = C ? out->n / C : 0;
    const float *y = out->data, *g = out->grad;
    PAR_FOR(schedule(static), out->n >= SOFTMAX_PAR_MIN,
    for (size_t r = 0; r < R; r++) {
        const float *yr = y + r * C, *gr = g + r * C;
        float *dr = dx + r * C;
        double dot = 0;
        for (size_t i = 0; i < C; i++) dot += (double)gr[i] * (double)yr[i];
        float fdot = (float)dot;
        for (size_t i = 0; i < C; i++) dr[i] += yr[i] * (gr[i] - fdot);
    });
}

static Tensor *softmax_op(Ctx *c, Tensor *x) {
    if (!x) return NULL;
    if (x->ndim == 0) {
        err_set(&c->err, ERR_SHAPE, "softmax: input has no dimensions");
        return NULL;
    }
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    if (!out) return NULL;
    size_t C = (size_t)tensor_dim(x, -1), R = C ? x->n / C : 0;
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= SOFTMAX_PAR_MIN,
    for (size_t r = 0; r < R; r++) {
        const float *xr = xd + r * C;
        float *yr = y + r * C;
        float mx = xr[0];
        for (size_t i = 1; i < C; i++) mx = xr[i] > mx ? xr[i] : mx;
        double sum = 0;
        for (size_t i = 0; i < C; i++) {
            yr[i] = expf(xr[i] - mx);
            sum += yr[i];
        }
        double inv = 1.0 / sum;
        for (size_t i = 0; i < C; i++) yr[i] = (float)(yr[i] * inv);
    });
    tape_record(c, OP_SOFTMAX, softmax_backward, out, &x, 1);
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_softmax(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_SOFTMAX, softmax_op(c, x), 0.0);
}
