/* rotate.h: block-Hadamard rotation of a quantized layer's input channels (QuaRot's online
   rotation, the int4 "convrot" path of stable-diffusion.cpp), run config quant.rotate.

   A conv2d / linear y = W x is unchanged when its input channels go through an orthogonal
   map H and its weight through the same map: W x = (W Hᵀ)(H x). With H block diagonal, each
   block the normalised Sylvester Hadamard matrix of size b (a power of two; H = Hᵀ = H⁻¹),
   H x mixes every b consecutive channels, so a channel whose values stand out (a wide range
   that sets the per-tensor 4-bit step of the whole activation) is spread over b channels and
   the step shrinks. The quantizers then see the rotated activation and the rotated weight
   W Hᵀ (each row, per kernel tap, transformed along its input channels):

       out = conv2d / linear(q_a(H x), q_w(W Hᵀ + B·A), bias)

   LoRA, the steps and the export all live in the rotated basis; only H x is computed at run
   time (b log2 b additions per input value, no multiplication but the final 1/√b).

   The block of a layer is the largest power of two that divides its input channels and is at
   most the configured block (rotate_block); below 2 the layer is not rotated.

   Layout. A tensor of n_vec vectors of c channels, each channel a plane of p contiguous floats:
   NCHW activations (n_vec = N, c = C, p = H·W), linear inputs (n_vec = rows, c = in, p = 1), conv
   weights (n_vec = Cout, c = Cin, p = kh·kw), linear weights (n_vec = out, c = in, p = 1). */
#ifndef EFFDM_ROTATE_H
#define EFFDM_ROTATE_H

#include <stddef.h>

#include "autograd/ops.h"

// Largest power of two <= max_block dividing c; 0 when that is below 2 (no rotation).
int rotate_block(int c, int max_block);

// x (n_vec, c, p) <- H x along c, blocks of b channels (b a power of two dividing c), in place.
// Applying it twice gives x back (to float rounding).
void rotate_apply(float *x, size_t n_vec, int c, size_t p, int b);

// H x as an op on the tape: x (N, C, H, W) rotated along dim 1 (conv = 1) or x (..., C) along its
// last dim (conv = 0); its backward is the same rotation of the gradient. b as rotate_apply.
Tensor *t_rotate(Ctx *c, Tensor *x, int conv, int b);

#endif
