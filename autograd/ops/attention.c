/* attention.c: fused scaled dot-product attention (t_attention) and its two kernel paths
   (gemm_attention.h describes layouts and when each path runs).
   Forward per head: S = q k^T scale, P = softmax(S) by rows, out = P v.
   Backward from dO, with P saved: dv += P^T dO; dP = dO v^T; dS = P (dP - rowsum(dP P));
   dq += dS k scale; dk += dS^T q scale. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "autograd/ops.h"
#include "autograd/ops/gemm_attention.h"
#include "autograd/ops/gemm_util.h"

// Per-head work (Tq Tk max(d, dv) multiply-adds) below which the loops path wins: at
// this size an sgemm call costs about as much in set-up as in arithmetic (bench/ops).
#define ATTN_LOOPS_MAX_WORK ((size_t)64 * 64 * 64)

int attention_use_loops(const AttnGeom *g) {
    size_t dm = (size_t)(g->d > g->dv ? g->d : g->dv);
    return (size_t)g->Tq * g->Tk * dm <= ATTN_LOOPS_MAX_WORK;
}

size_t attention_scratch_floats(const AttnGeom *g, int loops, int nthreads) {
    size_t dm = (size_t)(g->d > g->dv ? g->d : g->dv);
    if (loops) return (size_t)nthreads * (dm + 1) * g->Tk;
    return (size_t)g->Tq * g->Tk;
}

/* s[0..n) <- softmax(s * scale). The row max is subtracted before exp so no exp
   overflows; the sum is taken in double. */
static void softmax_row(float *s, int n, float scale) {
    float m = -INFINITY;
    for (int j = 0; j < n; j++) {
        s[j] *= scale;
        if (s[j] > m) m = s[j];
    }
    double sum = 0;
    for (int j = 0; j < n; j++) {
        s[j] = expf(s[j] - m);
        sum += s[j];
    }
    float inv = (float)(1.0 / sum);
    for (int j = 0; j < n; j++) s[j] *= inv;
}

/* dS = P (dP - sum_j dP_j P_j) for one row, in place over dp. */
static void softmax_row_backward(float *dp, const float *p, int n) {
    double dot = 0;
    for (int j = 0; j < n; j++) dot += (double)dp[j] * p[j];
    float fdot = (float)dot;
    for (int j = 0; j < n; j++) dp[j] = p[j] * (dp[j] - fdot);
}

/* ---- blas path --------------------------------------------------------------------- */

void attention_forward_blas(float *out, float *P, const float *q, const float *k, const float *v,
                            const AttnGeom *g) {
    int ldq = g->H * g->d, ldv = g->H * g->dv;
    size_t tt = (size_t)g->Tq * g->Tk;
    // S for every head first, then all softmax rows in one parallel loop, then P v:
    // OpenMP and OpenBLAS threads take turns three times, not three times per head.
    for (int b = 0; b < g->B; b++) {
        for (int h = 0; h < g->H; h++) {
            const float *qh = q + (size_t)b * g->Tq * ldq + (size_t)h * g->d;
            const float *kh = k + (size_t)b * g->Tk * ldq + (size_t)h * g->d;
            float *Pbh = P + ((size_t)b * g->H + h) * tt;
            gemm_rm(0, 1, g->Tq, g->Tk, g->d, 1.0f, qh, ldq, kh, ldq, 0.0f, Pbh, g->Tk);
        }
    }
    size_t rows = (size_t)g->B * g->H * g->Tq;
#pragma omp parallel for schedule(static)
    for (size_t r = 0; r < rows; r++) softmax_row(P + r * g->Tk, g->Tk, g->scale);
    for (int b = 0; b < g->B; b++) {
        for (int h = 0; h < g->H; h++) {
            const float *vh = v + (size_t)b * g->Tk * ldv + (size_t)h * g->dv;
            const float *Pbh = P + ((size_t)b * g->H + h) * tt;
            float *oh = out + (size_t)b * g->Tq * ldv + (size_t)h * g->dv;
            gemm_rm(0, 0, g->Tq, g->dv, g->Tk, 1.0f, Pbh, g->Tk, vh, ldv, 0.0f, oh, ldv);
        }
    }
}

void attention_backward_blas(float *dq, float *dk, float *dv, const float *dout, const float *P, const float *q,
                             const float *k, const float *v, const AttnGeom *g, float *scratch) {
    int ldq = g->H * g->d, ldv = g->H * g->dv, Tq = g->Tq, Tk = g->Tk;
    size_t tt = (size_t)Tq * Tk;
    float *dS = scratch;  // (Tq, Tk), one head at a time
    for (int b = 0; b < g->B; b++) {
        for (int h = 0; h < g->H; h++) {
            size_t qo = (size_t)b * Tq * ldq + (size_t)h * g->d, ko = (size_t)b * Tk * ldq + (size_t)h * g->d;
            size_t oo = (size_t)b * Tq * ldv + (size_t)h * g->dv, vo = (size_t)b * Tk * ldv + (size_t)h * g->dv;
            const float *Pbh = P + ((size_t)b * g->H + h) * tt;
            if (dv)  // dv (Tk, dv) += P^T dO
                gemm_rm(1, 0, Tk, g->dv, Tq, 1.0f, Pbh, Tk, dout + oo, ldv, 1.0f, dv + vo, ldv);
            if (!dq && !dk) continue;
            gemm_rm(0, 1, Tq, Tk, g->dv, 1.0f, dout + oo, ldv, v + vo, ldv, 0.0f, dS, Tk);  // dP = dO v^T
#pragma omp parallel for schedule(static) if (tt >= 8192)
            for (int i = 0; i < Tq; i++) softmax_row_backward(dS + (size_t)i * Tk, Pbh + (size_t)i * Tk, Tk);
            if (dq)  // dq (Tq, d) += scale dS k
                gemm_rm(0, 0, Tq, g->d, Tk, g->scale, dS, Tk, k + ko, ldq, 1.0f, dq + qo, ldq);
            if (dk)  // dk (Tk, d) += scale dS^T q
                gemm_rm(1, 0, Tk, g->d, Tq, g->scale, dS, Tk, q + qo, ldq, 1.0f, dk + ko, ldq);
        }
    }
}

/* ---- loops path -------------------------------------------------------------------- */

/* dst (n, rows) = src^T for src rows of n floats at stride ld: a head's k or v slice
   transposed, so the inner loops below run over Tk with unit stride. */
static void transpose_head(float *dst, const float *src, int rows, int n, int ld) {
    for (int j = 0; j < rows; j++)
        for (int c = 0; c < n; c++) dst[(size_t)c * rows + j] = src[(size_t)j * ld + c];
}

void attention_forward_loops(float *out, float *P, const float *q, const float *k, const float *v,
                             const AttnGeom *g, float *scratch, int nthreads) {
    int ldq = g->H * g->d, ldv = g->H * g->dv, Tq = g->Tq, Tk = g->Tk, d = g->d, dvn = g->dv;
    size_t per_thread = attention_scratch_floats(g, 1, 1), tt = (size_t)Tq * Tk;
    int heads = g->B * g->H;
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int bh = 0; bh < heads; bh++) {
        int b = bh / g->H, h = bh % g->H;
        float *kt = scratch + (size_t)omp_get_thread_num() * per_thread;  // (d, Tk)
        const float *qh = q + (size_t)b * Tq * ldq + (size_t)h * d;
        const float *vh = v + (size_t)b * Tk * ldv + (size_t)h * dvn;
        transpose_head(kt, k + (size_t)b * Tk * ldq + (size_t)h * d, Tk, d, ldq);
        for (int i = 0; i < Tq; i++) {
            float *s = P + (size_t)bh * tt + (size_t)i * Tk;
            const float *qi = qh + (size_t)i * ldq;
            memset(s, 0, (size_t)Tk * sizeof(float));
            for (int c = 0; c < d; c++) {
                float a = qi[c];
                const float *kc = kt + (size_t)c * Tk;
                for (int j = 0; j < Tk; j++) s[j] += a * kc[j];
            }
            softmax_row(s, Tk, g->scale);
            float *o = out + ((size_t)b * Tq + i) * ldv + (size_t)h * dvn;
            memset(o, 0, (size_t)dvn * sizeof(float));
            for (int j = 0; j < Tk; j++) {
                float p = s[j];
                const float *vj = vh + (size_t)j * ldv;
                for (int c = 0; c < dvn; c++) o[c] += p * vj[c];
            }
        }
    }
}

void attention_backward_loops(float *dq, float *dk, float *dv, const float *dout, const float *P, const float *q,
                              const float *k, const float *v, const AttnGeom *g, float *scratch, int nthreads) {
    int ldq = g->H * g->d, ldv = g->H * g->dv, Tq = g->Tq, Tk = g->Tk, d = g->d, dvn = g->dv;
    size_t per_thread = attention_scratch_floats(g, 1, 1), tt = (size_t)Tq * Tk;
    int heads = g->B * g->H;
    float scale = g->scale;
    // each (b, h) owns its slices of dq, dk, dv: threads never add into the same element
#pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int bh = 0; bh < heads; bh++) {
        int b = bh / g->H, h = bh % g->H;
        float *vt = scratch + (size_t)omp_get_thread_num() * per_thread;  // (dv, Tk)
        float *ds = vt + (size_t)dvn * Tk;                                 // (Tk)
        size_t qo = (size_t)b * Tq * ldq + (size_t)h * d, ko = (size_t)b * Tk * ldq + (size_t)h * d;
        size_t oo = (size_t)b * Tq * ldv + (size_t)h * dvn, vo = (size_t)b * Tk * ldv + (size_t)h * dvn;
        if (dq || dk) transpose_head(vt, v + vo, Tk, dvn, ldv);
        for (int i = 0; i < Tq; i++) {
            const float *p = P + (size_t)bh * tt + (size_t)i * Tk;
            const float *doi = dout + oo + (size_t)i * ldv;
            if (dv) {
                for (int j = 0; j < Tk; j++) {
                    float pj = p[j];
                    float *dvj = dv + vo + (size_t)j * ldv;
                    for (int c = 0; c < dvn; c++) dvj[c] += pj * doi[c];
                }
            }
            if (!dq && !dk) continue;
            memset(ds, 0, (size_t)Tk * sizeof(float));
            for (int c = 0; c < dvn; c++) {  // dP_i = dO_i v^T
                float a = doi[c];
                const float *vc = vt + (size_t)c * Tk;
                for (int j = 0; j < Tk; j++) ds[j] += a * vc[j];
            }
            softmax_row_backward(ds, p, Tk);
            if (dq) {
                float *dqi = dq + qo + (size_t)i * ldq;
                for (int j = 0; j < Tk; j++) {
                    float a = scale * ds[j];
                    const float *kj = k + ko + (size_t)j * ldq;
                    for (int c = 0; c < d; c++) dqi[c] += a * kj[c];
                }
            }
            if (dk) {
                const float *qi = q + qo + (size_t)i * ldq;
                for (int j = 0; j < Tk; j++) {
                    float a = scale * ds[j];
                    float *dkj = dk + ko + (size_t)j * ldq;
                    for (int c = 0; c < d; c++) dkj[c] += a * qi[c];
                }
            }
        }
    }
}

/* ---- the op ------------------------------------------------------------------------ */

// iarg: heads, loops path; farg: scale; saved: P
static void attention_backward(Ctx *c, TapeNode *nd) {
    Tensor *q = nd->in[0], *k = nd->in[1], *v = nd->in[2];
    int H = nd->iarg[0], loops = nd->iarg[1];
    AttnGeom g = {q->shape[0], H, q->shape[1], k->shape[1], q->shape[2] / H, v->shape[2] / H, nd->farg[0]};
    float *dq = q->requires_grad ? tensor_grad(c, q) : NULL;
    float *dk = k->requires_grad ? tensor_grad(c, k) : NULL;
    float *dv = v->requires_grad ? tensor_grad(c, v) : NULL;
    if ((q->requires_grad && !dq) || (k->requires_grad && !dk) || (v->requires_grad && !dv)) return;
    int nthreads = omp_get_max_threads();
    size_t mark = arena_mark(&c->arena);
    float *scratch = ctx_alloc(c, attention_scratch_floats(&g, loops, nthreads) * sizeof(float) + sizeof(float));
    if (!scratch) return;
    if (loops)
        attention_backward_loops(dq, dk, dv, nd->out->grad, nd->saved, q->data, k->data, v->data, &g, scratch,
                                 nthreads);
    else
        attention_backward_blas(dq, dk, dv, nd->out->grad, nd->saved, q->data, k->data, v->data, &g, scratch);
    arena_release(&c->arena, mark);
}

Tensor *t_attention(Ctx *c, Tensor *q, Tensor *k, Tensor *v, int heads, float scale) {
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
    // P is the saved value when recording; otherwise it is scratch, released with the rest
    size_t mark = arena_mark(&c->arena);
    float *P = out ? ctx_alloc(c, (size_t)g.B * g.H * g.Tq * g.Tk * sizeof(float)) : NULL;
    if (!P) return NULL;
    size_t mark_scratch = arena_mark(&c->arena);
    int loops = attention_use_loops(&g);
    if (loops) {
        int nthreads = omp_get_max_threads();
        float *scratch = ctx_alloc(c, attention_scratch_floats(&g, 1, nthreads) * sizeof(float) + sizeof(float));
        if (!scratch) return NULL;
        attention_forward_loops(out->data, P, q->data, k->data, v->data, &g, scratch, nthreads);
    } else {
        attention_forward_blas(out->data, P, q->data, k->data, v->data, &g);
    }
    arena_release(&c->arena, record ? mark_scratch : mark);
    if (!record) return out;
    TapeNode *nd = tape_record(c, OP_ATTENTION, attention_backward, out, in, 3);
    if (!nd) return NULL;
    nd->iarg[0] = heads;
    nd->iarg[1] = loops;
    nd->farg[0] = g.scale;
    nd->saved = P;
    return out;
}
