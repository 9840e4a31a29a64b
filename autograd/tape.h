/* tape.h: the execution context of the engine: per-step arena, grad mode and the tape
   of recorded ops (dynamic reverse mode).

       Ctx c; ctx_init(&c, (size_t)4 << 30, &e);
       ctx_reset(&c);                         // top of each optimizer step: arena + tape cleared
       Tensor *y = t_conv2d(&c, x, &w, &b, 1, 1);   // ops record themselves when a gradient is needed
       Tensor *loss = t_mse_loss(&c, y, target, 0);
       if (!loss) return c.err.code;          // ops return NULL after the first failure (arena full...)
       tape_backward(&c, loss, NULL);         // fills grad of every tensor with requires_grad

   An op records a node only when grad mode is on AND one of its inputs requires a gradient,
   so a frozen teacher records nothing even with grad mode on. Backward adds (+=) into
   gradient buffers: call it several times to accumulate; zero parameter gradients
   yourself (tensor grads are model-owned) between optimizer steps.

   Scopes free intermediates of code that recorded nothing (inference, the teacher):
       CtxScope s = ctx_scope_begin(&c);
       ... many ops ...
       out = ctx_scope_end(&c, s, out);   // everything else allocated since begin is freed
   When a node was recorded inside the scope nothing is freed (backward needs it).
*/
#ifndef EFFDM_TAPE_H
#define EFFDM_TAPE_H

#include "autograd/arena.h"
#include "autograd/pool.h"
#include "autograd/tensor.h"
#include "util/err.h"

#define TAPE_MAX_INPUTS 8

struct Ctx;
struct TapeNode;
struct Profile;
// Adds the gradient of node->out (node->out->grad) into the grads of its inputs that need one.
typedef void (*BackwardFn)(struct Ctx *c, struct TapeNode *node);

typedef struct TapeNode {
    int op;                          // OpKind (ops.h), for profiles and messages
    BackwardFn backward;
    Tensor *out;
    Tensor *in[TAPE_MAX_INPUTS];     // in[i] may be NULL (optional input, e.g. no bias)
    int n_in;
    void *saved;                     // op-specific values kept for backward (arena memory)
    int iarg[8];                     // small integer op parameters
    float farg[4];                   // small float op parameters
    BackwardFn rebuild;              // non-NULL: recomputes out->data (tensor_new_transient) after a drop
    int prof_block;                  // profiler block of the forward (autograd/profile.h)
    double prof_flops;               // its forward FLOPs (GEMM ops, when profiling)
    struct TapeNode *prev;
} TapeNode;

typedef struct Ctx {
    Arena arena;
    int grad_enabled;      // 0: no op records anything
    TapeNode *last;        // most recent node
    size_t n_nodes;
    Err err;               // first failure inside an op (ops then return NULL)
    struct Profile *prof;  // NULL: not profiling (autograd/profile.h)
    BlockPool grad_pool;   // reserved by ctx_pool_grads: gradients of intermediates, freed in backward
} Ctx;

typedef struct {
    size_t mark;
    size_t n_nodes;
} CtxScope;

// Creates a context whose arena reserves `capacity` bytes. Grad mode starts on.
int ctx_init(Ctx *c, size_t capacity, Err *e);
void ctx_free(Ctx *c);
// Clears tape and arena (all per-step tensors become invalid) and the error.
void ctx_reset(Ctx *c);
// From now on gradients of intermediate tensors come from a pool of `capacity` bytes (address
// space only) instead of the arena, and tape_backward frees each one as soon as the op that
// produced its tensor has run its backward: the step's memory then holds the saved
// activations plus the gradients alive at once, not every gradient of the step. After a
// backward only the gradients of tensors no op produced (parameters, inputs) stay readable.
// 0 or ERR_NOMEM.
int ctx_pool_grads(Ctx *c, size_t capacity, Err *e);
// Sets grad mode; returns the previous value.
int ctx_set_grad(Ctx *c, int enabled);

// New per-step tensor of the given shape, uninitialised; NULL (and c->err set) if the arena is full.
Tensor *tensor_new(Ctx *c, int ndim, const int *shape);
// Same, zero-filled.
Tensor *tensor_zeros(Ctx *c, int ndim, const int *shape);
// Shape helpers: tensor_new with shape (a), (a,b), (a,b,c), (a,b,c,d).
Tensor *tensor_new1(Ctx *c, int a);
Tensor *tensor_new2(Ctx *c, int a, int b);
Tensor *tensor_new3(Ctx *c, int a, int b, int d);
Tensor *tensor_new4(Ctx *c, int a, int b, int d, int e);
// Per-step tensor holding a copy of n floats with the given shape.
Tensor *tensor_from(Ctx *c, const float *data, int ndim, const int *shape);
// Rebuildable tensors: a weight-sized value that is cheap to recompute need not stay in memory
// from its forward to its backward. Its producer allocates it with tensor_new_transient (data
// from the gradient pool; from the arena when there is none), records its node with a
// `rebuild` function and sets out->remat to the node; whoever consumed it calls tensor_drop
// after the forward. tape_backward calls rebuild before any node that reads the tensor runs
// (tensor_rebuild_data gives it fresh memory) and frees the data again after the producer's
// own backward.
Tensor *tensor_new_transient(Ctx *c, int ndim, const int *shape);
// Frees a transient tensor's data (pool memory only; otherwise it is kept) and sets data to NULL.
void tensor_drop(Ctx *c, Tensor *t);
// Fresh pool memory for t->data (inside a rebuild); NULL (and c->err set) when full.
float *tensor_rebuild_data(Ctx *c, Tensor *t);
// Pool scratch of n floats for an op's backward (the arena when there is no pool); give it back
// with ctx_scratch_free in the same backward. NULL (and c->err set) when full.
float *ctx_scratch(Ctx *c, size_t n);
void ctx_scratch_free(Ctx *c, float *p);
// Arena memory for op scratch / saved values; NULL (and c->err set) when full.
void *ctx_alloc(Ctx *c, size_t bytes);
// Gradient buffer of t, allocated zero-filled from the arena on first use; NULL if full.
float *tensor_grad(Ctx *c, Tensor *t);

// 1 if an op over these inputs must be recorded (grad mode on, some input requires grad).
int tape_needs_grad(const Ctx *c, Tensor *const *in, int n_in);
// Appends a node for an op whose output is `out`; marks out->requires_grad. NULL if the arena is full.
TapeNode *tape_record(Ctx *c, int op, BackwardFn backward, Tensor *out, Tensor *const *in, int n_in);
// Reverse pass from `out`: its gradient is dout (out->n floats), or 1 when dout is NULL and
// out has one element. Runs every node in reverse order, then clears the tape.
// 0, or an error code (c->err says why).
int tape_backward(Ctx *c, Tensor *out, const float *dout);
// Drops the tape without running it (the arena is kept).
void tape_clear(Ctx *c);

CtxScope ctx_scope_begin(const Ctx *c);
// Ends a scope keeping only `keep` (moved down to the scope start); returns its new header.
// keep == NULL frees everything allocated in the scope and returns NULL.
// If a node was recorded inside the scope, frees nothing and returns keep unchanged.
Tensor *ctx_scope_end(Ctx *c, CtxScope s, Tensor *keep);

#endif
