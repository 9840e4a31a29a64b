/* ops.h: every differentiable op of the engine. The header is the contract the models
   are written against; one op family per file in autograd/ops/.

   Conventions
   - An op takes the Ctx, its input tensors and parameters, allocates its output from the
     Ctx arena, computes the forward pass, and records a tape node when a gradient is
     needed (tape_record). Its backward adds (+=) into the gradient of every input whose
     requires_grad is set, and skips the others (a frozen weight costs no dW GEMM).
   - If any input is NULL, or the arena is full, an op returns NULL (c->err says why for
     the arena), so a model's forward can check once at the end.
   - Shape mismatches are programming errors of the caller: the op sets c->err
     (ERR_SHAPE, naming the op and both shapes) and returns NULL.
   - Threading: GEMMs go to OpenBLAS (never called inside an OpenMP region); other loops
     are `omp parallel for schedule(static)` over independent outputs; float reductions
     sum fixed chunks in double and add them in order, so results are bit-identical for
     a given thread count.
*/
#ifndef EFFDM_OPS_H
#define EFFDM_OPS_H

#include "autograd/tape.h"

typedef enum {
    OP_MATMUL,
    OP_LINEAR,
    OP_CONV2D,
    OP_ADD,
    OP_SUB,
    OP_MUL,
    OP_SCALE,
    OP_ADD_SCALAR,
    OP_SILU,
    OP_GELU,
    OP_GEGLU,
    OP_RELU,
    OP_SOFTMAX,
    OP_LAYER_NORM,
    OP_GROUP_NORM,
    OP_UPSAMPLE_NEAREST2X,
    OP_AVG_POOL2D,
    OP_MAX_POOL2D,
    OP_PAD2D,
    OP_RESHAPE,
    OP_PERMUTE,
    OP_CONCAT,
    OP_SLICE,
    OP_EMBEDDING,
    OP_TIMESTEP_EMBEDDING,
    OP_SUM,
    OP_MEAN,
    OP_MSE_LOSS,
    OP_ATTENTION,
    OP_FAKE_QUANT,   // reserved for qalora/ (quantizer ops live there, recorded with this kind)
    OP_LORA_WEIGHT,  // reserved for qalora/: W_base + B·A of a trainable layer, before its fake-quant
    OP_ROTATE,       // reserved for qalora/: the block-Hadamard rotation of a layer's input (rotate.h)
    OP_QWEIGHT,      // reserved for qalora/: q_w(W_base + B·A) in one op, rebuilt in backward (qlayer.h)
    OP_COUNT
} OpKind;

// Name of an op kind ("conv2d"), for profiles and messages.
const char *op_name(int op);

/* ---- matmul.c ---------------------------------------------------------------- */
// Batched matrix product: a (..., M, K) [or (..., K, M) if trans_a], b (..., K, N) [or
// (..., N, K) if trans_b] -> (..., M, N). Leading (batch) dims must be equal, or b is 2-D
// and shared by every batch entry.
Tensor *t_matmul(Ctx *c, Tensor *a, Tensor *b, int trans_a, int trans_b);
// y = x w^T + b: x (..., in), w (out, in), b (out) or NULL -> (..., out). As torch.nn.Linear.
Tensor *t_linear(Ctx *c, Tensor *x, Tensor *w, Tensor *b);

/* ---- conv.c ------------------------------------------------------------------ */
// 2-D convolution (cross-correlation, as torch.nn.Conv2d, groups = 1): x (N, Cin, H, W),
// w (Cout, Cin, kh, kw), b (Cout) or NULL -> (N, Cout, Ho, Wo) with
// Ho = (H + 2 pad_h - kh) / stride_h + 1 (same for W).
Tensor *t_conv2d_ex(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride_h, int stride_w, int pad_h, int pad_w);
// t_conv2d_ex with equal strides and paddings in both directions.
Tensor *t_conv2d(Ctx *c, Tensor *x, Tensor *w, Tensor *b, int stride, int pad);

/* ---- elementwise.c (numpy broadcasting: shapes are right-aligned; each dim equal or 1) */
Tensor *t_add(Ctx *c, Tensor *a, Tensor *b);
Tensor *t_sub(Ctx *c, Tensor *a, Tensor *b);
Tensor *t_mul(Ctx *c, Tensor *a, Tensor *b);
// s * x
Tensor *t_scale(Ctx *c, Tensor *x, float s);
// x + s
Tensor *t_add_scalar(Ctx *c, Tensor *x, float s);

/* ---- activation.c ------------------------------------------------------------ */
Tensor *t_silu(Ctx *c, Tensor *x);
// Exact GELU, 0.5 x (1 + erf(x / sqrt 2)), as torch.nn.functional.gelu.
Tensor *t_gelu(Ctx *c, Tensor *x);
Tensor *t_relu(Ctx *c, Tensor *x);
// CompVis GEGLU after its projection: x (..., 2D) -> a * gelu(g) (..., D) where
// a = x[..., :D], g = x[..., D:] (x.chunk(2, dim=-1)).
Tensor *t_geglu(Ctx *c, Tensor *x);

/* ---- softmax.c --------------------------------------------------------------- */
// Softmax over the last dimension.
Tensor *t_softmax(Ctx *c, Tensor *x);

/* ---- norm.c ------------------------------------------------------------------ */
// Layer norm over the last dim: x (..., C), gamma/beta (C) or NULL; biased variance, as torch.
Tensor *t_layer_norm(Ctx *c, Tensor *x, Tensor *gamma, Tensor *beta, float eps);
// Group norm as torch.nn.GroupNorm: x (N, C, *), C % G == 0, stats over (C/G, *),
// biased variance, gamma/beta (C) or NULL.
Tensor *t_group_norm(Ctx *c, Tensor *x, Tensor *gamma, Tensor *beta, int G, float eps);

/* ---- resample.c -------------------------------------------------------------- */
// Nearest-neighbour x2: (N, C, H, W) -> (N, C, 2H, 2W), as F.interpolate(scale_factor=2, mode="nearest").
Tensor *t_upsample_nearest2x(Ctx *c, Tensor *x);
// Average pool as F.avg_pool2d(x, k, stride, pad, ceil_mode=False, count_include_pad).
Tensor *t_avg_pool2d(Ctx *c, Tensor *x, int k, int stride, int pad, int count_include_pad);
// Max pool as F.max_pool2d(x, k, stride, pad) (padding is -inf); gradient to the first max.
Tensor *t_max_pool2d(Ctx *c, Tensor *x, int k, int stride, int pad);
// Constant padding of the last two dims: (N, C, H, W) -> (N, C, H + top + bottom, W + left + right).
Tensor *t_pad2d(Ctx *c, Tensor *x, int left, int right, int top, int bottom, float value);

/* ---- shape.c ----------------------------------------------------------------- */
// Same data, new shape (equal element count; one dim may be -1). No copy: the result
// shares data and gradient buffer with x.
Tensor *t_reshape(Ctx *c, Tensor *x, int ndim, const int *shape);
// Copy with dims reordered: out.shape[i] = x.shape[perm[i]], as torch.permute(...).contiguous().
Tensor *t_permute(Ctx *c, Tensor *x, const int *perm);
// Concatenation of n tensors along dim (all other dims equal).
Tensor *t_concat(Ctx *c, Tensor *const *xs, int n, int dim);
// x narrowed to [start, start + len) along dim (a copy), as torch.narrow.
Tensor *t_slice(Ctx *c, Tensor *x, int dim, int start, int len);

/* ---- embedding.c ------------------------------------------------------------- */
// Rows of w (V, D) picked by idx[0..n) -> (n, D); every idx in [0, V) (checked: ERR_VALUE).
Tensor *t_embedding(Ctx *c, Tensor *w, const int *idx, int n);
// CompVis timestep_embedding (diffusionmodules/util.py, repeat_only=False): t[0..n) -> (n, dim),
// [cos(t f), sin(t f)] with f_i = exp(-ln(max_period) i / half), half = dim / 2, zero
// column appended when dim is odd; computed in float32 in torch's order. No gradient.
Tensor *t_timestep_embedding(Ctx *c, const float *t, int n, int dim, float max_period);

/* ---- reduce.c ---------------------------------------------------------------- */
// Sum / mean of all elements -> shape (1).
Tensor *t_sum(Ctx *c, Tensor *x);
Tensor *t_mean(Ctx *c, Tensor *x);
// Squared error between a and b (same shape): sum or mean (mean != 0) -> shape (1).
// Gradients flow to both inputs (a frozen target gets none).
Tensor *t_mse_loss(Ctx *c, Tensor *a, Tensor *b, int mean);

/* ---- attention.c ------------------------------------------------------------- */
// Fused scaled dot-product attention: q (B, Tq, H*d), k (B, Tk, H*d), v (B, Tk, H*dv) with
// heads packed in the last dim ('b n (h d)') -> (B, Tq, H*dv);
// out_h = softmax(q_h k_h^T * scale) v_h. scale <= 0 means 1/sqrt(d).
// Backward keeps only the softmax probabilities (B*H*Tq*Tk floats), once.
Tensor *t_attention(Ctx *c, Tensor *q, Tensor *k, Tensor *v, int heads, float scale);

#endif
