/* autoencoder.h: the first stage of a latent-diffusion model, inference only:
   CompVis ldm/models/autoencoder.py AutoencoderKL, VQModel and VQModelInterface around
   ldm/modules/diffusionmodules/model.py Encoder / Decoder (commit a506df5), with the
   taming-transformers VectorQuantizer2 codebook for the VQ models.

       AeConfig cfg;            // filled by ldm_config (models/ldm_config.h) from the YAML
       AeModel *ae;
       if (ae_new(&ae, &cfg, &e) || ae_load(ae, wf, "first_stage_model.", &unknown, &e)) goto fail;
       Tensor *img = ae_decode(&ctx, ae, z);       // z (N, embed_dim, h, w) -> (N, out_ch, H, W)
       ae_free(ae);

   What decode does depends on the class, as LatentDiffusion.decode_first_stage does:
   - AutoencoderKL:     decoder(post_quant_conv(z))
   - VQModelInterface:  decoder(post_quant_conv(quantize(z)))   (force_not_quantize=False)
   - VQModel:           decoder(post_quant_conv(z))             (VQModel.decode does not quantize)
   Encode: AutoencoderKL gives the posterior (mean, logvar clamped to [-30, 20]) of
   quant_conv(encoder(x)); the VQ classes give h = quant_conv(encoder(x)) (VQModel: then quantized).

   Every op runs through the engine (autograd/ops.h) with grad mode off; each block ends a
   ctx scope, so a forward holds about two activations of the largest level at a time.
   Limitations: attn_type "vanilla" and "none" only (no LinearAttention); give_pre_end and
   tanh_out must be false; no codebook remap (VQ `remap` key); dropout is ignored (eval mode).
*/
#ifndef EFFDM_AUTOENCODER_H
#define EFFDM_AUTOENCODER_H

#include "autograd/ops.h"
#include "io/weights.h"
#include "models/layer.h"

#define AE_MAX_LEVELS 8

typedef enum { AE_KL, AE_VQ, AE_VQ_INTERFACE } AeKind;

// ddconfig of model.py Encoder/Decoder. Defaults (ae_ddconfig_defaults) are the keyword
// defaults of Encoder.__init__; ch, out_ch, num_res_blocks, attn_resolutions, in_channels,
// resolution, z_channels have none (the YAML must give them).
typedef struct {
    int double_z;                            // default 1
    int z_channels;
    int resolution;
    int in_channels;
    int out_ch;
    int ch;
    int ch_mult[AE_MAX_LEVELS];              // default (1, 2, 4, 8)
    int n_ch_mult;
    int num_res_blocks;
    int attn_resolutions[AE_MAX_LEVELS * 2]; // resolutions (pixels) that get an AttnBlock
    int n_attn_resolutions;
    float dropout;                           // ignored (eval mode)
    int resamp_with_conv;                    // default 1
    int attn_none;                           // attn_type "none": nn.Identity instead of AttnBlock
} AeDDConfig;

typedef struct {
    AeKind kind;
    int embed_dim;
    int n_embed;        // VQ codebook size (VQ kinds only)
    AeDDConfig dd;
} AeConfig;

typedef struct AeModel AeModel;

// Fills dd with the Encoder/Decoder keyword defaults (required fields set to 0).
void ae_ddconfig_defaults(AeDDConfig *dd);
// Checks a config (positive sizes, resolution divisible by 2^(levels-1), double_z for KL).
// 0 or ERR_VALUE naming the option.
int ae_config_check(const AeConfig *cfg, Err *e);

// Builds the module tree and one weight block (frozen). 0 or an ERR_ code.
int ae_new(AeModel **m, const AeConfig *cfg, Err *e);
// Accepts NULL.
void ae_free(AeModel *m);
// Reads every parameter `prefix + name` (names as the PyTorch state dict: "encoder.down.0.block.0.norm1.weight")
// from f, shape-checked against the config. Missing tensor: ERR_KEY naming it; tensors under
// prefix that the model does not have are counted in *unknown (may be NULL), not an error.
int ae_load(AeModel *m, WeightFile *f, const char *prefix, int *unknown, Err *e);
const AeConfig *ae_config(const AeModel *m);
// Number of parameters (floats).
size_t ae_param_count(const AeModel *m);
// Parameter by state-dict name without prefix, or NULL.
Tensor *ae_param(AeModel *m, const char *name);
// Latent shape for an image of resolution x resolution: (embed_dim, res / 2^(levels-1), same).
void ae_latent_shape(const AeModel *m, int *C, int *H, int *W);

// First-stage decode (see above): z (N, embed_dim, h, w) -> (N, out_ch, h * f, w * f).
// Returns NULL on failure (c->err says why). Runs with grad mode off.
Tensor *ae_decode(Ctx *c, AeModel *m, Tensor *z);
// decoder(post_quant_conv(z)) without quantization, whatever the class.
Tensor *ae_decode_noquant(Ctx *c, AeModel *m, Tensor *z);
// Encode x (N, in_channels, H, W). KL: *mean and *logvar (N, embed_dim, h, w). VQ: *mean = h
// (VQModel: quantized; VQModelInterface: before quantization), *logvar = NULL. 0 or c->err.code.
int ae_encode(Ctx *c, AeModel *m, Tensor *x, Tensor **mean, Tensor **logvar);
// VectorQuantizer2 forward value: each (C = embed_dim) vector of z (N, C, h, w) replaced by its
// nearest codebook row (argmin of |z|^2 + |e|^2 - 2 z.e, first index on ties), computed as
// z + (e - z) like the straight-through expression upstream. VQ kinds only.
Tensor *ae_quantize(Ctx *c, AeModel *m, Tensor *z);

#endif
