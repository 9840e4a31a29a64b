/* attention.c: fused scaled dot-product attention (t_attention).

   Layouts ('b n (h d)', CompVis CrossAttention after its rearrange): q (B, Tq, H d),
   k (B, Tk, H d), v (B, Tk, H dv), out (B, Tq, H dv); head h of a row is the slice
   [h d, (h+1) d). Every per-head product is one gemm_rm whose leading dimension (H d or
   H dv) steps over the other heads, so heads are used in place, never permuted; the heads
   run in parallel (each writes its own slice), each GEMM's tiles in order.
   P (B, H, Tq, Tk), the softmax probabilities, is the only value kept for backward.

   Forward per head: S = q k^T scale, P = softmax(S) by rows, out = P v.
   Backward from dO: dv += P^T dO; dP = dO v^T; dS = P (dP - rowsum(dP P));
   dq += dS k scale; dk += dS^T q scale.

   A second path, OpenMP over (b, h) with plain loops instead of many small sgemm calls,
   was written and measured (docs/PERFORMANCE.md): it was 2-4x slower at every shape
   tried, down to 16x16 heads with d = 8 and single-token cross-attention, since
   OpenBLAS's AVX-512 kernels beat the compiler's SSE2 loops even there; it was removed. */
#include <math.h>
#include <stdint.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/profile.h"
#include "autograd/ops/fastmath.h"
#include "autograd/ops/gemm_util.h"
#include "util/par.h"

typedef struct {
    int B, H, Tq, Tk, d, dv;
    float scale;  // > 0
} AttnGeom;

#define SOFTMAX_LANES 16  // fixed partial sums, so the double sums vectorize


/* s[0..n) <- softmax(s * scale). The row max is subtracted before exp so no exp
   overflows; the sum is taken in double over SOFTMAX_LANES partial sums in a fixed order
   (a max needs no fixed order, so its loop is left to omp simd). */
FASTMATH_CLONES static void softmax_row(float *s, int n, float scale) {
    float m = -INFINITY;
#pragma omp simd reduction(max : m)
    for (int j = 0; j < n; j++) {
        float v = s[j] * scale;
        s[j] = v;
        m = v > m ? v : m;
    }
#pragma omp simd
    for (int j = 0; j < n; j++) s[j] = exp_nonpos(s[j] - m);
    double acc[SOFTMAX_LANES] = {0};
    int j = 0;
    for (; j + SOFTMAX_LANES <= n; j += SOFTMAX_LANES)
        for (int l = 0; l < SOFTMAX_LANES; l++) acc[l] += s[j + l];
    for (; j < n; j++) acc[0] += s[j];
    double sum = 0;
    for (int l = 0; l < SOFTMAX_LANES; l++) sum += acc[l];
    float inv = (float)(1.0 / sum);
    for (j = 0; j < n; j++) s[j] *= inv;
}

/* dS = P (dP - sum_j dP_j P_j) for one row, in place over dp; the sum in double over
   SOFTMAX_LANES partial sums. */
FASTMATH_CLONES static void softmax_row_backward(float *dp, const float *p, int n) {
    double acc[SOFTMAX_LANES] = {0};
    int j = 0;
    for (; j + SOFTMAX_LANES <= n; j += SOFTMAX_LANES)
        for (int l = 0; l < SOFTMAX_LANES; l++) acc[l] += (double)dp[j + l] * p[j + l];
    for (; j < n; j++) acc[0] += (double)dp[j] * p[j];
    double dot = 0;
    for (int l = 0; l < SOFTMAX_LANES; l++) dot += acc[l];
    float fdot = (float)dot;
    for (j = 0; j < n; j++) dp[j] = p[j] * (dp[j] - fdot);
}

/* out (B, Tq, H dv) and P (B, H, Tq, Tk) from q, k, v. */
static void attention_forward(float *out, float *P, const float *q, const float *k, const float *v,
                              const AttnGeom *g) {
    int ldq = g->H * g->d, ldv = g->H * g->dv;
    size_t tt = (size_t)g->Tq * g->Tk;
    // S for every head first, then all softmax rows in one parallel loop, then P v
    int heads = g->B * g->H;
    PAR_FOR(schedule(static), heads > 1,
    for (int bh = 0; bh < heads; bh++) {
        int b = bh / g->H, h = bh % g->H;
        const float *qh = q + (size_t)b * g->Tq * ldq + (size_t)h * g->d;
        const float *kh = k + (size_t)b * g->Tk * ldq + (size_t)h * g->d;
        gemm_rm(0, 1, g->Tq, g->Tk, g->d, 1.0f, qh, ldq, kh, ldq, 0.0f, P + (size_t)bh * tt, g->Tk);
    });
    size_t rows = (size_t)g->B * g->H * g->Tq;
    PAR_FOR(schedule(static), rows * g->Tk >= GEMM_OMP_MIN_WORK,
    for (size_t r = 0; r < rows; r++) softmax_row(P + r * g->Tk, g->Tk, g->scale););
    PAR_FOR(schedule(static), heads > 1,
    for (int bh = 0; bh < heads; bh++) {
        int b = bh / g->H, h = bh % g->H;
        const float *vh = v + (size_t)b * g->Tk * ldv + (size_t)h * g->dv;
        float *oh = out + (size_t)b * g->Tq * ldv + (size_t)h * g->dv;
        gemm_rm(0, 0, g->Tq, g->dv, g->Tk, 1.0f, P + (size_t)bh * tt, g->Tk, vh, ldv, 0.0f, oh, ldv);
    });
}

// Heads whose dS (Tq, Tk) one backward chunk computes before the dq, dk GEMMs (at least
// one): as many as fit in 8 MiB, so softmax backward runs as one parallel loop per chunk
// instead of one per head (each OpenMP/OpenBLAS hand-over costs time).
#define ATTN_DS_BUDGET ((size_t)8 << 20)

// Heads per backward chunk, and so the scratch of attention_backward: chunk Tq Tk floats.
static int attention_backward_chunk(const AttnGeom *g) {
    size_t per = (size_t)g->Tq * g->Tk * sizeof(float), heads = (size_t)g->B * g->H;
    size_t n = per ? ATTN_DS_BUDGET / per : heads;
    return n < 1 ? 1 : n > heads ? (int)heads : (int)n;
}

/* Adds into dq, dk, dv (each NULL when not needed) from dout (B, Tq, H dv) and P;
   scratch holds attention_backward_chunk(g) Tq Tk floats. */
static void attention_backward(float *dq, float *dk, float *dv, const float *dout, const float *P, const float *q,
                               const float *k, const float *v, const AttnGeom *g, float *scratch) {
    int ldq = g->H * g->d, ldv = g->H * g->dv, Tq = g->Tq, Tk = g->Tk;
    size_t tt = (size_t)Tq * Tk;
    int heads = g->B * g->H, chunk = attention_backward_chunk(g);
    PAR_FOR(schedule(static), heads > 1 && dv,
    for (int bh = 0; bh < heads; bh++) {  // dv (Tk, dv) += P^T dO
        int b = bh / g->H, h = bh % g->H;
        size_t oo = (size_t)b * Tq * ldv + (size_t)h * g->dv, vo = (size_t)b * Tk * ldv + (size_t)h * g->dv;
        if (dv) gemm_rm(1, 0, Tk, g->dv, Tq, 1.0f, P + bh * tt, Tk, dout + oo, ldv, 1.0f, dv + vo, ldv);
    });
    if (!dq && !dk) return;
    for (int h0 = 0; h0 < heads; h0 += chunk) {
        int nh = heads - h0 < chunk ? heads - h0 : chunk;
        PAR_FOR(schedule(static), nh > 1,
        for (int i = 0; i < nh; i++) {  // dP = dO v^T into scratch
            int b = (h0 + i) / g->H, h = (h0 + i) % g->H;
            size_t oo = (size_t)b * Tq * ldv + (size_t)h * g->dv, vo = (size_t)b * Tk * ldv + (size_t)h * g->dv;
            gemm_rm(0, 1, Tq, Tk, g->dv, 1.0f, dout + oo, ldv, v + vo, ldv, 0.0f, scratch + i * tt, Tk);
        });
        size_t rows = (size_t)nh * Tq;
        const float *Pc = P + h0 * tt;
        PAR_FOR(schedule(static), rows * Tk >= GEMM_OMP_MIN_WORK,
        for (size_t r = 0; r < rows; r++) softmax_row_backward(scratch + r * Tk, Pc + r * Tk, Tk););
        PAR_FOR(schedule(static), nh > 1,
        for (int i = 0; i < nh; i++) {
            int b = (h0 + i) / g->H, h = (h0 + i) % g->H;
            size_t qo = (size_t)b * Tq * ldq + (size_t)h * g->d, ko = (size_t)b * Tk * ldq + (size_t)h * g->d;
            const float *dS = scratch + i * tt;
            if (dq)  // dq (Tq, d) += scale dS k
                gemm_rm(0, 0, Tq, g->d, Tk, g->scale, dS, Tk, k + ko, ldq, 1.0f, dq + qo, ldq);
            if (dk)  // dk (Tk, d) += scale dS^T q
                gemm_rm(1, 0, Tk, g->d, Tq, g->scale, dS, Tk, q + qo, ldq, 1.0f, dk + ko, ldq);
        });
    }
}

/* ---- the op ------------------------------------------------------------------------ */

// iarg[0]: heads; farg[0]: scale; saved: P
static void attention_backward_node(Ctx *c, TapeNode *nd) {
    Tensor *q = nd->in[0], *k = nd->in[1], *v = nd->in[2];
    int H = nd->iarg[0];
    AttnGeom g = {q->shape[0], H, q->shape[1], k->shape[1], q->shape[2] / H, v->shape[2] / H, nd->farg[0]};
    float *dq = q->requires_grad ? tensor_grad(c, q) : NULL;
    float *dk = k->requires_grad ? tensor_grad(c, k) : NULL;
    float *dv = v->requires_grad ? tensor_grad(c, v) : NULL;
    if ((q->requires_grad && !dq) || (k->requires_grad && !dk) || (v->requires_grad && !dv)) return;
    size_t mark = arena_mark(&c->arena);
    float *scratch = ctx_alloc(c, (size_t)attention_backward_chunk(&g) * g.Tq * g.Tk * sizeof(float));
    if (!scratch) return;
    attention_backward(dq, dk, dv, nd->out->grad, nd->saved, q->data, k->data, v->data, &g, scratch);
    arena_release(&c->arena, mark);
}

static Tensor *attention_op(Ctx *c, Tensor *q, Tensor *k, Tensor *v, int heads, float scale) {
    if (!q || !k || !v) return NULL;
    char sq[96], sk[96], sv[96];
    int ok = q->ndim == 3 && k->ndim == 3 && v->ndim == 3 && heads >= 1 && q->shape[0] == k->shape[0] &&
             q->shape[0] == v->shape[0] && k->shape[1] == v->shape[1] && q->shape[2] == k->shape[2] &&
             q->shape[2] % heads == 0 && v->shape[2] % heads == 0 && k->shape[1] >= 1;
    if (!ok) {
        err_set(&c->err, ERR_SHAPE,
                "attention: q %s, k %s, v %s with %d heads: expected (B, Tq, H d), (B, Tk, H d), (B, Tk, H dv), "
                "Tk >= 1", tensor_shape_str(q, sq, sizeof sq), tensor_shape_str(k, sk, sizeof sk),
                tensor_shape_str(v, sv, sizeof sv), heads);
        return NULL;
    }
    AttnGeom g = {q->shape[0], heads, q->shape[1], k->shape[1], q->shape[2] / heads, v->shape[2] / heads, scale};
    if (g.scale <= 0) g.scale = g.d > 0 ? (float)(1.0 / sqrt((double)g.d)) : 1.0f;
    Tensor *out = tensor_new3(c, g.B, g.Tq, heads * g.dv);
    Tensor *in[3] = {q, k, v};
    int record = tape_needs_grad(c, in, 3);
    // P is the saved value when recording; otherwise scratch, released before returning
    size_t mark = arena_mark(&c->arena);
    float *P = out ? ctx_alloc(c, (size_t)g.B * g.H * g.Tq * g.Tk * sizeof(float)) : NULL;
    if (!P) return NULL;
    attention_forward(out->data, P, q->data, k->data, v->data, &g);
    if (!record) {
        arena_release(&c->arena, mark);
        return out;
    }
    TapeNode *nd = tape_record(c, OP_ATTENTION, attention_backward_node, out, in, 3);
    if (!nd) return NULL;
    nd->iarg[0] = heads;
    nd->farg[0] = g.scale;
    nd->saved = P;
    return out;
}

/* ---- public entry points: the op timed by the profiler (autograd/profile.h) ---- */

Tensor *t_attention(Ctx *c, Tensor *q, Tensor *k, Tensor *v, int heads, float scale) {
    PROF_OP(c, OP_ATTENTION, attention_op(c, q, k, v, heads, scale),
            out ? 2.0 * (double)(q->n + out->n) * (double)k->shape[1] : 0.0);
}
