/* ae_blocks.c: the building blocks of CompVis ldm/modules/diffusionmodules/model.py
   (a506df5): Normalize + nonlinearity, ResnetBlock (temb None), AttnBlock, Downsample,
   Upsample. Each block ends a ctx scope keeping only its output, so its intermediates are
   freed as soon as it returns (inference: nothing is recorded). */
#include <math.h>

#include "models/autoencoder/ae_impl.h"

// model.py Normalize: GroupNorm(num_groups=32, eps=1e-6, affine=True); nonlinearity: x * sigmoid(x).
Tensor *ae_norm_swish(Ctx *c, AeNorm *n, Tensor *x) {
    return t_silu(c, t_group_norm(c, x, &n->weight, &n->bias, 32, 1e-6f));
}

// model.py ResnetBlock.forward with temb = None; dropout is the identity in eval mode.
Tensor *ae_resblock_forward(Ctx *c, AeResBlock *b, Tensor *x) {
    CtxScope s = ctx_scope_begin(c);
    Tensor *h = layer_forward(c, &b->conv1, ae_norm_swish(c, &b->norm1, x));
    h = layer_forward(c, &b->conv2, ae_norm_swish(c, &b->norm2, h));
    Tensor *skip = b->has_nin_shortcut ? layer_forward(c, &b->nin_shortcut, x) : x;
    return ctx_scope_end(c, s, t_add(c, skip, h));
}

// model.py AttnBlock.forward: q, k, v (B, C, H, W) -> w[b, i, j] = softmax_j(q_i . k_j * C^-0.5),
// h[b, c, i] = sum_j w[b, i, j] v[b, c, j]; out = x + proj_out(h). Positions are pixels (HW).
Tensor *ae_attn_forward(Ctx *c, AeAttn *a, Tensor *x) {
    if (!x) return NULL;
    CtxScope s = ctx_scope_begin(c);
    int B = x->shape[0], C = x->shape[1], H = x->shape[2], W = x->shape[3];
    Tensor *hn = t_group_norm(c, x, &a->norm.weight, &a->norm.bias, 32, 1e-6f);
    const int bchw[3] = {B, C, H * W}, perm[3] = {0, 2, 1};
    // (B, C, HW) -> (B, HW, C): t_attention wants tokens in rows, channels in the last dim
    Tensor *q = t_permute(c, t_reshape(c, layer_forward(c, &a->q, hn), 3, bchw), perm);
    Tensor *k = t_permute(c, t_reshape(c, layer_forward(c, &a->k, hn), 3, bchw), perm);
    Tensor *v = t_permute(c, t_reshape(c, layer_forward(c, &a->v, hn), 3, bchw), perm);
    // upstream: w_ * (int(c) ** (-0.5)), a Python double applied to a float32 tensor
    Tensor *o = t_attention(c, q, k, v, 1, (float)pow((double)C, -0.5));
    o = t_reshape(c, t_permute(c, o, perm), 4, (const int[]){B, C, H, W});
    Tensor *out = t_add(c, x, layer_forward(c, &a->proj_out, o));
    return ctx_scope_end(c, s, out);
}

// model.py Downsample.forward: F.pad(x, (0, 1, 0, 1)) then conv 3x3 stride 2 pad 0, or
// avg_pool2d(2, 2) without conv.
Tensor *ae_downsample_forward(Ctx *c, AeLevel *l, int with_conv, Tensor *x) {
    CtxScope s = ctx_scope_begin(c);
    Tensor *y = with_conv ? layer_forward(c, &l->resample_conv, t_pad2d(c, x, 0, 1, 0, 1, 0.0f))
                          : t_avg_pool2d(c, x, 2, 2, 0, 1);
    return ctx_scope_end(c, s, y);
}

// model.py Upsample.forward: F.interpolate(scale_factor=2.0, mode="nearest") then conv 3x3 pad 1.
Tensor *ae_upsample_forward(Ctx *c, AeLevel *l, int with_conv, Tensor *x) {
    CtxScope s = ctx_scope_begin(c);
    Tensor *y = t_upsample_nearest2x(c, x);
    if (with_conv) y = layer_forward(c, &l->resample_conv, y);
    return ctx_scope_end(c, s, y);
}
