/* matmul.c: batched matrix product and the linear layer, forward and backward through
   cblas_sgemm. Backward GEMMs use beta = 1 (they add into gradients other uses of the
   same tensor also add into) and are skipped for inputs that need no gradient. */
#include <limits.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "autograd/ops/gemm_util.h"
#include "util/par.h"

// iarg layout of a matmul node
enum { MM_TRANS_A, MM_TRANS_B, MM_SHARED_B, MM_BATCH, MM_M, MM_N, MM_K };

static int shape_error(Ctx *c, const char *op, const char *what, const Tensor *a, const Tensor *b) {
    char sa[96], sb[96];
    return err_set(&c->err, ERR_SHAPE, "%s: %s: shapes %s and %s", op, what, tensor_shape_str(a, sa, sizeof sa),
                   tensor_shape_str(b, sb, sizeof sb));
}

/* C_i = op(A_i) op(B_i) for every batch entry i; A_i is (M,K) or (K,M), B_i (K,N) or (N,K).
   A shared B (2-D) with untransposed A is one GEMM over the stacked rows of all A_i. */
static void matmul_forward(float *C, const float *A, const float *B, int batch, int M, int N, int K, int ta,
                           int tb, int shared_b) {
    int lda = ta ? M : K, ldb = tb ? K : N;
    if (shared_b && !ta) {
        gemm_rm(0, tb, batch * M, N, K, 1.0f, A, lda, B, ldb, 0.0f, C, N);
        return;
    }
    size_t sa = (size_t)M * K, sb = shared_b ? 0 : (size_t)K * N, sc = (size_t)M * N;
    for (int i = 0; i < batch; i++)
        gemm_rm(ta, tb, M, N, K, 1.0f, A + i * sa, lda, B + i * sb, ldb, 0.0f, C + i * sc, N);
}

static void matmul_backward(Ctx *c, TapeNode *nd) {
    Tensor *a = nd->in[0], *b = nd->in[1];
    int ta = nd->iarg[MM_TRANS_A], tb = nd->iarg[MM_TRANS_B], shared_b = nd->iarg[MM_SHARED_B];
    int batch = nd->iarg[MM_BATCH], M = nd->iarg[MM_M], N = nd->iarg[MM_N], K = nd->iarg[MM_K];
    int lda = ta ? M : K, ldb = tb ? K : N;
    const float *dC = nd->out->grad;
    float *dA = a->requires_grad ? tensor_grad(c, a) : NULL;
    float *dB = b->requires_grad ? tensor_grad(c, b) : NULL;
    if ((a->requires_grad && !dA) || (b->requires_grad && !dB)) return;
    size_t sa = (size_t)M * K, sb = shared_b ? 0 : (size_t)K * N, sc = (size_t)M * N;
    // stacked rows: a shared B with untransposed A behaves as one (batch*M, K) matrix
    int stacked = shared_b && !ta;
    int nb = stacked ? 1 : batch, Mb = stacked ? batch * M : M;
    if (dA) {
        for (int i = 0; i < nb; i++) {
            if (!ta)  // dA (M,K) += dC op(B)^T
                gemm_rm(0, !tb, Mb, K, N, 1.0f, dC + i * sc, N, b->data + i * sb, ldb, 1.0f, dA + i * sa, lda);
            else      // dA (K,M) += op(B) dC^T
                gemm_rm(tb, 1, K, M, N, 1.0f, b->data + i * sb, ldb, dC + i * sc, N, 1.0f, dA + i * sa, lda);
        }
    }
    if (dB) {
        // a shared B sums the contributions of all batch entries, in batch order
        for (int i = 0; i < nb; i++) {
            if (!tb)  // dB (K,N) += op(A)^T dC
                gemm_rm(!ta, 0, K, N, Mb, 1.0f, a->data + i * sa, lda, dC + i * sc, N, 1.0f, dB + i * sb, ldb);
            else      // dB (N,K) += dC^T op(A)
                gemm_rm(1, ta, N, K, Mb, 1.0f, dC + i * sc, N, a->data + i * sa, lda, 1.0f, dB + i * sb, ldb);
        }
    }
}

static Tensor *matmul_op(Ctx *c, Tensor *a, Tensor *b, int trans_a, int trans_b) {
    if (!a || !b) return NULL;
    if (a->ndim < 2 || b->ndim < 2) {
        shape_error(c, "matmul", "both operands need at least 2 dims", a, b);
        return NULL;
    }
    int shared_b = b->ndim == 2 && a->ndim > 2;
    if (!shared_b) {
        int same = a->ndim == b->ndim;
        for (int i = 0; same && i < a->ndim - 2; i++) same = a->shape[i] == b->shape[i];
        if (!same) {
            shape_error(c, "matmul", "leading (batch) dims differ and b is not 2-D", a, b);
            return NULL;
        }
    }
    int ar = a->shape[a->ndim - 2], ac = a->shape[a->ndim - 1];
    int br = b->shape[b->ndim - 2], bc = b->shape[b->ndim - 1];
    int M = trans_a ? ac : ar, K = trans_a ? ar : ac;
    int Kb = trans_b ? bc : br, N = trans_b ? br : bc;
    if (K != Kb) {
        shape_error(c, "matmul", trans_a || trans_b ? "inner dims differ (after transposes)" : "inner dims differ",
                    a, b);
        return NULL;
    }
    size_t batch_sz = 1;
    for (int i = 0; i < a->ndim - 2; i++) batch_sz *= (size_t)a->shape[i];
    if (batch_sz * (size_t)(M > 0 ? M : 1) > INT_MAX) {  // cblas takes int dimensions
        shape_error(c, "matmul", "more than INT_MAX rows", a, b);
        return NULL;
    }
    int batch = (int)batch_sz;
    int shape[TENSOR_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[a->ndim - 2] = M;
    shape[a->ndim - 1] = N;
    Tensor *out = tensor_new(c, a->ndim, shape);
    if (!out) return NULL;
    matmul_forward(out->data, a->data, b->data, batch, M, N, K, trans_a, trans_b, shared_b);
    Tensor *in[2] = {a, b};
    TapeNode *nd = tape_record(c, OP_MATMUL, matmul_backward, out, in, 2);
    if (nd) {
        nd->iarg[MM_TRANS_A] = trans_a != 0;
        nd->iarg[MM_TRANS_B] = trans_b != 0;
        nd->iarg[MM_SHARED_B] = shared_b;
        nd->iarg[MM_BATCH] = batch;
        nd->iarg[MM_M] = M;
        nd->iarg[MM_N] = N;
        nd->iarg[MM_K] = K;
    }
    return out;
}

/* ---- linear ---------------------------------------------------------------------- */

// x (rows, in), w (out, in), b (out) -> y (rows, out); iarg[0] = rows. Each GEMM runs only
// when its input needs a gradient.
static void linear_backward(Ctx *c, TapeNode *nd) {
    Tensor *x = nd->in[0], *w = nd->in[1], *b = nd->in[2];
    int nin = w->shape[1], nout = w->shape[0], rows = nd->iarg[0];
    const float *dy = nd->out->grad;
    float *dx = x->requires_grad ? tensor_grad(c, x) : NULL;
    float *dw = w->requires_grad ? tensor_grad(c, w) : NULL;
    float *db = b && b->requires_grad ? tensor_grad(c, b) : NULL;
    if ((x->requires_grad && !dx) || (w->requires_grad && !dw) || (b && b->requires_grad && !db)) return;
    if (dx)  // dx (rows, in) += dy (rows, out) w (out, in)
        gemm_rm(0, 0, rows, nin, nout, 1.0f, dy, nout, w->data, nin, 1.0f, dx, nin);
    if (dw)  // dw (out, in) += dy^T x: all rows in one GEMM
        gemm_rm(1, 0, nout, nin, rows, 1.0f, dy, nout, x->data, nin, 1.0f, dw, nin);
    if (db) gemm_colsum_add(db, dy, (size_t)rows, nout);
}

static Tensor *linear_op(Ctx *c, Tensor *x, Tensor *w, Tensor *b) {
    if (!x || !w) return NULL;
    if (w->ndim != 2 || x->ndim < 1 || x->shape[x->ndim - 1] != w->shape[1]) {
        shape_error(c, "linear", "x (..., in) and w (out, in) expected", x, w);
        return NULL;
    }
    int nin = w->shape[1], nout = w->shape[0];
    if (b && (b->ndim != 1 || b->shape[0] != nout)) {
        shape_error(c, "linear", "bias must be (out) for w", b, w);
        return NULL;
    }
    size_t rows_sz = 1;
    for (int i = 0; i < x->ndim - 1; i++) rows_sz *= (size_t)x->shape[i];
    if (rows_sz > INT_MAX) {  // cblas takes int dimensions
        shape_error(c, "linear", "more than INT_MAX rows", x, w);
        return NULL;
    }
    int rows = (int)rows_sz;
    int shape[TENSOR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = nout;
    Tensor *y = tensor_new(c, x->ndim, shape);
    if (!y) return NULL;
    if (b) {
        // y starts as the bias rows; the GEMM then adds x w^T (beta = 1)
        PAR_FOR(schedule(static), (size_t)rows * nout >= GEMM_OMP_MIN_WORK,
        for (int r = 0; r < rows; r++) memcpy(y->data + (size_t)r * nout, b->data, (size_t)nout * sizeof(float)););
    }
    gemm_rm(0, 1, rows, nout, nin, 1.0f, x->data, nin, w->data, nin, b ? 1.0f : 0.0f, y->data, nout);
    Tensor *in[3] = {x, w, b};
    TapeNode *nd = tape_record(c, OP_LINEAR, linear_backward, y, in, 3);
    if (nd) nd->iarg[0] = rows;
    return y;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_matmul(Ctx *c, Tensor *a, Tensor *b, int trans_a, int trans_b) {
    PROF_OP(c, OP_MATMUL, matmul_op(c, a, b, trans_a, trans_b),
            out ? 2.0 * (double)out->n * (double)(trans_a ? a->shape[a->ndim - 2] : a->shape[a->ndim - 1]) : 0.0);
}

Tensor *t_linear(Ctx *c, Tensor *x, Tensor *w, Tensor *b) {
    PROF_OP(c, OP_LINEAR, linear_op(c, x, w, b), out ? 2.0 * (double)out->n * (double)w->shape[w->ndim - 1] : 0.0);
}
