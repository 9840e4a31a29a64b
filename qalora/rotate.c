/* rotate.c: the block-Hadamard rotation (rotate.h): the fast Walsh-Hadamard transform over
   channel planes, and its op on the tape (OP_ROTATE). */
#include "qalora/rotate.h"

#include <math.h>
#include <string.h>

#include "autograd/ops/fastmath.h"
#include "autograd/profile.h"
#include "util/par.h"

int rotate_block(int c, int max_block) {
    int b = 1;
    while (b * 2 <= max_block && c % (b * 2) == 0) b *= 2;
    return b >= 2 ? b : 0;
}

// Planes of at least this many floats are transformed in place, tile by tile; shorter ones
// (linear inputs: p = 1) are gathered into a buffer first so that the inner loop is long.
#define ROT_PLANE_MIN 8
// Positions per tile of the in-place path: b rows of ROT_TILE floats stay in L1 (16 kB at b = 64)
// while every butterfly stage runs over them, instead of log2(b) passes over the whole block.
#define ROT_TILE 64
// Floats of the gather buffer: ROT_BUF / b columns per tile (one at the largest block).
#define ROT_BUF 4096

// The Sylvester butterflies over b rows of n floats (row j at t + j ld), the last stage scaled
// by 1/√b. Every inner loop runs over a row: contiguous (vectorized: AVX-512, AVX2 or baseline
// x86-64, picked at load time; identical bits, no reordered sums).
FASTMATH_CLONES static void fwht_rows(float *t, size_t ld, int b, size_t n, float scale) {
    for (int h = 1; h < b; h *= 2) {
        const float s = 2 * h >= b ? scale : 1.0f;
        for (int i = 0; i < b; i += 2 * h)
            for (int j = i; j < i + h; j++) {
                float *u = t + (size_t)j * ld, *v = t + (size_t)(j + h) * ld;
                for (size_t k = 0; k < n; k++) {
                    float a = u[k], d = v[k];
                    u[k] = (a + d) * s;
                    v[k] = (a - d) * s;
                }
            }
    }
}

void rotate_apply(float *x, size_t n_vec, int c, size_t p, int b) {
    if (b < 2) return;
    const size_t nblk = (size_t)(c / b);
    const float scale = (float)(1.0 / sqrt((double)b));
    const long work = (long)(n_vec * (size_t)c * p);
    if (p >= ROT_PLANE_MIN) {
        // block i of the (n_vec, c / b) blocks: b consecutive planes at x + i b p
        long items = (long)(n_vec * nblk);
        PAR_FOR(schedule(static), work > 32768,
        for (long i = 0; i < items; i++) {
            float *base = x + (size_t)i * (size_t)b * p;
            for (size_t k0 = 0; k0 < p; k0 += ROT_TILE)
                fwht_rows(base + k0, p, b, p - k0 < ROT_TILE ? p - k0 : ROT_TILE, scale);
        });
        return;
    }
    // columns m = (v, k) in [0, n_vec p): channel ch of column m is x[(v c + ch) p + k]
    const size_t ncol = n_vec * p, tv = (size_t)(ROT_BUF / b), ntile = (ncol + tv - 1) / tv;
    long items = (long)(ntile * nblk);
    PAR_FOR(schedule(static), work > 32768,
    for (long it = 0; it < items; it++) {
        float buf[ROT_BUF];
        size_t blk = (size_t)it % nblk, m0 = (size_t)it / nblk * tv, n = ncol - m0 < tv ? ncol - m0 : tv;
        for (size_t mm = 0; mm < n; mm++) {
            size_t m = m0 + mm, v = m / p, k = m % p;
            const float *src = x + ((v * (size_t)c + blk * (size_t)b) * p + k);
            for (int j = 0; j < b; j++) buf[(size_t)j * tv + mm] = src[(size_t)j * p];
        }
        fwht_rows(buf, tv, b, n, scale);
        for (size_t mm = 0; mm < n; mm++) {
            size_t m = m0 + mm, v = m / p, k = m % p;
            float *dst = x + ((v * (size_t)c + blk * (size_t)b) * p + k);
            for (int j = 0; j < b; j++) dst[(size_t)j * p] = buf[(size_t)j * tv + mm];
        }
    });
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
