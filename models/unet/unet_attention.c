// Attention modules of the UNet: openaimodel.py AttentionBlock (QKVAttentionLegacy /
// QKVAttention) and attention.py SpatialTransformer (BasicTransformerBlock, CrossAttention,
// FeedForward with GEGLU), CompVis latent-diffusion commit a506df5.
#include <math.h>

#include "models/unet/unet_impl.h"

// (N, C, H, W) -> (N, HW, C): rearrange 'b c h w -> b (h w) c'.
static Tensor *to_tokens(Ctx *c, Tensor *x, int N, int C, int T) {
    return t_permute(c, t_reshape(c, x, 3, (int[]){N, C, T}), (int[]){0, 2, 1});
}

// (N, HW, C) -> (N, C, H, W): rearrange 'b (h w) c -> b c h w'.
static Tensor *from_tokens(Ctx *c, Tensor *x, int N, int C, int H, int W) {
    return t_reshape(c, t_permute(c, x, (int[]){0, 2, 1}), 4, (int[]){N, C, H, W});
}

// CompVis AttentionBlock._forward: x + proj_out(attention(qkv(norm(x)))) over the HW positions.
// qkv and proj_out are kernel-1 Conv1d over (N, C, HW); as 1x1 convs over (N, C, H, W) they
// compute the same thing, so the layers see the 4-D tensor.
Tensor *unet_attention_forward(Ctx *c, UNet *m, const UNetAttention *a, Tensor *x) {
    if (!x) return NULL;
    UNetNorm *norm = &m->norms[a->norm];
    int N = x->shape[0], C = a->ch, H = x->shape[2], W = x->shape[3], T = H * W;
    int heads = a->heads, d = C / heads;
    Tensor *h = t_group_norm(c, x, &norm->weight, &norm->bias, UNET_GN_GROUPS, UNET_GN_EPS);
    Tensor *qkv = to_tokens(c, layer_forward(c, &m->layers[a->qkv], h), N, 3 * C, T);  // (N, T, 3C)
    Tensor *q, *k, *v;
    if (a->new_order) {
        // QKVAttention: qkv.chunk(3, dim=1), then each of q, k, v is split into heads:
        // channel j of the 3C is part (j / C), head ((j % C) / d).
        Tensor *p = t_reshape(c, qkv, 4, (int[]){N, T, 3, C});
        q = t_reshape(c, t_slice(c, p, 2, 0, 1), 3, (int[]){N, T, C});
        k = t_reshape(c, t_slice(c, p, 2, 1, 1), 3, (int[]){N, T, C});
        v = t_reshape(c, t_slice(c, p, 2, 2, 1), 3, (int[]){N, T, C});
    } else {
        // QKVAttentionLegacy: qkv.reshape(N * heads, 3 d, T).split(d, dim=1): channel j of
        // the 3C is head (j / 3d), part ((j % 3d) / d).
        Tensor *p = t_reshape(c, qkv, 4, (int[]){N, T, heads, 3 * d});
        q = t_reshape(c, t_slice(c, p, 3, 0, d), 3, (int[]){N, T, C});
        k = t_reshape(c, t_slice(c, p, 3, d, d), 3, (int[]){N, T, C});
        v = t_reshape(c, t_slice(c, p, 3, 2 * d, d), 3, (int[]){N, T, C});
    }
    // Upstream scales q and k by d^-1/4 each ("more stable with f16"); one d^-1/2 on the
    // product is the same in float32 up to rounding. Output channel = head * d + c, as
    // a.reshape(bs, -1, length) in both variants.
    Tensor *o = t_attention(c, q, k, v, heads, 1.0f / sqrtf((float)d));
    h = layer_forward(c, &m->layers[a->proj_out], from_tokens(c, o, N, C, H, W));
    return t_add(c, x, h);
}

// attention.py CrossAttention.forward: to_out(softmax(q k^T * dim_head^-0.5) v) with heads
// packed as 'b n (h d)'. x (N, T, inner); context (N, L, Dc), or x for self-attention. heads:
// this attention's (effdm compress may have removed some: to_q/k/v have heads x d rows).
static Tensor *cross_attention(Ctx *c, UNet *m, const int *idx, int heads, int dim_head, Tensor *x,
                               Tensor *context) {
    Tensor *q = layer_forward(c, &m->layers[idx[0]], x);
    Tensor *k = layer_forward(c, &m->layers[idx[1]], context);
    Tensor *v = layer_forward(c, &m->layers[idx[2]], context);
    Tensor *o = t_attention(c, q, k, v, heads, 1.0f / sqrtf((float)dim_head));
    return layer_forward(c, &m->layers[idx[3]], o);  // to_out.0 (to_out.1 is Dropout)
}

// attention.py BasicTransformerBlock._forward. x (N, T, inner).
static Tensor *transformer_block(Ctx *c, UNet *m, const UNetTransformerBlock *tb, Tensor *x, Tensor *context) {
    UNetNorm *n1 = &m->norms[tb->norm1], *n2 = &m->norms[tb->norm2], *n3 = &m->norms[tb->norm3];
    Tensor *h = t_layer_norm(c, x, &n1->weight, &n1->bias, UNET_LN_EPS);
    x = t_add(c, cross_attention(c, m, tb->attn1, tb->heads[0], tb->dim_head, h, h), x);
    h = t_layer_norm(c, x, &n2->weight, &n2->bias, UNET_LN_EPS);
    x = t_add(c, cross_attention(c, m, tb->attn2, tb->heads[1], tb->dim_head, h, context ? context : h), x);
    h = t_layer_norm(c, x, &n3->weight, &n3->bias, UNET_LN_EPS);
    // FeedForward(glu=True): net.0 = GEGLU (proj, then x * gelu(gate)), net.1 Dropout, net.2 Linear.
    h = t_geglu(c, layer_forward(c, &m->layers[tb->ff_in], h));
    h = layer_forward(c, &m->layers[tb->ff_out], h);
    return t_add(c, h, x);
}

// attention.py SpatialTransformer.forward: x_in + proj_out(blocks(proj_in(norm(x)))), the
// blocks running on the HW tokens. x (N, C, H, W).
Tensor *unet_transformer_forward(Ctx *c, UNet *m, const UNetTransformer *st, Tensor *x, Tensor *context) {
    if (!x) return NULL;
    UNetNorm *norm = &m->norms[st->norm];
    int N = x->shape[0], H = x->shape[2], W = x->shape[3], inner = st->heads * st->dim_head;
    Tensor *h = t_group_norm(c, x, &norm->weight, &norm->bias, UNET_GN_GROUPS, UNET_ST_GN_EPS);
    h = to_tokens(c, layer_forward(c, &m->layers[st->proj_in], h), N, inner, H * W);
    for (int d = 0; d < st->depth; d++)
        h = transformer_block(c, m, &m->tblocks[st->first_block + d], h, context);
    h = layer_forward(c, &m->layers[st->proj_out], from_tokens(c, h, N, inner, H, W));
    return t_add(c, h, x);
}
