/* activation.c: SiLU, exact GELU, ReLU and CompVis GEGLU, element by element.
   Each backward recomputes what it needs from the input x (kept by the tape as in[0]),
   so nothing is saved. */
#include <math.h>

#include "autograd/ops.h"
#include "autograd/profile.h"

// Below this many elements the loops run on one thread.
#define ACT_PAR_MIN 32768

#define ACT_SQRT1_2 0.70710678118654752440f       // 1 / sqrt(2)
#define ACT_INV_SQRT_2PI 0.39894228040143267794f  // 1 / sqrt(2 pi)

static float silu_f(float x) { return x / (1.0f + expf(-x)); }

// d/dx x s(x) = s + x s (1 - s), s = sigmoid(x)
static float silu_grad(float x) {
    float s = 1.0f / (1.0f + expf(-x));
    return s * (1.0f + x * (1.0f - s));
}

// As torch's CPU kernel: x * 0.5 * (1 + erf(x / sqrt 2)) in float.
static float gelu_f(float x) { return x * 0.5f * (1.0f + erff(x * ACT_SQRT1_2)); }

// d/dx = Phi(x) + x phi(x), Phi/phi the standard normal cdf/pdf
static float gelu_grad(float x) {
    float cdf = 0.5f * (1.0f + erff(x * ACT_SQRT1_2));
    float pdf = expf(-0.5f * x * x) * ACT_INV_SQRT_2PI;
    return cdf + x * pdf;
}

// nd->op says which activation (OP_SILU / OP_GELU / OP_RELU)
static void unary_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0];
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    const float *g = nd->out->grad, *xd = x->data;
    size_t n = x->n;
    switch (nd->op) {
    case OP_SILU:
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
        for (size_t i = 0; i < n; i++) dx[i] += g[i] * silu_grad(xd[i]);
        break;
    case OP_GELU:
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
        for (size_t i = 0; i < n; i++) dx[i] += g[i] * gelu_grad(xd[i]);
        break;
    default:  // OP_RELU: gradient 0 at x <= 0, as torch (threshold_backward on the output)
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
        for (size_t i = 0; i < n; i++) dx[i] += xd[i] > 0.0f ? g[i] : 0.0f;
        break;
    }
}

static Tensor *unary_op(Ctx *c, int op, Tensor *x) {
    if (!x) return NULL;
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    if (!out) return NULL;
    const float *xd = x->data;
    float *y = out->data;
    size_t n = x->n;
    switch (op) {
    case OP_SILU:
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
        for (size_t i = 0; i < n; i++) y[i] = silu_f(xd[i]);
        break;
    case OP_GELU:
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
        for (size_t i = 0; i < n; i++) y[i] = gelu_f(xd[i]);
        break;
    default:  // OP_RELU; written `x < 0 ? 0 : x` so a NaN passes through, as torch.relu
#pragma omp parallel for schedule(static) if (n >= ACT_PAR_MIN)
        for (size_t i = 0; i < n; i++) y[i] = xd[i] < 0.0f ? 0.0f : xd[i];
        break;
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
#pragma omp parallel for schedule(static) if (x->n >= ACT_PAR_MIN)
    for (size_t r = 0; r < R; r++) {
        const float *a = xd + r * 2 * D, *gate = a + D, *gr = g + r * D;
        float *da = dx + r * 2 * D, *dgate = da + D;
        for (size_t i = 0; i < D; i++) {
            da[i] += gr[i] * gelu_f(gate[i]);
            dgate[i] += gr[i] * a[i] * gelu_grad(gate[i]);
        }
    }
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
#pragma omp parallel for schedule(static) if (x->n >= ACT_PAR_MIN)
    for (size_t r = 0; r < R; r++) {
        const float *a = xd + r * 2 * D, *gate = a + D;
        for (size_t i = 0; i < D; i++) y[r * D + i] = a[i] * gelu_f(gate[i]);
    }
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
