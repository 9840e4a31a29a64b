/* ae_impl.h: the autoencoder's module tree (private to models/autoencoder/).
   Mirrors the PyTorch module names of CompVis model.py so each parameter's state-dict name
   is built from where it sits: encoder.down.<level>.block.<i>.norm1.weight, ... */
#ifndef EFFDM_AE_IMPL_H
#define EFFDM_AE_IMPL_H

#include "models/autoencoder/autoencoder.h"

// torch.nn.GroupNorm(32, C, eps=1e-6, affine=True): model.py Normalize.
typedef struct {
    Tensor weight, bias;  // (C)
} AeNorm;

// model.py ResnetBlock with temb_channels = 0 (no temb_proj) and conv_shortcut = False.
typedef struct {
    int cin, cout;
    AeNorm norm1, norm2;
    ModelLayer conv1, conv2;      // 3x3 pad 1
    int has_nin_shortcut;         // cin != cout: 1x1 nin_shortcut
    ModelLayer nin_shortcut;
} AeResBlock;

// model.py AttnBlock: single head over h*w positions, 1x1 convs q, k, v, proj_out.
typedef struct {
    int c;
    AeNorm norm;
    ModelLayer q, k, v, proj_out;
} AeAttn;

// One resolution level of the encoder (down.<i>) or decoder (up.<i>).
typedef struct {
    AeResBlock *block;
    int n_block;
    AeAttn *attn;                 // n_attn is 0 or n_block (attention after every block)
    int n_attn;
    int has_resample;             // encoder: downsample; decoder: upsample
    ModelLayer resample_conv;     // when resamp_with_conv
} AeLevel;

typedef struct {
    ModelLayer conv_in;
    AeLevel level[AE_MAX_LEVELS];
    int n_level;
    AeResBlock mid_block_1, mid_block_2;
    AeAttn mid_attn_1;            // absent (identity) when attn_type "none"
    AeNorm norm_out;
    ModelLayer conv_out;
} AeCoder;

// One registered parameter: state-dict name (without the model prefix) -> tensor.
typedef struct {
    char name[128];
    Tensor *t;
} AeParam;

struct AeModel {
    AeConfig cfg;
    AeCoder enc, dec;
    ModelLayer quant_conv, post_quant_conv;
    Tensor codebook;              // quantize.embedding.weight (n_embed, embed_dim), VQ only
    AeParam *params;              // registration order (named_parameters order)
    int n_params, cap_params;
    float *block;                 // every parameter's data
    size_t n_floats;
};

// Registers tensor t (shape given) under name; data is pointed into the block later. 0 or ERR_NOMEM.
int ae_param_add(AeModel *m, Tensor *t, int ndim, const int *shape, Err *e, const char *fmt, ...)
    __attribute__((format(printf, 6, 7)));
// Registers a conv layer's weight (cout, cin, k, k) and bias (cout) as <name>.weight / .bias.
int ae_conv_add(AeModel *m, ModelLayer *l, int cin, int cout, int k, int stride, int pad, Err *e,
                const char *fmt, ...) __attribute__((format(printf, 9, 10)));

// Builds the encoder / decoder of dd under "encoder." / "decoder.". 0 or an ERR_ code.
int ae_encoder_build(AeModel *m, AeCoder *enc, const AeDDConfig *dd, Err *e);
int ae_decoder_build(AeModel *m, AeCoder *dec, const AeDDConfig *dd, Err *e);
void ae_coder_free(AeCoder *k);

// Blocks (ae_blocks.c); each returns NULL on failure with c->err set.
Tensor *ae_resblock_forward(Ctx *c, AeResBlock *b, Tensor *x);
Tensor *ae_attn_forward(Ctx *c, AeAttn *a, Tensor *x);
// Downsample: pad (0,1,0,1) then 3x3 stride 2 pad 0 conv; or avg_pool 2x2 without conv.
Tensor *ae_downsample_forward(Ctx *c, AeLevel *l, int with_conv, Tensor *x);
// Upsample: nearest x2, then 3x3 pad 1 conv when with_conv.
Tensor *ae_upsample_forward(Ctx *c, AeLevel *l, int with_conv, Tensor *x);
// GroupNorm(32, eps 1e-6) then swish.
Tensor *ae_norm_swish(Ctx *c, AeNorm *n, Tensor *x);

// Encoder.forward: x (N, in_channels, H, W) -> (N, 2 z or z, H/f, W/f).
Tensor *ae_encoder_forward(Ctx *c, AeCoder *enc, const AeDDConfig *dd, Tensor *x);
// Decoder.forward: z (N, z_channels, h, w) -> (N, out_ch, h*f, w*f).
Tensor *ae_decoder_forward(Ctx *c, AeCoder *dec, const AeDDConfig *dd, Tensor *z);

#endif
