// ResBlock, Downsample and Upsample forward passes (CompVis openaimodel.py, commit a506df5).
#include "models/unet/unet_impl.h"

// Upsample(channels, use_conv=False) / Downsample(channels, use_conv=False): the h_upd /
// x_upd of resblock_updown, and the resamplers without conv_resample.
static Tensor *resample(Ctx *c, Tensor *x, int kind) {
    if (kind == UNET_RESAMPLE_UP) return t_upsample_nearest2x(c, x);
    // avg_pool_nd(2, kernel_size=2, stride=2): no padding, so count_include_pad is moot.
    if (kind == UNET_RESAMPLE_DOWN) return t_avg_pool2d(c, x, 2, 2, 0, 1);
    return x;
}

// CompVis ResBlock._forward. x (N, ch_in, H, W) -> (N, ch_out, H', W') (H' = 2H or H/2 with
// resblock_updown). emb_act (N, E) is SiLU(emb): emb_layers is Sequential(SiLU, Linear),
// and SiLU(emb) is the same for every block, so the caller computes it once.
Tensor *unet_resblock_forward(Ctx *c, UNet *m, const UNetResBlock *rb, Tensor *x, Tensor *emb_act) {
    if (!x || !emb_act) return NULL;
    UNetNorm *in_norm = &m->norms[rb->in_norm], *out_norm = &m->norms[rb->out_norm];
    int N = x->shape[0], C = rb->ch_out;

    // in_layers = GroupNorm32, SiLU, conv; with up/down the resampling of h sits before the
    // conv, and x is resampled the same way for the skip path.
    Tensor *h = t_group_norm(c, x, &in_norm->weight, &in_norm->bias, UNET_GN_GROUPS, UNET_GN_EPS);
    h = t_silu(c, h);
    if (rb->resample != UNET_RESAMPLE_NONE) {
        h = resample(c, h, rb->resample);
        x = resample(c, x, rb->resample);
    }
    h = layer_forward(c, &m->layers[rb->in_conv], h);

    Tensor *emb_out = layer_forward(c, &m->layers[rb->emb_linear], emb_act);  // (N, C) or (N, 2C)
    if (m->cfg.use_scale_shift_norm) {
        // scale, shift = th.chunk(emb_out, 2, dim=1); h = out_norm(h) * (1 + scale) + shift
        Tensor *scale = t_reshape(c, t_slice(c, emb_out, 1, 0, C), 4, (int[]){N, C, 1, 1});
        Tensor *shift = t_reshape(c, t_slice(c, emb_out, 1, C, C), 4, (int[]){N, C, 1, 1});
        h = t_group_norm(c, h, &out_norm->weight, &out_norm->bias, UNET_GN_GROUPS, UNET_GN_EPS);
        h = t_add(c, t_mul(c, h, t_add_scalar(c, scale, 1.0f)), shift);
    } else {
        h = t_add(c, h, t_reshape(c, emb_out, 4, (int[]){N, C, 1, 1}));
        h = t_group_norm(c, h, &out_norm->weight, &out_norm->bias, UNET_GN_GROUPS, UNET_GN_EPS);
    }
    // out_layers rest: SiLU, Dropout (identity at inference), conv.
    h = t_silu(c, h);
    h = layer_forward(c, &m->layers[rb->out_conv], h);
    Tensor *skip = rb->skip >= 0 ? layer_forward(c, &m->layers[rb->skip], x) : x;
    return t_add(c, skip, h);
}

// CompVis Downsample.forward: conv 3x3 stride 2 padding 1 ("op"), or 2x2 average pooling.
Tensor *unet_downsample_forward(Ctx *c, UNet *m, int conv, Tensor *x) {
    if (conv >= 0) return layer_forward(c, &m->layers[conv], x);
    return resample(c, x, UNET_RESAMPLE_DOWN);
}

// CompVis Upsample.forward: F.interpolate(scale_factor=2, mode="nearest"), then the conv.
Tensor *unet_upsample_forward(Ctx *c, UNet *m, int conv, Tensor *x) {
    Tensor *h = resample(c, x, UNET_RESAMPLE_UP);
    if (conv >= 0) h = layer_forward(c, &m->layers[conv], h);
    return h;
}
