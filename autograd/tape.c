#include "autograd/tape.h"

#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"

int ctx_init(Ctx *c, size_t capacity, Err *e) {
    memset(c, 0, sizeof *c);
    c->grad_enabled = 1;
    return arena_init(&c->arena, capacity, e);
}

void ctx_free(Ctx *c) {
    arena_free(&c->arena);
    pool_free_all(&c->grad_pool);
    memset(c, 0, sizeof *c);
}

void ctx_reset(Ctx *c) {
    arena_reset(&c->arena);
    pool_reset(&c->grad_pool);
    c->last = NULL;
    c->n_nodes = 0;
    memset(&c->err, 0, sizeof c->err);
}

int ctx_pool_grads(Ctx *c, size_t capacity, Err *e) {
    if (c->grad_pool.space.base) return 0;
    return pool_init(&c->grad_pool, capacity, e);
}

int ctx_set_grad(Ctx *c, int enabled) {
    int prev = c->grad_enabled;
    c->grad_enabled = enabled;
    return prev;
}

void *ctx_alloc(Ctx *c, size_t bytes) {
    void *p = arena_alloc(&c->arena, bytes);
    if (!p)
        err_set(&c->err, ERR_NOMEM, "arena full: asked for %zu bytes with %zu of %zu in use "
                "(raise the arena size)", bytes, c->arena.used, c->arena.capacity);
    return p;
}

Tensor *tensor_new(Ctx *c, int ndim, const int *shape) {
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS) {
        err_set(&c->err, ERR_INTERNAL, "tensor_new: %d dims (max %d)", ndim, TENSOR_MAX_DIMS);
        return NULL;
    }
    size_t n = 1, bytes;
    for (int i = 0; i < ndim; i++) {
        if (shape[i] < 0 || !size_mul_ok(n, (size_t)shape[i], &n)) {
            err_set(&c->err, ERR_INTERNAL, "tensor_new: bad dimension %d", shape[i]);
            return NULL;
        }
    }
    if (!size_mul_ok(n, sizeof(float), &bytes)) {
        err_set(&c->err, ERR_NOMEM, "tensor_new: %zu elements overflow", n);
        return NULL;
    }
    Tensor *t = ctx_alloc(c, sizeof(Tensor));
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->data = ctx_alloc(c, bytes ? bytes : sizeof(float));
    if (!t->data) return NULL;
    t->n = n;
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    return t;
}

Tensor *tensor_zeros(Ctx *c, int ndim, const int *shape) {
    Tensor *t = tensor_new(c, ndim, shape);
    if (t) memset(t->data, 0, t->n * sizeof(float));
    return t;
}

Tensor *tensor_new1(Ctx *c, int a) { return tensor_new(c, 1, (int[]){a}); }
Tensor *tensor_new2(Ctx *c, int a, int b) { return tensor_new(c, 2, (int[]){a, b}); }
Tensor *tensor_new3(Ctx *c, int a, int b, int d) { return tensor_new(c, 3, (int[]){a, b, d}); }
Tensor *tensor_new4(Ctx *c, int a, int b, int d, int e) { return tensor_new(c, 4, (int[]){a, b, d, e}); }

Tensor *tensor_from(Ctx *c, const float *data, int ndim, const int *shape) {
    Tensor *t = tensor_new(c, ndim, shape);
    if (t) memcpy(t->data, data, t->n * sizeof(float));
    return t;
}

static void *pool_or_arena(Ctx *c, size_t bytes) {
    if (!c->grad_pool.space.base) return ctx_alloc(c, bytes);
    void *p = pool_alloc(&c->grad_pool, bytes);
    if (!p)
        err_set(&c->err, ERR_NOMEM, "gradient pool full: asked for %zu bytes with %zu of %zu in use (raise "
                "the arena size)", bytes, c->grad_pool.space.used, c->grad_pool.space.capacity);
    return p;
}

float *ctx_scratch(Ctx *c, size_t n) { return pool_or_arena(c, (n ? n : 1) * sizeof(float)); }

void ctx_scratch_free(Ctx *c, float *p) {
    if (pool_owns(&c->grad_pool, p)) pool_free(&c->grad_pool, p);
}

Tensor *tensor_new_transient(Ctx *c, int ndim, const int *shape) {
    if (ndim < 0 || ndim > TENSOR_MAX_DIMS) {
        err_set(&c->err, ERR_INTERNAL, "tensor_new_transient: %d dims (max %d)", ndim, TENSOR_MAX_DIMS);
        return NULL;
    }
    Tensor *t = ctx_alloc(c, sizeof(Tensor));
    if (!t) return NULL;
    memset(t, 0, sizeof *t);
    t->ndim = ndim;
    for (int i = 0; i < ndim; i++) t->shape[i] = shape[i];
    t->n = tensor_shape_numel(ndim, shape);
    return tensor_rebuild_data(c, t) ? t : NULL;
}

float *tensor_rebuild_data(Ctx *c, Tensor *t) { return t->data = pool_or_arena(c, (t->n ? t->n : 1) * sizeof(float)); }

void tensor_drop(Ctx *c, Tensor *t) {
    if (!pool_owns(&c->grad_pool, t->data)) return;
    pool_free(&c->grad_pool, t->data);
    t->data = NULL;
}

float *tensor_grad(Ctx *c, Tensor *t) {
    if (t->grad) return t->grad;
    if (t->is_param) {
        err_set(&c->err, ERR_INTERNAL, "tensor_grad: frozen parameter has no gradient buffer");
        return NULL;
    }
    size_t bytes = t->n * sizeof(float);
    t->grad = pool_or_arena(c, bytes);
    if (t->grad) memset(t->grad, 0, bytes);
    return t->grad;
}

int tape_needs_grad(const Ctx *c, Tensor *const *in, int n_in) {
    if (!c->grad_enabled) return 0;
    for (int i = 0; i < n_in; i++)
        if (in[i] && in[i]->requires_grad) return 1;
    return 0;
}

TapeNode *tape_record(Ctx *c, int op, BackwardFn backward, Tensor *out, Tensor *const *in, int n_in) {
    if (!tape_needs_grad(c, in, n_in)) return NULL;
    if (n_in > TAPE_MAX_INPUTS) {
        err_set(&c->err, ERR_INTERNAL, "tape_record: %d inputs (max %d)", n_in, TAPE_MAX_INPUTS);
        return NULL;
    }
    TapeNode *nd = ctx_alloc(c, sizeof *nd);
    if (!nd) return NULL;
    memset(nd, 0, sizeof *nd);
    nd->op = op;
    nd->backward = backward;
    nd->out = out;
    nd->n_in = n_in;
    for (int i = 0; i < n_in; i++) nd->in[i] = in[i];
    nd->prev = c->last;
    c->last = nd;
    c->n_nodes++;
    out->requires_grad = 1;
    return nd;
}

int tape_backward(Ctx *c, Tensor *out, const float *dout) {
    if (c->err.code) return c->err.code;
    if (!out->requires_grad) {
        tape_clear(c);
        return 0;  // nothing upstream needs a gradient
    }
    float *g = tensor_grad(c, out);
    if (!g) return c->err.code;
    if (dout) {
        for (size_t i = 0; i < out->n; i++) g[i] += dout[i];
    } else {
        if (out->n != 1)
            return err_set(&c->err, ERR_INTERNAL, "tape_backward: output has %zu elements; pass dout", out->n);
        g[0] += 1.0f;
    }
    for (TapeNode *nd = c->last; nd; nd = nd->prev) {
        if (!nd->out->grad) continue;  // no gradient reached this op's output
        for (int i = 0; i < nd->n_in; i++) {  // inputs dropped after the forward come back first
            Tensor *x = nd->in[i];
            if (!x || x->data || !x->remat) continue;
            double t0 = c->prof ? prof_now() : 0;
            x->remat->rebuild(c, x->remat);
            if (c->prof) prof_add_backward(c->prof, x->remat, prof_now() - t0);
        }
        if (c->err.code) break;
        if (c->prof) {
            double t0 = prof_now();
            nd->backward(c, nd);
            prof_add_backward(c->prof, nd, prof_now() - t0);
        } else {
            nd->backward(c, nd);
        }
        if (c->err.code) break;
        // every reader of nd->out came later on the tape and has added its part: its
        // gradient is dead (a reshape view of it shares the buffer, and its readers are done too)
        if (pool_owns(&c->grad_pool, nd->out->grad)) {
            pool_free(&c->grad_pool, nd->out->grad);
            nd->out->grad = NULL;
        }
        if (nd->rebuild) tensor_drop(c, nd->out);  // a rebuilt value is dead too
    }
    tape_clear(c);
    return c->err.code;
}

void tape_clear(Ctx *c) {
    c->last = NULL;
    c->n_nodes = 0;
}

CtxScope ctx_scope_begin(const Ctx *c) {
    CtxScope s = {arena_mark(&c->arena), c->n_nodes};
    return s;
}

Tensor *ctx_scope_end(Ctx *c, CtxScope s, Tensor *keep) {
    if (c->n_nodes != s.n_nodes) return keep;  // backward still needs what was recorded
    if (!keep) {
        arena_release(&c->arena, s.mark);  // nothing to keep (or an op failed): free it all
        return NULL;
    }
    if ((unsigned char *)keep->data < c->arena.base + s.mark) return keep;  // not from this scope
    Tensor hdr = *keep;
    arena_release(&c->arena, s.mark);
    Tensor *t = ctx_alloc(c, sizeof(Tensor));
    // Arena memory is handed out in increasing order, so the new data block starts at or
    // below the old one: memmove copies the overlapping region correctly.
    float *data = t ? ctx_alloc(c, hdr.n * sizeof(float)) : NULL;
    if (!data) return NULL;
    memmove(data, hdr.data, hdr.n * sizeof(float));
    *t = hdr;
    t->data = data;
    t->grad = NULL;
    return t;
}
