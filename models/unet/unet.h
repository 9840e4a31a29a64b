/* unet.h: CompVis openaimodel.UNetModel (dims = 2), forward and backward.

       UNetConfig cfg;  // filled by ldm_config (models/ldm_config.h) from the YAML
       UNet *m = NULL;
       int unknown;
       if (unet_new(&m, &cfg, &e) || unet_load(m, wf, "model.diffusion_model.", &unknown, &e)) goto fail;
       Tensor *eps = unet_forward(&ctx, m, x, t, context, y);   // x (N, Cin, H, W)
       if (!eps) ... ctx.err says why
       unet_free(m);

   Options: model_channels, channel_mult, num_res_blocks, attention_resolutions, num_heads /
   num_head_channels / num_heads_upsample, use_scale_shift_norm, resblock_updown,
   conv_resample, use_spatial_transformer (+ transformer_depth, context_dim), legacy,
   num_classes (label_emb, for class-conditional models without cross-attention).
   Limitations: dims = 2 only; use_checkpoint and dropout are ignored (inference/eval mode);
   use_new_attention_order selects QKVAttention instead of QKVAttentionLegacy. n_embed
   (predict_codebook_ids) and a list-valued context_dim are not supported. A model with
   cross-attention needs a context (upstream's fallback to self-attention is not offered);
   attention_resolutions entries that match no level are ignored, as upstream.

   Memory: unet_forward runs each top-level block inside a ctx scope, so a forward that
   records nothing (no-grad, or frozen weights and an input without gradient) keeps only the
   block outputs (the skip connections) plus one block's intermediates at a time.

   Parameter names are the state-dict names without prefix ("input_blocks.1.1.proj_in.weight"),
   listed in registration order; Conv1d weights (AttentionBlock qkv / proj_out) are (Cout, Cin, 1)
   in files and (Cout, Cin, 1, 1) in memory.
*/
#ifndef EFFDM_UNET_H
#define EFFDM_UNET_H

#include "autograd/ops.h"
#include "io/weights.h"
#include "models/layer.h"

#define UNET_MAX_LEVELS 8
#define UNET_MAX_TBLOCKS 64  // transformer blocks whose FeedForward width a checkpoint may set

typedef struct {
    int image_size;
    int in_channels;
    int model_channels;
    int out_channels;
    int num_res_blocks;
    int attention_resolutions[UNET_MAX_LEVELS];  // downsample rates ("ds") that get attention
    int n_attention_resolutions;
    int channel_mult[UNET_MAX_LEVELS];
    int n_channel_mult;
    int conv_resample;            // default 1
    int num_classes;              // 0: no label_emb
    int num_heads;                // default -1 as CompVis; -1 with num_head_channels set
    int num_head_channels;        // default -1
    int num_heads_upsample;       // default -1 (= num_heads)
    int use_scale_shift_norm;
    int resblock_updown;
    int use_new_attention_order;
    int use_spatial_transformer;
    int transformer_depth;        // default 1
    int context_dim;              // 0 when no cross-attention
    int legacy;                   // default 1
    // Not in the YAML: the hidden width of each transformer block's FeedForward (GEGLU units) in
    // registration order, 0 = CompVis's 4 x inner, and the heads of its attn1 / attn2, 0 = the
    // config's. Set from a checkpoint whose FeedForwards or heads were pruned (effdm compress)
    // by unet_config_read_widths.
    int ff_inner[UNET_MAX_TBLOCKS];
    int attn_heads[UNET_MAX_TBLOCKS][2];
} UNetConfig;

typedef struct UNet UNet;  // defined in models/unet/unet_impl.h

// Fills cfg with the CompVis UNetModel defaults (everything the YAML may omit).
void unet_config_defaults(UNetConfig *cfg);
// Checks a config (channel_mult non-empty, heads divide channels, context_dim when
// use_spatial_transformer, ...). 0 or ERR_VALUE naming the option.
int unet_config_check(const UNetConfig *cfg, Err *e);

// Reads the pruned widths of f's UNet into cfg: each FeedForward's (tensors prefix +
// "<block>.ff.net.0.proj.bias", 2 values per GEGLU unit) into cfg->ff_inner, a width other than
// 4 x inner marking a pruned block; each SpatialTransformer attention's heads (rows of
// "<block>.attn1.to_q.weight" / attn2's, or of to_q.w_delta in an effdm export; dim_head rows a
// head, dim_head from the config) into
// cfg->attn_heads, a count below the config's marking a pruned attention. A tensor that is
// missing keeps the default (unet_load then names it). ERR_SHAPE on an odd or empty width, or
// on a row count that is no multiple of dim_head, or more heads than the config's. 0 or an ERR_ code.
int unet_config_read_widths(UNetConfig *cfg, const WeightFile *f, const char *prefix, Err *e);
// Builds the module tree and allocates one weight block. 0 or an ERR_ code.
int unet_new(UNet **m, const UNetConfig *cfg, Err *e);
void unet_free(UNet *m);
// A second UNet over src's weights: its own layer array (what a quantizer wraps: quant,
// quant_forward), everything else, the weight block included, src's. For a thread that runs
// its own student over the same model (train/slot_workers.c); src must outlive it, and its
// params table (unet_param_at) points into src's layers. NULL when out of memory.
UNet *unet_clone_layers(const UNet *src);
// Reads every parameter `prefix + name` from f (shape-checked against the config). A
// missing tensor is ERR_KEY naming it; a tensor of another shape is ERR_SHAPE naming it with
// the expected and found shapes; extra tensors under prefix are reported through `unknown`
// (count; may be NULL) and not an error. 0 or an ERR_ code (the weights are then partly loaded).
int unet_load(UNet *m, WeightFile *f, const char *prefix, int *unknown, Err *e);
// Number of parameters / floats.
size_t unet_param_count(const UNet *m);
// All conv/linear layers in PyTorch registration order (named_modules order).
ModelLayer **unet_layers(UNet *m, int *n);
// Parameter by state-dict name without prefix ("out.2.weight"), or NULL.
Tensor *unet_param(UNet *m, const char *name);
// Gives every parameter a gradient buffer (requires_grad = 1) or removes them all (frozen).
int unet_set_trainable(UNet *m, int trainable, Err *e);
// Zeroes all parameter gradients.
void unet_zero_grad(UNet *m);

// Number of transformer blocks (BasicTransformerBlock) in registration order, and block k's
// FeedForward: ff.net.0.proj (GEGLU: value rows, then gate rows) and ff.net.2.
int unet_ff_blocks(const UNet *m);
void unet_ff_layers(UNet *m, int k, ModelLayer **proj, ModelLayer **out);
// Block k's attention j (0: attn1, self-attention; 1: attn2, cross-attention): l[0..4) =
// to_q, to_k, to_v, to_out.0; its head count and head width (to_q has heads x dim_head rows).
void unet_attn_layers(UNet *m, int k, int j, ModelLayer *l[4], int *heads, int *dim_head);
// The config the model was built with.
const UNetConfig *unet_config(const UNet *m);
// Number of parameter tensors; the i-th in registration order (state-dict order) and its
// name (owned by m), or NULL when i is out of range. For EMA maps, exports, optimizers.
int unet_param_tensors(const UNet *m);
Tensor *unet_param_at(UNet *m, int i, const char **name);
// Number of dims of the i-th parameter in checkpoint files (3 for Conv1d weights).
int unet_param_file_ndim(const UNet *m, int i);
// The flat gradient block (unet_param_count floats, the weights' layout), or NULL when frozen.
float *unet_grads(UNet *m);

// eps (or v) prediction: x (N, in_channels, H, W) with H, W multiples of 2^(levels-1);
// t[0..N) timesteps (float, as CompVis); context (N, L, context_dim), required exactly when
// use_spatial_transformer (ignored otherwise, as upstream); y[0..N) class labels, required
// exactly when num_classes > 0. Returns (N, out_channels, H, W), or NULL (c->err says why:
// ERR_SHAPE / ERR_VALUE for bad inputs, else the failing op's error).
Tensor *unet_forward(Ctx *c, UNet *m, Tensor *x, const float *t, Tensor *context, const int *y);

// Debug/parity hooks: when set, called with each top-level block output during forward
// ("time_embed", "input_blocks.K", "middle_block", "output_blocks.K").
typedef void (*UNetActHook)(const char *block, const Tensor *out, void *user);
void unet_set_act_hook(UNet *m, UNetActHook hook, void *user);
// 1 when an act hook is set.
int unet_has_act_hook(const UNet *m);

#endif
