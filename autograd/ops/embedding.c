/* embedding.c: table lookup (class embeddings) and the sinusoidal timestep embedding. */
#include <math.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many elements the loops run on one thread.
#define EMB_PAR_MIN 32768
// Embedding backward: columns of dw per task; each task walks all rows in order.
#define EMB_COL_CHUNK 64

// saved: int idx[n], a copy (the caller's array need not outlive the forward)
static void embedding_backward(Ctx *c, TapeNode *nd) {
    Tensor *w = nd->in[0], *out = nd->out;
    float *dw = tensor_grad(c, w);
    if (!dw) return;
    const int *idx = nd->saved;
    size_t n = (size_t)out->shape[0], D = (size_t)out->shape[1];
    size_t nchunk = (D + EMB_COL_CHUNK - 1) / EMB_COL_CHUNK;
    const float *g = out->grad;
    // Parallel over columns, not rows: a repeated index would make two threads add into one
    // row; per column every row is added in order, so the sum is the same for any thread count.
    PAR_FOR(schedule(static), out->n >= EMB_PAR_MIN,
    for (size_t k = 0; k < nchunk; k++) {
        size_t c0 = k * EMB_COL_CHUNK, c1 = c0 + EMB_COL_CHUNK < D ? c0 + EMB_COL_CHUNK : D;
        for (size_t i = 0; i < n; i++) {
            float *dr = dw + (size_t)idx[i] * D;
            const float *gr = g + i * D;
            for (size_t j = c0; j < c1; j++) dr[j] += gr[j];
        }
    });
}

static Tensor *embedding_op(Ctx *c, Tensor *w, const int *idx, int n) {
    if (!w) return NULL;
    char s[64];
    if (w->ndim != 2 || n < 0) {
        err_set(&c->err, ERR_SHAPE, "embedding: table %s with %d indices: expected a (V, D) table",
                tensor_shape_str(w, s, sizeof s), n);
        return NULL;
    }
    int V = w->shape[0];
    for (int i = 0; i < n; i++) {
        if (idx[i] < 0 || idx[i] >= V) {
            err_set(&c->err, ERR_VALUE, "embedding: index %d at position %d is outside [0, %d)", idx[i], i, V);
            return NULL;
        }
    }
    Tensor *out = tensor_new2(c, n, w->shape[1]);
    if (!out) return NULL;
    size_t D = (size_t)w->shape[1];
    const float *wd = w->data;
    float *y = out->data;
    PAR_FOR(schedule(static), out->n >= EMB_PAR_MIN,
    for (int i = 0; i < n; i++) memcpy(y + (size_t)i * D, wd + (size_t)idx[i] * D, D * sizeof(float)););
    if (tape_needs_grad(c, &w, 1)) {
        int *saved = ctx_alloc(c, (n ? (size_t)n : 1) * sizeof(int));
        if (!saved) return NULL;
        memcpy(saved, idx, (size_t)n * sizeof(int));
        TapeNode *nd = tape_record(c, OP_EMBEDDING, embedding_backward, out, &w, 1);
        if (nd) nd->saved = saved;
    }
    return out;
}

/* CompVis ldm/modules/diffusionmodules/util.py timestep_embedding (repeat_only=False):
       half = dim // 2
       freqs = exp(-math.log(max_period) * arange(0, half, dtype=float32) / half)
       args = timesteps[:, None].float() * freqs[None]
       emb = cat([cos(args), sin(args)], dim=-1)   (+ a zero column when dim is odd)
   Torch evaluates every step in float32 (the Python scalars -log(max_period) and half are
   cast to float32 before the multiply and divide), so we do the same, in the same order:
   args reach ~1000 for t = 999, where one ulp of a float args already moves cos/sin by
   ~6e-5, so computing freqs in double would not match torch. */
static Tensor *timestep_embedding_op(Ctx *c, const float *t, int n, int dim, float max_period) {
    if (n < 0 || dim <= 0 || !(max_period > 0.0f)) {
        err_set(&c->err, ERR_VALUE, "timestep_embedding: n %d, dim %d, max_period %g: need n >= 0, dim > 0, "
                "max_period > 0", n, dim, (double)max_period);
        return NULL;
    }
    Tensor *out = tensor_new2(c, n, dim);
    if (!out) return NULL;
    int half = dim / 2;
    float *freqs = ctx_alloc(c, (half ? (size_t)half : 1) * sizeof(float));
    if (!freqs) return NULL;
    float neg_log = (float)(-log((double)max_period));  // math.log gives a double; torch casts it
    for (int i = 0; i < half; i++) {
        float a = (float)i * neg_log;
        freqs[i] = expf(a / (float)half);
    }
    for (int r = 0; r < n; r++) {
        float *y = out->data + (size_t)r * (size_t)dim;
        for (int i = 0; i < half; i++) {
            float arg = t[r] * freqs[i];
            y[i] = cosf(arg);
            y[half + i] = sinf(arg);
        }
        if (dim % 2) y[dim - 1] = 0.0f;
    }
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_embedding(Ctx *c, Tensor *w, const int *idx, int n) {
    PROF_OP(c, OP_EMBEDDING, embedding_op(c, w, idx, n), 0.0);
}

Tensor *t_timestep_embedding(Ctx *c, const float *t, int n, int dim, float max_period) {
    PROF_OP(c, OP_TIMESTEP_EMBEDDING, timestep_embedding_op(c, t, n, dim, max_period), 0.0);
}
