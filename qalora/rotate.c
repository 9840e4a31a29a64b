/* rotate.c: the block-Hadamard rotation (rotate.h): the fast Walsh-Hadamard transform over
   channel planes, and its op on the tape (OP_ROTATE). */
#include "qalora/rotate.h"

#include <math.h>
#include <string.h>

#include "autograd/profile.h"

int rotate_block(int c, int max_block) {
    int b = 1;
    while (b * 2 <= max_block && c % (b * 2) == 0) b *= 2;
    return b >= 2 ? b : 0;
}

// One block of b channel planes (each p floats, consecutive) through the unnormalised
// Sylvester butterflies, then scaled by 1/√b. The inner loop runs over a plane: contiguous.
static void fwht_block(float *x, int b, size_t p, float scale) {
    for (int h = 1; h < b; h *= 2)
        for (int i = 0; i < b; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float *u = x + (size_t)j * p, *v = x + (size_t)(j + h) * p;
                for (size_t k = 0; k < p; k++) {
                    float a = u[k], d = v[k];
                    u[k] = a + d;
                    v[k] = a - d;
                }
            }
    for (size_t k = 0; k < (size_t)b * p; k++) x[k] *= scale;
}

void rotate_apply(float *x, size_t n_vec, int c, size_t p, int b) {
    if (b < 2) return;
    long nblk = (long)(n_vec * (size_t)(c / b));
    float scale = (float)(1.0 / sqrt((double)b));
    // blocks are independent: one work item each (a few kB to a few hundred)
#pragma omp parallel for schedule(static) if (nblk * (long)b * (long)p > 32768)
    for (long i = 0; i < nblk; i++) fwht_block(x + (size_t)i * (size_t)b * p, b, p, scale);
}

// The dims of x as (n_vec, c, p) for rotate_apply: conv (N, C, H, W) or (..., C).
static void rotate_dims(const Tensor *x, int conv, size_t *n_vec, int *c, size_t *p) {
    if (conv) {
        *n_vec = (size_t)x->shape[0];
        *c = x->shape[1];
        *p = x->n / ((size_t)x->shape[0] * (size_t)x->shape[1]);
    } else {
        *c = x->shape[x->ndim - 1];
        *n_vec = x->n / (size_t)*c;
        *p = 1;
    }
}

// in[0] = x; iarg[0] = conv, iarg[1] = b. H is symmetric and orthogonal: dx += H g.
static void rotate_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0];
    if (!x->requires_grad) return;
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    size_t n_vec, p;
    int ch;
    rotate_dims(x, nd->iarg[0], &n_vec, &ch, &p);
    size_t mark = arena_mark(&c->arena);
    float *g = ctx_alloc(c, x->n * sizeof(float));
    if (!g) return;
    memcpy(g, nd->out->grad, x->n * sizeof(float));
    rotate_apply(g, n_vec, ch, p, nd->iarg[1]);
    for (size_t i = 0; i < x->n; i++) dx[i] += g[i];
    arena_release(&c->arena, mark);
}

static Tensor *rotate_op(Ctx *c, Tensor *x, int conv, int b) {
    if (!x) return NULL;
    size_t n_vec, p;
    int ch;
    if ((conv && x->ndim != 4) || x->ndim < 1) {
        err_set(&c->err, ERR_SHAPE, "rotate: a %d-dim input for a %s layer", x->ndim, conv ? "conv2d" : "linear");
        return NULL;
    }
    rotate_dims(x, conv, &n_vec, &ch, &p);
    if (b < 2 || (b & (b - 1)) || ch % b) {
        err_set(&c->err, ERR_SHAPE, "rotate: block %d for %d channels (a power of two >= 2 dividing them)", b, ch);
        return NULL;
    }
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    if (!out) return NULL;
    memcpy(out->data, x->data, x->n * sizeof(float));
    rotate_apply(out->data, n_vec, ch, p, b);
    Tensor *in[1] = {x};
    TapeNode *nd = tape_record(c, OP_ROTATE, rotate_backward, out, in, 1);
    if (nd) {
        nd->iarg[0] = conv;
        nd->iarg[1] = b;
    }
    return out;
}

Tensor *t_rotate(Ctx *c, Tensor *x, int conv, int b) { PROF_OP(c, OP_ROTATE, rotate_op(c, x, conv, b), 0.0); }
