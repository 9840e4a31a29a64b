// UNetConfig: CompVis defaults, option checks, and the attention head arithmetic of
// openaimodel.py UNetModel.__init__ (commit a506df5).
#include <stdint.h>
#include <string.h>

#include "models/unet/unet_impl.h"

// Sanity bounds against hostile configs (every size product stays far below INT_MAX
// per dimension and SIZE_MAX per tensor); real LDMs use at most a few thousand channels.
#define UNET_MAX_CHANNELS (1 << 16)
#define UNET_MAX_REPEAT 1024

void unet_config_defaults(UNetConfig *cfg) {
    // CompVis UNetModel.__init__ signature; image_size, in/out_channels, model_channels,
    // num_res_blocks and attention_resolutions have no default there (0 / empty here).
    memset(cfg, 0, sizeof *cfg);
    static const int mult[4] = {1, 2, 4, 8};
    memcpy(cfg->channel_mult, mult, sizeof mult);
    cfg->n_channel_mult = 4;
    cfg->conv_resample = 1;
    cfg->num_classes = 0;
    cfg->num_heads = -1;
    cfg->num_head_channels = -1;
    cfg->num_heads_upsample = -1;
    cfg->transformer_depth = 1;
    cfg->context_dim = 0;
    cfg->legacy = 1;
}

static int check_range(const char *key, int v, int lo, int hi, Err *e) {
    if (v < lo || v > hi)
        return err_set(e, ERR_VALUE, "UNet config: %s: expected an integer in [%d, %d], found %d", key, lo,
                       hi, v);
    return 0;
}

static int check_options(const UNetConfig *c, Err *e) {
    if (check_range("image_size", c->image_size, 0, UNET_MAX_CHANNELS, e) ||
        check_range("in_channels", c->in_channels, 1, UNET_MAX_CHANNELS, e) ||
        check_range("out_channels", c->out_channels, 1, UNET_MAX_CHANNELS, e) ||
        check_range("model_channels", c->model_channels, 1, UNET_MAX_CHANNELS, e) ||
        check_range("num_res_blocks", c->num_res_blocks, 0, UNET_MAX_REPEAT, e) ||
        check_range("channel_mult (length)", c->n_channel_mult, 1, UNET_MAX_LEVELS, e) ||
        check_range("attention_resolutions (length)", c->n_attention_resolutions, 0, UNET_MAX_LEVELS, e) ||
        check_range("num_classes", c->num_classes, 0, 1 << 24, e) ||
        check_range("transformer_depth", c->transformer_depth, 1, UNET_MAX_REPEAT, e) ||
        check_range("context_dim", c->context_dim, 0, UNET_MAX_CHANNELS, e))
        return e->code;
    for (int i = 0; i < c->n_channel_mult; i++) {
        int m = c->channel_mult[i];
        if (m < 1 || (int64_t)m * c->model_channels > UNET_MAX_CHANNELS)
            return err_set(e, ERR_VALUE, "UNet config: channel_mult[%d]: expected a positive multiplier "
                           "(model_channels x mult <= %d), found %d", i, UNET_MAX_CHANNELS, m);
    }
    // UNetModel.out is normalization(ch) then conv_nd(model_channels -> out_channels), where ch
    // is model_channels * channel_mult[0]: any other first multiplier cannot run upstream.
    if (c->channel_mult[0] != 1)
        return err_set(e, ERR_VALUE, "UNet config: channel_mult[0]: expected 1 (the CompVis output conv "
                       "takes model_channels inputs), found %d", c->channel_mult[0]);
    for (int i = 0; i < c->n_attention_resolutions; i++)
        if (c->attention_resolutions[i] < 1)
            return err_set(e, ERR_VALUE, "UNet config: attention_resolutions[%d]: expected a positive "
                           "downsampling factor, found %d", i, c->attention_resolutions[i]);
    // The asserts at the top of UNetModel.__init__.
    if (c->num_heads == -1 && c->num_head_channels == -1)
        return err_set(e, ERR_VALUE, "UNet config: num_heads / num_head_channels: one of them must be set "
                       "(both are -1)");
    if (c->num_heads != -1 && check_range("num_heads", c->num_heads, 1, UNET_MAX_CHANNELS, e))
        return e->code;
    if (c->num_head_channels != -1 &&
        check_range("num_head_channels", c->num_head_channels, 1, UNET_MAX_CHANNELS, e))
        return e->code;
    if (c->num_heads_upsample != -1 &&
        check_range("num_heads_upsample", c->num_heads_upsample, 1, UNET_MAX_CHANNELS, e))
        return e->code;
    if (c->use_spatial_transformer && c->context_dim <= 0)
        return err_set(e, ERR_VALUE, "UNet config: context_dim: required with use_spatial_transformer "
                       "(the cross-attention conditioning width), found %d", c->context_dim);
    if (!c->use_spatial_transformer && c->context_dim > 0)
        return err_set(e, ERR_VALUE, "UNet config: context_dim %d given but use_spatial_transformer is "
                       "false (CompVis rejects cross-attention conditioning without it)", c->context_dim);
    return 0;
}

int unet_config_check(const UNetConfig *cfg, Err *e) {
    if (check_options(cfg, e)) return e->code;
    // Channel counts and head splits depend on the walk over levels: run the builder's
    // counting pass, which checks each block as it is declared.
    UNet tmp;
    memset(&tmp, 0, sizeof tmp);
    tmp.cfg = *cfg;
    return unet_build(&tmp, e);
}

// CompVis openaimodel.py UNetModel.__init__, repeated before every attention module:
//     if num_head_channels == -1: dim_head = ch // num_heads
//     else: num_heads = ch // num_head_channels; dim_head = num_head_channels
//     if legacy: dim_head = ch // num_heads if use_spatial_transformer else num_head_channels
// then SpatialTransformer(ch, num_heads, dim_head), or AttentionBlock(ch, num_heads (the
// output blocks pass num_heads_upsample), num_head_channels=dim_head), which uses
// ch // num_head_channels heads unless num_head_channels == -1.
int unet_attention_heads(const UNetConfig *c, int ch, int upsample, const char *where, int *heads,
                         int *dim_head, Err *e) {
    int nh = c->num_heads, dh;
    if (c->num_head_channels == -1) {
        dh = ch / nh;
    } else {
        nh = ch / c->num_head_channels;
        dh = c->num_head_channels;
        if (nh == 0)
            return err_set(e, ERR_VALUE, "UNet config: num_head_channels %d exceeds the %d channels of %s",
                           c->num_head_channels, ch, where);
    }
    if (c->legacy) dh = c->use_spatial_transformer ? ch / nh : c->num_head_channels;

    if (c->use_spatial_transformer) {
        if (dh < 1)
            return err_set(e, ERR_VALUE, "UNet config: num_heads %d exceeds the %d channels of %s", nh, ch,
                           where);
        *heads = nh;
        *dim_head = dh;
        return 0;
    }
    int arg_heads = nh;
    if (upsample) arg_heads = c->num_heads_upsample == -1 ? c->num_heads : c->num_heads_upsample;
    if (dh == -1) {
        if (arg_heads < 1)
            return err_set(e, ERR_VALUE, "UNet config: %s: AttentionBlock needs num_heads%s or "
                           "num_head_channels", where, upsample ? "_upsample" : "");
        *heads = arg_heads;
    } else {
        if (dh < 1 || ch % dh != 0)
            return err_set(e, ERR_VALUE, "UNet config: %s: %d channels are not divisible into heads of "
                           "%d channels", where, ch, dh);
        *heads = ch / dh;
    }
    // QKVAttention(Legacy): width 3 ch must split into 3 heads equal parts.
    if (ch % *heads != 0)
        return err_set(e, ERR_VALUE, "UNet config: %s: %d channels are not divisible by %d heads", where,
                       ch, *heads);
    *dim_head = ch / *heads;
    return 0;
}
