/* activation.c: SiLU, exact GELU, ReLU and CompVis GEGLU, element by element.
   Each backward recomputes what it needs from the input x (kept by the tape as in[0]),
   so nothing is saved. */
#include <math.h>

#include "autograd/ops.h"
#include "autograd/ops/fastmath.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many elements the loops run on one thread; above, in chunks of ACT_CHUNK.
#define ACT_PAR_MIN 32768
#define ACT_CHUNK 4096

static inline float silu_f(float x) { return x * sigmoid_f(x); }

// d/dx x s(x) = s + x s (1 - s), s = sigmoid(x)
static inline float silu_grad(float x) {
    float s = sigmoid_f(x);
    return s * (1.0f + x * (1.0f - s));
}

// x Phi(x): torch's exact (erf) GELU, with fastmath.h's CDF
static inline float gelu_f(float x) { return x * normal_cdf(x); }

// d/dx = Phi(x) + x phi(x), Phi/phi the standard normal cdf/pdf
static inline float gelu_grad(float x) { return normal_cdf(x) + x * normal_pdf(x); }

// The element loops, one function per activation and direction so each vectorizes in its
// AVX-512 / AVX2 clone (fastmath.h).
FASTMATH_CLONES static void silu_span(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = silu_f(x[i]);
}
FASTMATH_CLONES static void gelu_span(float *y, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = gelu_f(x[i]);
}
FASTMATH_CLONES static void silu_grad_span(float *dx, const float *g, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += g[i] * silu_grad(x[i]);
}
FASTMATH_CLONES static void gelu_grad_span(float *dx, const float *g, const float *x, size_t n) {
    for (size_t i = 0; i < n; i++) dx[i] += g[i] * gelu_grad(x[i]);
}
FASTMATH_CLONES static void geglu_span(float *y, const float *a, const float *gate, size_t n) {
    for (size_t i = 0; i < n; i++) y[i] = a[i] * gelu_f(gate[i]);
}
FASTMATH_CLONES static void geglu_grad_span(float *da, float *dgate, const float *g, const float *a, const float *gate,
                                            size_t n) {
    for (size_t i = 0; i < n; i++) {
        da[i] += g[i] * gelu_f(gate[i]);
        dgate[i] += g[i] * a[i] * gelu_grad(gate[i]);
    }
}

// nd->op says which activation (OP_SILU / OP_GELU / OP_RELU)
static void unary_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0];
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    const float *g = nd->out->grad, *xd = x->data;
    size_t n = x->n;
    if (nd->op == OP_RELU) {  // gradient 0 at x <= 0, as torch (threshold_backward on the output)
        PAR_FOR(schedule(static), n >= ACT_PAR_MIN,
        for (size_t i = 0; i < n; i++) dx[i] += xd[i] > 0.0f ? g[i] : 0.0f;);
        return;
    }
    const int silu = nd->op == OP_SILU;
    PAR_FOR(schedule(static), n >= ACT_PAR_MIN,
    for (size_t c0 = 0; c0 < n; c0 += ACT_CHUNK) {
        size_t len = n - c0 < ACT_CHUNK ? n - c0 : ACT_CHUNK;
        if (silu) silu_grad_span(dx + c0, g + c0, xd + c0, len);
        else gelu_grad_span(dx + c0, g + c0, xd + c0, len);
    });
}

static Tensor *unary_op(Ctx *c, int op, Tensor *x) {
    if (!x) return NULL;
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    if (!out) return NULL;
    const float *xd = x->data;
    float *y = out->data;
    size_t n = x->n;
    if (op == OP_RELU) {  // written `x < 0 ? 0 : x` so a NaN passes through, as torch.relu
        PAR_FOR(schedule(static), n >= ACT_PAR_MIN,
        for (size_t i = 0; i < n; i++) y[i] = xd[i] < 0.0f ? 0.0f : xd[i];);
    } else {
        PAR_FOR(schedule(static), n >= ACT_PAR_MIN,
        for (size_t c0 = 0; c0 < n; c0 += ACT_CHUNK) {
            size_t len = n - c0 < ACT_CHUNK ? n - c0 : ACT_CHUNK;
            if (op == OP_SILU) silu_span(y + c0, xd + c0, len);
            else gelu_span(y + c0, xd + c0, len);
        });
    }
    tape_record(c, op, unary_backward, out, &x, 1);
    return out;
}

static Tensor *silu_op(Ctx *c, Tensor *x) { return unary_op(c, OP_SILU, x); }
static Tensor *gelu_op(Ctx *c, Tensor *x) { return unary_op(c, OP_GELU, x); }
static Tensor *relu_op(Ctx *c, Tensor *x) { return unary_op(c, OP_RELU, x); }

// x (R, 2D) as rows: a = x[r, :D], gate = x[r, D:]; out (R, D) = a * gelu(gate).
static void geglu_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0];
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    size_t D = (size_t)tensor_dim(nd->out, -1), R = D ? nd->out->n / D : 0;
    const float *g = nd->out->grad, *xd = x->data;
    PAR_FOR(schedule(static), x->n >= ACT_PAR_MIN,
    for (size_t r = 0; r < R; r++) {
        const float *a = xd + r * 2 * D;
        float *da = dx + r * 2 * D;
        geglu_grad_span(da, da + D, g + r * D, a, a + D, D);
    });
}

static Tensor *geglu_op(Ctx *c, Tensor *x) {
    if (!x) return NULL;
    int last = x->ndim ? x->shape[x->ndim - 1] : 1;
    if (x->ndim == 0 || last % 2) {
        char s[64];
        err_set(&c->err, ERR_SHAPE, "geglu: input %s: last dim must be even (a and gate halves)",
                tensor_shape_str(x, s, sizeof s));
        return NULL;
    }
    int shape[TENSOR_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[x->ndim - 1] = last / 2;
    Tensor *out = tensor_new(c, x->ndim, shape);
    if (!out) return NULL;
    size_t D = (size_t)(last / 2), R = D ? out->n / D : 0;
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= ACT_PAR_MIN,
    for (size_t r = 0; r < R; r++) {
        const float *a = xd + r * 2 * D;
        geglu_span(y + r * D, a, a + D, D);
    });
    tape_record(c, OP_GEGLU, geglu_backward, out, &x, 1);
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_silu(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_SILU, silu_op(c, x), 0.0);
}

Tensor *t_gelu(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_GELU, gelu_op(c, x), 0.0);
}

Tensor *t_relu(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_RELU, relu_op(c, x), 0.0);
}

Tensor *t_geglu(Ctx *c, Tensor *x) {
    PROF_OP(c, OP_GEGLU, geglu_op(c, x), 0.0);
}
