/* shape.c: reshape (a view, no copy), permute, concat and slice (copies).

   Reshape records no tape node: the output shares x's data and, when x needs a gradient,
   x's gradient buffer too, so whatever flows into the output's gradient is already in x's.
   The other ops copy; their backward adds the gradient back through the same index map,
   which is one-to-one, so every loop writes distinct elements. */
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many elements the loops run on one thread.
#define SHAPE_PAR_MIN 32768

static Tensor *reshape_op(Ctx *c, Tensor *x, int ndim, const int *shape) {
    if (!x) return NULL;
    char s[64];
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS) {
        err_set(&c->err, ERR_SHAPE, "reshape: %d dims requested (max %d)", ndim, TENSOR_MAX_DIMS);
        return NULL;
    }
    int sh[TENSOR_MAX_DIMS], infer = -1;
    size_t known = 1;
    for (int i = 0; i < ndim; i++) {
        sh[i] = shape[i];
        if (shape[i] == -1 && infer < 0) {
            infer = i;
        } else if (shape[i] < 0) {
            err_set(&c->err, ERR_SHAPE, "reshape of %s: bad dim %d = %d (only one -1 allowed)",
                    tensor_shape_str(x, s, sizeof s), i, shape[i]);
            return NULL;
        } else {
            known *= (size_t)shape[i];
        }
    }
    if (infer >= 0) {
        if (known == 0 || x->n % known) {
            err_set(&c->err, ERR_SHAPE, "reshape of %s: %zu elements do not fill dim %d", tensor_shape_str(x, s, sizeof s),
                    x->n, infer);
            return NULL;
        }
        sh[infer] = (int)(x->n / known);
        known *= (size_t)sh[infer];
    }
    if (known != x->n) {
        err_set(&c->err, ERR_SHAPE, "reshape of %s (%zu elements) to %d dims with %zu elements",
                tensor_shape_str(x, s, sizeof s), x->n, ndim, known);
        return NULL;
    }
    Tensor *out = ctx_alloc(c, sizeof *out);
    if (!out) return NULL;
    memset(out, 0, sizeof *out);
    out->data = x->data;
    out->n = x->n;
    out->ndim = ndim;
    for (int i = 0; i < ndim; i++) out->shape[i] = sh[i];
    if (c->grad_enabled && x->requires_grad) {
        // Shared gradient buffer: ops downstream add into it directly, so no node is needed
        // (and x's producer runs in backward because x->grad now exists).
        out->grad = tensor_grad(c, x);
        if (!out->grad) return NULL;
        out->requires_grad = 1;
    }
    return out;
}

/* ---- permute ---------------------------------------------------------------------- */

// Source offsets for out = permute(x, perm): pst[i] is x's stride along out dim i.
static void permute_strides(const Tensor *x, const int *perm, size_t *pst) {
    size_t xst[TENSOR_MAX_DIMS], run = 1;
    for (int d = x->ndim - 1; d >= 0; d--) {
        xst[d] = run;
        run *= (size_t)x->shape[d];
    }
    for (int i = 0; i < x->ndim; i++) pst[i] = xst[perm[i]];
}

// Offset in x of the first element of output row r (rows run over the last output dim).
static size_t permute_row_offset(const Tensor *out, const size_t *pst, size_t r) {
    size_t off = 0;
    for (int d = out->ndim - 2; d >= 0; d--) {
        size_t i = r % (size_t)out->shape[d];
        r /= (size_t)out->shape[d];
        off += i * pst[d];
    }
    return off;
}

// iarg[0..ndim): perm
static void permute_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *out = nd->out;
    float *dx = tensor_grad(c, x);
    if (!dx || out->n == 0) return;
    size_t pst[TENSOR_MAX_DIMS];
    permute_strides(x, nd->iarg, pst);
    size_t L = out->ndim ? (size_t)out->shape[out->ndim - 1] : 1, rows = out->n / L;
    size_t sl = out->ndim ? pst[out->ndim - 1] : 1;
    const float *g = out->grad;
    PAR_FOR(schedule(static), out->n >= SHAPE_PAR_MIN,
    for (size_t r = 0; r < rows; r++) {
        size_t off = permute_row_offset(out, pst, r);
        for (size_t j = 0; j < L; j++) dx[off + j * sl] += g[r * L + j];
    });
}

static Tensor *permute_op(Ctx *c, Tensor *x, const int *perm) {
    if (!x) return NULL;
    int p[TENSOR_MAX_DIMS], seen[TENSOR_MAX_DIMS] = {0}, shape[TENSOR_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) {
        p[i] = perm[i] < 0 ? perm[i] + x->ndim : perm[i];
        if (p[i] < 0 || p[i] >= x->ndim || seen[p[i]]++) {
            char s[64];
            err_set(&c->err, ERR_SHAPE, "permute of %s: entry %d (%d) is not a permutation of the dims",
                    tensor_shape_str(x, s, sizeof s), i, perm[i]);
            return NULL;
        }
        shape[i] = x->shape[p[i]];
    }
    Tensor *out = tensor_new(c, x->ndim, shape);
    if (!out) return NULL;
    if (out->n) {
        size_t pst[TENSOR_MAX_DIMS];
        permute_strides(x, p, pst);
        size_t L = x->ndim ? (size_t)shape[x->ndim - 1] : 1, rows = out->n / L;
        size_t sl = x->ndim ? pst[x->ndim - 1] : 1;
        const float *xd = x->data;
        float *y = out->data;
        PAR_FOR(schedule(static), out->n >= SHAPE_PAR_MIN,
        for (size_t r = 0; r < rows; r++) {
            size_t off = permute_row_offset(out, pst, r);
            for (size_t j = 0; j < L; j++) y[r * L + j] = xd[off + j * sl];
        });
    }
    TapeNode *nd = tape_record(c, OP_PERMUTE, permute_backward, out, &x, 1);
    if (nd)
        for (int i = 0; i < x->ndim; i++) nd->iarg[i] = p[i];
    return out;
}

/* ---- concat and slice: x viewed as (outer, D, inner) around the dim ------------------ */

static void outer_inner(const Tensor *x, int dim, size_t *outer, size_t *inner) {
    size_t o = 1, in = 1;
    for (int d = 0; d < dim; d++) o *= (size_t)x->shape[d];
    for (int d = dim + 1; d < x->ndim; d++) in *= (size_t)x->shape[d];
    *outer = o;
    *inner = in;
}

// iarg[0]: dim. Input k occupies columns [off_k, off_k + D_k) of each out row of D_out * inner.
static void concat_backward(Ctx *c, TapeNode *nd) {
    Tensor *out = nd->out;
    int dim = nd->iarg[0], n = nd->n_in;
    size_t outer, inner, Dout = (size_t)out->shape[dim];
    outer_inner(out, dim, &outer, &inner);
    const float *g = out->grad;
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        Tensor *x = nd->in[k];
        size_t blk = (size_t)x->shape[dim] * inner;
        if (x->requires_grad) {
            float *dx = tensor_grad(c, x);
            if (!dx) return;
            PAR_FOR(schedule(static), x->n >= SHAPE_PAR_MIN,
            for (size_t o = 0; o < outer; o++) {
                const float *gr = g + o * Dout * inner + off;
                float *dr = dx + o * blk;
                for (size_t j = 0; j < blk; j++) dr[j] += gr[j];
            });
        }
        off += blk;
    }
}

static Tensor *concat_op(Ctx *c, Tensor *const *xs, int n, int dim) {
    if (n <= 0) {
        err_set(&c->err, ERR_SHAPE, "concat: %d inputs", n);
        return NULL;
    }
    for (int k = 0; k < n; k++)
        if (!xs[k]) return NULL;
    const Tensor *x0 = xs[0];
    int nd = x0->ndim, d = dim < 0 ? dim + nd : dim;
    if (d < 0 || d >= nd) {
        char s[64];
        err_set(&c->err, ERR_SHAPE, "concat: dim %d out of range for %s", dim, tensor_shape_str(x0, s, sizeof s));
        return NULL;
    }
    int shape[TENSOR_MAX_DIMS];
    for (int i = 0; i < nd; i++) shape[i] = x0->shape[i];
    for (int k = 1; k < n; k++) {
        int ok = xs[k]->ndim == nd;
        for (int i = 0; ok && i < nd; i++) ok = i == d || xs[k]->shape[i] == x0->shape[i];
        if (!ok) {
            char s1[64], s2[64];
            err_set(&c->err, ERR_SHAPE, "concat along dim %d: input %d has shape %s, input 0 %s", dim, k,
                    tensor_shape_str(xs[k], s1, sizeof s1), tensor_shape_str(x0, s2, sizeof s2));
            return NULL;
        }
        shape[d] += xs[k]->shape[d];
    }
    if (n > TAPE_MAX_INPUTS && tape_needs_grad(c, xs, n)) {
        // A tape node holds at most TAPE_MAX_INPUTS inputs: join the first ones, then the rest.
        Tensor *head = t_concat(c, xs, TAPE_MAX_INPUTS, d);
        Tensor **rest = ctx_alloc(c, (size_t)(n - TAPE_MAX_INPUTS + 1) * sizeof *rest);
        if (!head || !rest) return NULL;
        rest[0] = head;
        for (int k = TAPE_MAX_INPUTS; k < n; k++) rest[k - TAPE_MAX_INPUTS + 1] = xs[k];
        return t_concat(c, rest, n - TAPE_MAX_INPUTS + 1, d);
    }
    Tensor *out = tensor_new(c, nd, shape);
    if (!out) return NULL;
    size_t outer, inner, Dout = (size_t)shape[d];
    outer_inner(out, d, &outer, &inner);
    size_t off = 0;
    for (int k = 0; k < n; k++) {
        const Tensor *x = xs[k];
        size_t blk = (size_t)x->shape[d] * inner;
        PAR_FOR(schedule(static), x->n >= SHAPE_PAR_MIN,
        for (size_t o = 0; o < outer; o++)
            memcpy(out->data + o * Dout * inner + off, x->data + o * blk, blk * sizeof(float)););
        off += blk;
    }
    TapeNode *tn = tape_record(c, OP_CONCAT, concat_backward, out, xs, n);
    if (tn) tn->iarg[0] = d;
    return out;
}

// iarg[0]: dim, iarg[1]: start
static void slice_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *out = nd->out;
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    int dim = nd->iarg[0];
    size_t outer, inner, D = (size_t)x->shape[dim], start = (size_t)nd->iarg[1];
    outer_inner(x, dim, &outer, &inner);
    size_t blk = (size_t)out->shape[dim] * inner;
    const float *g = out->grad;
    PAR_FOR(schedule(static), out->n >= SHAPE_PAR_MIN,
    for (size_t o = 0; o < outer; o++) {
        float *dr = dx + (o * D + start) * inner;
        const float *gr = g + o * blk;
        for (size_t j = 0; j < blk; j++) dr[j] += gr[j];
    });
}

static Tensor *slice_op(Ctx *c, Tensor *x, int dim, int start, int len) {
    if (!x) return NULL;
    int d = dim < 0 ? dim + x->ndim : dim;
    char s[64];
    if (d < 0 || d >= x->ndim) {
        err_set(&c->err, ERR_SHAPE, "slice: dim %d out of range for %s", dim, tensor_shape_str(x, s, sizeof s));
        return NULL;
    }
    if (start < 0 || len < 0 || start > x->shape[d] - len) {
        err_set(&c->err, ERR_VALUE, "slice of %s: [%d, %d + %d) is outside dim %d of size %d",
                tensor_shape_str(x, s, sizeof s), start, start, len, dim, x->shape[d]);
        return NULL;
    }
    int shape[TENSOR_MAX_DIMS];
    for (int i = 0; i < x->ndim; i++) shape[i] = x->shape[i];
    shape[d] = len;
    Tensor *out = tensor_new(c, x->ndim, shape);
    if (!out) return NULL;
    size_t outer, inner, D = (size_t)x->shape[d];
    outer_inner(x, d, &outer, &inner);
    size_t blk = (size_t)len * inner;
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), out->n >= SHAPE_PAR_MIN,
    for (size_t o = 0; o < outer; o++) memcpy(y + o * blk, xd + (o * D + (size_t)start) * inner, blk * sizeof(float)););
    TapeNode *nd = tape_record(c, OP_SLICE, slice_backward, out, &x, 1);
    if (nd) {
        nd->iarg[0] = d;
        nd->iarg[1] = start;
    }
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_reshape(Ctx *c, Tensor *x, int ndim, const int *shape) {
    PROF_OP(c, OP_RESHAPE, reshape_op(c, x, ndim, shape), 0.0);
}

Tensor *t_permute(Ctx *c, Tensor *x, const int *perm) {
    PROF_OP(c, OP_PERMUTE, permute_op(c, x, perm), 0.0);
}

Tensor *t_concat(Ctx *c, Tensor *const *xs, int n, int dim) {
    PROF_OP(c, OP_CONCAT, concat_op(c, xs, n, dim), 0.0);
}

Tensor *t_slice(Ctx *c, Tensor *x, int dim, int start, int len) {
    PROF_OP(c, OP_SLICE, slice_op(c, x, dim, start, len), 0.0);
}
