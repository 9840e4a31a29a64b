/* token_quant.h: dynamic per-token activation quantization (run config
   quant.act_granularity: token), as SVDQuant, ViDiT-Q and QuaRot quantize 4-bit activations:
   each token gets its own range, measured at run time, instead of one static range per layer
   and timestep.

   A token is one position's channel vector: row i of a linear layer's input (..., C), pixel
   (n, h, w) of a conv layer's input (N, C, H, W). With L = 2^b - 1 and, per token t,
       lo = min(0, min_c x),  hi = max(0, max_c x),  s = (hi - lo) / L
       Δ_t = α s,  z_t = rint(-lo / s)            (z_t in [0, L]; it does not depend on α)
       q(x) = (clamp(rint(x / Δ_t) + z_t, 0, L) - z_t) · Δ_t
   α is the layer's learned clipping ratio, one per TALSQ entry (the temporal learned step
   of EfficientDM becomes a temporal learned ratio: α = 1 keeps the token's whole range, α < 1
   clips both ends). It is stored where a static layer keeps Δ_a (the activation table's
   delta); the table's zero points are unused (0). A token of zeros (s = 0) quantizes to 0.

   Gradients (the ranges are constants, a stop-gradient on min/max, as LSQ-style dynamic
   quantizers do; "inside" means 0 <= rint(x/Δ_t) + z_t <= L):
       dq/dx = inside
       dq/dα = s · (inside ? rint(x/Δ_t) - x/Δ_t : clamp(u) - z_t)
   Sums over tokens run in double, per token in channel order, then over tokens in order:
   results do not depend on the thread count.

   Calibration: 'max' gives α = 1; 'mse' the best of α = 1 - shrink·i (i < steps: the reference's
   80 / 0.01 search, QKindParams.mse_*) by mean |x - q(x)|^p.

   Layout: x is viewed as (outer, C, inner): a linear input is (rows, C, 1), a conv input
   (N, C, H·W). */
#ifndef EFFDM_TOKEN_QUANT_H
#define EFFDM_TOKEN_QUANT_H

#include <stddef.h>
#include <stdint.h>

#include "autograd/ops.h"
#include "qalora/quantizer.h"

// y = q(x) (y may equal x). Scratch: 2 outer·inner floats, or NULL (then allocated here; the
// op passes arena memory).
void token_quant_fake(float *y, const float *x, size_t outer, size_t C, size_t inner, float alpha, int bits,
                      float *scratch);
// The integer levels of q (the export's integer path): slice o's C·inner levels at q + o·ldq (the
// rest of its ldq bytes 0), level = clamp(rint(x/Δ_t) + z_t, 0, L), so that (level - z_t)·Δ_t is
// token_quant_fake's value bit for bit; and each token's Δ_t, z_t into d, z (outer·inner).
void token_quant_levels(uint8_t *q, size_t ldq, float *d, float *z, const float *x, size_t outer, size_t C,
                        size_t inner, float alpha, int bits);
// The per-token conv's operand (export_int.c int_conv_token) in one pass over x: each level minus
// its token's z_t as s8, 4 channels to a 32-bit word (channel 4j + i in byte i, channels past C
// 0): words (outer, ceil(C / 4), inner); T[o·inner + p] = Σ_c (level - z_t) over token p's
// channels; d, z as token_quant_levels (a NaN's level is 0, as there).
void token_quant_words(uint32_t *w, int32_t *T, float *d, float *z, const float *x, size_t outer, size_t C,
                       size_t inner, float alpha, int bits);
// The gradient of sum(q(x)·dy) in α (returned, double) and, dx != NULL, added into dx.
// Scratch: 3 outer·inner floats and outer·inner doubles, or NULL (allocated here).
double token_quant_backward(float *dx, const float *dy, const float *x, size_t outer, size_t C, size_t inner,
                            float alpha, int bits, void *scratch);
// Bytes of token_quant_backward's scratch.
size_t token_quant_backward_scratch(size_t outer, size_t inner);
// α fitted to x ('max': 1; 'mse': the search above with kp's settings, NULL: the reference's).
// -1 when out of memory.
float token_quant_fit(const float *x, size_t outer, size_t C, size_t inner, int bits, QuantInit how,
                      const QKindParams *kp);
// x's (outer, C, inner) view: planes = 1 for a conv input (N, C, ...), 0 for a linear input
// (..., C). 0, or -1 when x has too few dimensions.
int token_quant_view(const Tensor *x, int planes, size_t *outer, size_t *C, size_t *inner);

// q(x) on the tape (OP_FAKE_QUANT) with α = aq->delta[entry], aq->bits; the backward adds into x
// and into aq->delta's entry when they require a gradient. planes as token_quant_view.
// NULL with c->err set on a bad shape or entry.
Tensor *t_fake_quant_token(Ctx *c, Tensor *x, Quantizer *aq, int entry, int planes);

#endif
