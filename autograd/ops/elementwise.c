/* elementwise.c: add, sub, mul with numpy broadcasting; scale and add-scalar.

   Broadcasting: shapes are right-aligned (up to 5 dims); each pair of dims is equal or one
   of them is 1; the output takes the larger. Before any loop the pair of shapes is
   collapsed into a plan (Bcast): output dims of size 1 are dropped, and neighbouring dims
   are merged when each input is full in both or broadcast in both. The common cases then
   become one or two plain loops:
       same shape                        -> [n: full/full]                (flat loop)
       b (N, C, 1, 1) over (N, C, H, W)  -> [N*C: full/full][H*W: full/bcast]
       b (D) over (R, D)                 -> [R: full/bcast][D: full/full]
   The gradient of a broadcast input is a sum over its broadcast dims. Each element (or a
   chunk of a row) of that gradient is owned by one thread and summed in double in a fixed
   order, so the result is the same bits for any thread count.
*/
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "util/par.h"

// Below this many output elements the loops run on one thread: the fork costs more.
#define EW_PAR_MIN 32768
// Flat loops are cut into blocks of this many elements, one block per iteration.
#define EW_BLOCK 16384
// Gradient of a broadcast row input: columns handled per task (a double accumulator each).
#define EW_COL_CHUNK 256
// Gradient of a one-element input: fixed chunks summed in double, then added in order.
#define EW_SUM_CHUNK 4096

typedef struct {
    int nd;                           // collapsed dims, 1..5
    size_t size[TENSOR_MAX_DIMS];     // output extent of each collapsed dim (all > 1 unless nd == 1)
    size_t so[TENSOR_MAX_DIMS];       // output strides
    size_t st[2][TENSOR_MAX_DIMS];    // strides of a (0) and b (1) in their own layout; 0 where broadcast
} Bcast;

// Output shape of a op b into out_shape/out_ndim and the collapsed plan. 0, or ERR_SHAPE in c->err.
static int bcast_plan(Ctx *c, const char *op, const Tensor *a, const Tensor *b, int *out_ndim,
                      int *out_shape, Bcast *bc) {
    int nd = a->ndim > b->ndim ? a->ndim : b->ndim;
    int sa[TENSOR_MAX_DIMS], sb[TENSOR_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        int ia = i - (nd - a->ndim), ib = i - (nd - b->ndim);
        sa[i] = ia >= 0 ? a->shape[ia] : 1;
        sb[i] = ib >= 0 ? b->shape[ib] : 1;
        if (sa[i] != sb[i] && sa[i] != 1 && sb[i] != 1) {
            char s1[64], s2[64];
            return err_set(&c->err, ERR_SHAPE, "%s: shapes %s and %s do not broadcast (dim %d: %d vs %d)", op,
                           tensor_shape_str(a, s1, sizeof s1), tensor_shape_str(b, s2, sizeof s2), i, sa[i],
                           sb[i]);
        }
        out_shape[i] = sa[i] == 1 ? sb[i] : sa[i];
    }
    *out_ndim = nd;

    int k = 0;
    int full[2][TENSOR_MAX_DIMS];
    for (int i = 0; i < nd; i++) {
        if (out_shape[i] == 1) continue;
        int fa = sa[i] == out_shape[i], fb = sb[i] == out_shape[i];
        if (k > 0 && full[0][k - 1] == fa && full[1][k - 1] == fb) {
            bc->size[k - 1] *= (size_t)out_shape[i];
        } else {
            bc->size[k] = (size_t)out_shape[i];
            full[0][k] = fa;
            full[1][k] = fb;
            k++;
        }
    }
    if (k == 0) {  // one output element
        bc->size[0] = 1;
        full[0][0] = full[1][0] = 1;
        k = 1;
    }
    bc->nd = k;
    size_t run_o = 1, run[2] = {1, 1};
    for (int d = k - 1; d >= 0; d--) {
        bc->so[d] = run_o;
        run_o *= bc->size[d];
        for (int w = 0; w < 2; w++) {
            bc->st[w][d] = full[w][d] ? run[w] : 0;
            if (full[w][d]) run[w] *= bc->size[d];
        }
    }
    return 0;
}

// Offsets in a and b of the first element of output row r (rows run over the last collapsed dim).
static void bcast_row_offsets(const Bcast *bc, size_t r, size_t *oa, size_t *ob) {
    size_t a = 0, b = 0;
    for (int d = bc->nd - 2; d >= 0; d--) {
        size_t i = r % bc->size[d];
        r /= bc->size[d];
        a += i * bc->st[0][d];
        b += i * bc->st[1][d];
    }
    *oa = a;
    *ob = b;
}

// y[i] = a[i*sa] op b[i*sb] for i < L; sa, sb are 0 (broadcast) or 1. The unit-stride
// cases are written out so the compiler vectorises them.
static void ew_run(int op, float *y, const float *a, size_t sa, const float *b, size_t sb, size_t L) {
    switch (op) {
    case OP_ADD:
        if (sa && sb) for (size_t i = 0; i < L; i++) y[i] = a[i] + b[i];
        else if (sa) for (size_t i = 0; i < L; i++) y[i] = a[i] + b[0];
        else if (sb) for (size_t i = 0; i < L; i++) y[i] = a[0] + b[i];
        else for (size_t i = 0; i < L; i++) y[i] = a[0] + b[0];
        break;
    case OP_SUB:
        if (sa && sb) for (size_t i = 0; i < L; i++) y[i] = a[i] - b[i];
        else if (sa) for (size_t i = 0; i < L; i++) y[i] = a[i] - b[0];
        else if (sb) for (size_t i = 0; i < L; i++) y[i] = a[0] - b[i];
        else for (size_t i = 0; i < L; i++) y[i] = a[0] - b[0];
        break;
    default:  // OP_MUL
        if (sa && sb) for (size_t i = 0; i < L; i++) y[i] = a[i] * b[i];
        else if (sa) for (size_t i = 0; i < L; i++) y[i] = a[i] * b[0];
        else if (sb) for (size_t i = 0; i < L; i++) y[i] = a[0] * b[i];
        else for (size_t i = 0; i < L; i++) y[i] = a[0] * b[0];
        break;
    }
}

static void bcast_forward(int op, float *y, const float *a, const float *b, const Bcast *bc, size_t n) {
    int last = bc->nd - 1;
    size_t L = bc->size[last], rows = n / L;
    size_t sa = bc->st[0][last], sb = bc->st[1][last];
    if (rows == 1) {
        size_t nblocks = (L + EW_BLOCK - 1) / EW_BLOCK;
        PAR_FOR(schedule(static), n >= EW_PAR_MIN,
        for (size_t k = 0; k < nblocks; k++) {
            size_t lo = k * EW_BLOCK, len = L - lo < EW_BLOCK ? L - lo : EW_BLOCK;
            ew_run(op, y + lo, a + lo * sa, sa, b + lo * sb, sb, len);
        });
        return;
    }
    PAR_FOR(schedule(static), n >= EW_PAR_MIN,
    for (size_t r = 0; r < rows; r++) {
        size_t oa, ob;
        bcast_row_offsets(bc, r, &oa, &ob);
        ew_run(op, y + r * L, a + oa, sa, b + ob, sb, L);
    });
}

// Unravels k over the collapsed dims dims[0..cnt) (row-major: dims[cnt-1] fastest) and adds
// the offsets of that index in the output (*og) and in operand o (*oo).
static void bcast_unravel(const Bcast *bc, const int *dims, int cnt, int o, size_t k, size_t *og, size_t *oo) {
    for (int j = cnt - 1; j >= 0; j--) {
        int d = dims[j];
        size_t i = k % bc->size[d];
        k /= bc->size[d];
        *og += i * bc->so[d];
        *oo += i * bc->st[o][d];
    }
}

// Adds sign * g (times the other operand for mul: other != NULL) into dx, where dx is the
// gradient of input `w` (0: a, 1: b) of a broadcast op with plan bc and n output elements.
static void bcast_backward(Ctx *c, float *dx, const float *g, const float *other, float sign, const Bcast *bc,
                           int w, size_t n) {
    int o = 1 - w, nd = bc->nd, last = nd - 1;
    size_t L = bc->size[last];
    size_t mx = 1;  // elements of the input
    int nb = 0, bdims[TENSOR_MAX_DIMS];
    for (int d = 0; d < nd; d++) {
        if (bc->st[w][d]) mx *= bc->size[d];
        else bdims[nb++] = d;
    }
    if (nb == 0) {
        // Not broadcast: one output element per input element, same offsets.
        if (!other) {
            PAR_FOR(schedule(static), n >= EW_PAR_MIN,
            for (size_t i = 0; i < n; i++) dx[i] += sign * g[i];);
            return;
        }
        size_t rows = n / L, sp = bc->st[o][last];
        PAR_FOR(schedule(static), n >= EW_PAR_MIN,
        for (size_t r = 0; r < rows; r++) {
            size_t off[2];
            bcast_row_offsets(bc, r, &off[0], &off[1]);
            const float *gr = g + r * L, *pr = other + off[o];
            float *dr = dx + r * L;
            if (sp) for (size_t i = 0; i < L; i++) dr[i] += gr[i] * pr[i];
            else for (size_t i = 0; i < L; i++) dr[i] += gr[i] * pr[0];
        });
        return;
    }
    if (mx == 1) {
        // One element (e.g. shape (1)): every output dim comes from the other operand, so
        // that operand is full and shares the output's offsets.
        size_t nchunks = (n + EW_SUM_CHUNK - 1) / EW_SUM_CHUNK;
        size_t mark = arena_mark(&c->arena);
        double *partial = ctx_alloc(c, (nchunks ? nchunks : 1) * sizeof(double));
        if (!partial) return;
        PAR_FOR(schedule(static), n >= EW_PAR_MIN,
        for (size_t k = 0; k < nchunks; k++) {
            size_t lo = k * EW_SUM_CHUNK, hi = lo + EW_SUM_CHUNK < n ? lo + EW_SUM_CHUNK : n;
            double s = 0;
            if (other) for (size_t i = lo; i < hi; i++) s += (double)g[i] * (double)other[i];
            else for (size_t i = lo; i < hi; i++) s += g[i];
            partial[k] = s;
        });
        double total = 0;
        for (size_t k = 0; k < nchunks; k++) total += partial[k];
        dx[0] += (float)(sign * total);
        arena_release(&c->arena, mark);
        return;
    }
    // Outer combinations of the broadcast dims (all but the last one when it is broadcast);
    // fdims: the input's full dims before the last one, which pick an input element or row.
    int inner_bcast = bdims[nb - 1] == last;
    int nouter = inner_bcast ? nb - 1 : nb, nf = 0, fdims[TENSOR_MAX_DIMS];
    for (int d = 0; d < last; d++)
        if (bc->st[w][d]) fdims[nf++] = d;
    size_t combos = 1;
    for (int k = 0; k < nouter; k++) combos *= bc->size[bdims[k]];
    size_t sp = bc->st[o][last];

    if (inner_bcast) {
        // Each input element sums contiguous output runs of length L (e.g. H*W for a bias (N, C, 1, 1)).
        PAR_FOR(schedule(static), n >= EW_PAR_MIN,
        for (size_t j = 0; j < mx; j++) {
            size_t base_g = 0, base_p = 0;
            bcast_unravel(bc, fdims, nf, o, j, &base_g, &base_p);
            double acc = 0;
            for (size_t q = 0; q < combos; q++) {
                size_t og = base_g, oth = base_p;
                bcast_unravel(bc, bdims, nouter, o, q, &og, &oth);
                const float *gr = g + og;
                if (!other) for (size_t i = 0; i < L; i++) acc += gr[i];
                else if (sp) for (size_t i = 0; i < L; i++) acc += (double)gr[i] * (double)other[oth + i];
                else for (size_t i = 0; i < L; i++) acc += (double)gr[i] * (double)other[oth];
            }
            dx[j] += (float)(sign * acc);
        });
        return;
    }
    // The last dim is full for this input (e.g. a bias (D) over (R, D)): one task per
    // (input row, column chunk), walking the broadcast dims in order with one double
    // accumulator per column, so reads stay contiguous.
    size_t xrows = mx / L, nchunk = (L + EW_COL_CHUNK - 1) / EW_COL_CHUNK;
    PAR_FOR(schedule(static), n >= EW_PAR_MIN,
    for (size_t u = 0; u < xrows * nchunk; u++) {
        size_t q = u / nchunk, c0 = (u % nchunk) * EW_COL_CHUNK;
        size_t len = L - c0 < EW_COL_CHUNK ? L - c0 : EW_COL_CHUNK;
        size_t base_g = 0, base_p = 0;
        bcast_unravel(bc, fdims, nf, o, q, &base_g, &base_p);
        double acc[EW_COL_CHUNK];
        for (size_t i = 0; i < len; i++) acc[i] = 0;
        for (size_t t = 0; t < combos; t++) {
            size_t og = base_g, oth = base_p;
            bcast_unravel(bc, bdims, nouter, o, t, &og, &oth);
            const float *gr = g + og + c0;
            if (!other) for (size_t i = 0; i < len; i++) acc[i] += gr[i];
            else if (sp) for (size_t i = 0; i < len; i++) acc[i] += (double)gr[i] * (double)other[oth + c0 + i];
            else for (size_t i = 0; i < len; i++) acc[i] += (double)gr[i] * (double)other[oth];
        }
        float *dr = dx + q * L + c0;
        for (size_t i = 0; i < len; i++) dr[i] += (float)(sign * acc[i]);
    });
}

static void binary_backward(Ctx *c, TapeNode *nd) {
    Tensor *a = nd->in[0], *b = nd->in[1], *out = nd->out;
    Bcast bc;
    int ndim, shape[TENSOR_MAX_DIMS];
    if (bcast_plan(c, op_name(nd->op), a, b, &ndim, shape, &bc)) return;
    if (out->n == 0) return;
    if (a->requires_grad) {
        float *da = tensor_grad(c, a);
        if (!da) return;
        bcast_backward(c, da, out->grad, nd->op == OP_MUL ? b->data : NULL, 1.0f, &bc, 0, out->n);
    }
    if (b->requires_grad) {
        float *db = tensor_grad(c, b);
        if (!db) return;
        bcast_backward(c, db, out->grad, nd->op == OP_MUL ? a->data : NULL, nd->op == OP_SUB ? -1.0f : 1.0f, &bc,
                       1, out->n);
    }
}

static Tensor *binary_op(Ctx *c, int op, Tensor *a, Tensor *b) {
    if (!a || !b) return NULL;
    Bcast bc;
    int ndim, shape[TENSOR_MAX_DIMS];
    if (bcast_plan(c, op_name(op), a, b, &ndim, shape, &bc)) return NULL;
    Tensor *out = tensor_new(c, ndim, shape);
    if (!out) return NULL;
    if (out->n) bcast_forward(op, out->data, a->data, b->data, &bc, out->n);
    Tensor *in[2] = {a, b};
    tape_record(c, op, binary_backward, out, in, 2);
    return out;
}

static Tensor *add_op(Ctx *c, Tensor *a, Tensor *b) { return binary_op(c, OP_ADD, a, b); }
static Tensor *sub_op(Ctx *c, Tensor *a, Tensor *b) { return binary_op(c, OP_SUB, a, b); }
static Tensor *mul_op(Ctx *c, Tensor *a, Tensor *b) { return binary_op(c, OP_MUL, a, b); }

// farg[0]: d out / d x (s for scale, 1 for add_scalar)
static void affine_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0];
    float *dx = tensor_grad(c, x);
    if (!dx) return;
    const float *g = nd->out->grad;
    float s = nd->farg[0];
    PAR_FOR(schedule(static), x->n >= EW_PAR_MIN,
    for (size_t i = 0; i < x->n; i++) dx[i] += s * g[i];);
}

static Tensor *scale_op(Ctx *c, Tensor *x, float s) {
    if (!x) return NULL;
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    if (!out) return NULL;
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= EW_PAR_MIN,
    for (size_t i = 0; i < x->n; i++) y[i] = s * xd[i];);
    TapeNode *nd = tape_record(c, OP_SCALE, affine_backward, out, &x, 1);
    if (nd) nd->farg[0] = s;
    return out;
}

static Tensor *add_scalar_op(Ctx *c, Tensor *x, float s) {
    if (!x) return NULL;
    Tensor *out = tensor_new(c, x->ndim, x->shape);
    if (!out) return NULL;
    const float *xd = x->data;
    float *y = out->data;
    PAR_FOR(schedule(static), x->n >= EW_PAR_MIN,
    for (size_t i = 0; i < x->n; i++) y[i] = xd[i] + s;);
    TapeNode *nd = tape_record(c, OP_ADD_SCALAR, affine_backward, out, &x, 1);
    if (nd) nd->farg[0] = 1.0f;
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_add(Ctx *c, Tensor *a, Tensor *b) {
    PROF_OP(c, OP_ADD, add_op(c, a, b), 0.0);
}

Tensor *t_sub(Ctx *c, Tensor *a, Tensor *b) {
    PROF_OP(c, OP_SUB, sub_op(c, a, b), 0.0);
}

Tensor *t_mul(Ctx *c, Tensor *a, Tensor *b) {
    PROF_OP(c, OP_MUL, mul_op(c, a, b), 0.0);
}

Tensor *t_scale(Ctx *c, Tensor *x, float s) {
    PROF_OP(c, OP_SCALE, scale_op(c, x, s), 0.0);
}

Tensor *t_add_scalar(Ctx *c, Tensor *x, float s) {
    PROF_OP(c, OP_ADD_SCALAR, add_scalar_op(c, x, s), 0.0);
}
