/* gemm_attention.h: the raw-pointer kernels behind t_attention (attention.c), exposed
   so tests can check both paths against a naive reference; models use t_attention.

   Layouts ('b n (h d)', CompVis CrossAttention after its rearrange):
   q (B, Tq, H d), k (B, Tk, H d), v (B, Tk, H dv), out (B, Tq, H dv); head h of row t
   is the slice [h d, (h+1) d) of that row. P (B, H, Tq, Tk) holds the softmax
   probabilities, the only value backward needs besides the inputs.

   Two paths compute the same thing:
   - blas: per (b, h), cblas_sgemm with leading dimension H d addresses the head in
     place (no permute copies); softmax rows threaded with OpenMP between the GEMMs.
   - loops: OpenMP over (b, h), plain loops, per-thread scratch; for small heads
     (T up to ~64) where many tiny sgemm calls cost more than they compute.
   attention_use_loops picks one from the shape only, so results do not depend on
   the machine beyond the thread count.
*/
#ifndef EFFDM_GEMM_ATTENTION_H
#define EFFDM_GEMM_ATTENTION_H

#include <stddef.h>

typedef struct {
    int B, H, Tq, Tk, d, dv;
    float scale;  // > 0
} AttnGeom;

// 1 when the loops path is the faster one for g.
int attention_use_loops(const AttnGeom *g);
// Floats of scratch the backward of a path needs (forward of the loops path: same bound),
// for nthreads OpenMP threads.
size_t attention_scratch_floats(const AttnGeom *g, int loops, int nthreads);

// out = softmax(q k^T scale) v per head; P filled. scratch: attention_scratch_floats(g, 1, nthreads)
// floats for the loops path (the blas path needs none; pass NULL).
void attention_forward_blas(float *out, float *P, const float *q, const float *k, const float *v,
                            const AttnGeom *g);
void attention_forward_loops(float *out, float *P, const float *q, const float *k, const float *v,
                             const AttnGeom *g, float *scratch, int nthreads);
// Adds the gradients into dq, dk, dv (each NULL when not needed) from dout (B, Tq, H dv).
// scratch: attention_scratch_floats(g, loops, nthreads) floats.
void attention_backward_blas(float *dq, float *dk, float *dv, const float *dout, const float *P, const float *q,
                             const float *k, const float *v, const AttnGeom *g, float *scratch);
void attention_backward_loops(float *dq, float *dk, float *dv, const float *dout, const float *P, const float *q,
                              const float *k, const float *v, const AttnGeom *g, float *scratch, int nthreads);

#endif
