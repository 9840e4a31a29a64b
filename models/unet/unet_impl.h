/* unet_impl.h: the inside of a UNet (models/unet/ only; everyone else uses unet.h).

   The module tree mirrors CompVis openaimodel.UNetModel: input_blocks, middle_block and
   output_blocks are lists of TimestepEmbedSequential (UNetSeq), each holding up to three
   modules (ResBlock, then AttentionBlock or SpatialTransformer, then a resampler).
   Modules refer to their weights by index: layers[] (every Conv2d / Linear / Conv1d, as
   ModelLayer, in registration order) and norms[] (GroupNorm / LayerNorm affine pairs).

   Parameters live in one block (`weights`) carved by a size table built in the same walk
   that builds the tree (unet_build.c): the walk runs twice, once counting, once filling,
   so indices and offsets agree by construction. params[] lists every state-dict tensor in
   registration order (the order of named_parameters()), with a pointer to its Tensor.
*/
#ifndef EFFDM_UNET_IMPL_H
#define EFFDM_UNET_IMPL_H

#include "models/unet/unet.h"

#define UNET_NAME_MAX 160
#define UNET_SEQ_MAX 3           // ResBlock + attention + resampler
#define UNET_GN_GROUPS 32        // CompVis normalization() = GroupNorm32(32, C)
#define UNET_GN_EPS 1e-5f        // torch.nn.GroupNorm default, used by GroupNorm32
#define UNET_ST_GN_EPS 1e-6f     // attention.py Normalize(): GroupNorm(32, C, eps=1e-6)
#define UNET_LN_EPS 1e-5f        // torch.nn.LayerNorm default (BasicTransformerBlock norm1..3)

enum { UNET_RESAMPLE_NONE = 0, UNET_RESAMPLE_UP, UNET_RESAMPLE_DOWN };

typedef enum {
    UNET_MOD_CONV,         // input_blocks.0.0: the input conv
    UNET_MOD_RESBLOCK,     // ResBlock (TimestepBlock)
    UNET_MOD_ATTENTION,    // AttentionBlock (Conv1d qkv / proj_out)
    UNET_MOD_TRANSFORMER,  // SpatialTransformer (cross-attention)
    UNET_MOD_DOWNSAMPLE,   // Downsample: conv "op" (stride 2) or 2x2 average pool
    UNET_MOD_UPSAMPLE,     // Upsample: nearest x2, then conv when conv_resample
} UNetModKind;

// Norms: affine parameters of a GroupNorm or LayerNorm, (C) each.
typedef struct {
    Tensor weight, bias;
} UNetNorm;

typedef struct {
    int ch_in, ch_out;
    int resample;              // UNET_RESAMPLE_*: h_upd / x_upd of resblock_updown
    int in_norm, in_conv;      // in_layers.0, in_layers.2
    int emb_linear;            // emb_layers.1: (ch_out) or (2 ch_out) with scale-shift norm
    int out_norm, out_conv;    // out_layers.0, out_layers.3
    int skip;                  // skip_connection (1x1 conv), -1 = Identity
} UNetResBlock;

typedef struct {
    int ch, heads;
    int new_order;             // 1: QKVAttention (split q,k,v first), 0: QKVAttentionLegacy
    int norm, qkv, proj_out;
} UNetAttention;

typedef struct {
    int norm1, norm2, norm3;
    int attn1[4], attn2[4];    // to_q, to_k, to_v, to_out.0
    int heads[2], dim_head;    // of attn1, attn2 (pruned: fewer than the transformer's)
    int ff_in, ff_out;         // ff.net.0.proj (GEGLU), ff.net.2
} UNetTransformerBlock;

typedef struct {
    int ch, heads, dim_head, depth;   // inner dim = heads * dim_head (may differ from ch); the
                                      // config's heads (a block's attention may have fewer)
    int norm, proj_in, proj_out;
    int first_block;                  // transformer_blocks.0 in m->tblocks
} UNetTransformer;

typedef struct {
    UNetModKind kind;
    union {
        int conv;               // CONV, DOWNSAMPLE, UPSAMPLE: layer index, -1 = no conv
        UNetResBlock res;
        UNetAttention attn;
        UNetTransformer st;
    } u;
} UNetModule;

// TimestepEmbedSequential.
typedef struct {
    int n;
    UNetModule mod[UNET_SEQ_MAX];
} UNetSeq;

typedef struct {
    char name[UNET_NAME_MAX];  // state-dict name without prefix: "out.2.weight"
    Tensor *t;
    int file_ndim;             // ndim in checkpoints: 3 for Conv1d weights (stored 4-D here)
} UNetParam;

struct UNet {
    UNetConfig cfg;
    int time_embed_dim;        // 4 model_channels

    ModelLayer *layers;        // registration order
    ModelLayer **layer_ptrs;   // &layers[i], for unet_layers
    int n_layers;
    UNetNorm *norms;
    int n_norms;
    UNetTransformerBlock *tblocks;
    int n_tblocks;
    UNetParam *params;         // registration order
    UNetParam **params_sorted; // by name, for lookups
    int n_params;

    int time_embed[2];         // time_embed.0, time_embed.2
    Tensor label_emb;          // (num_classes, time_embed_dim); data NULL without num_classes
    UNetSeq *input_blocks;
    int n_input_blocks;
    UNetSeq middle_block;
    UNetSeq *output_blocks;
    int n_output_blocks;
    int out_norm, out_conv;    // out.0, out.2

    float *weights;            // one block, n_floats
    float *grads;              // same layout when trainable, else NULL
    size_t n_floats;

    UNetActHook hook;
    void *hook_user;
    int borrowed;              // unet_clone_layers: everything but layers / layer_ptrs is the source's
};

// unet_config.c: heads and head width CompVis gives the attention module at channel count
// ch (UNetModel.__init__), for the input/middle blocks (upsample = 0) or the output blocks.
// AttentionBlock: *heads; SpatialTransformer: *heads and *dim_head. 0 or ERR_VALUE naming `where`.
int unet_attention_heads(const UNetConfig *c, int ch, int upsample, const char *where, int *heads,
                         int *dim_head, Err *e);

// unet_build.c: walks the architecture. m->weights == NULL: counting pass (fills the
// counts only); otherwise fills the arrays, which must have the counted sizes.
int unet_build(UNet *m, Err *e);

// unet_resblock.c. emb_act = SiLU(emb) (N, time_embed_dim), shared by every ResBlock.
Tensor *unet_resblock_forward(Ctx *c, UNet *m, const UNetResBlock *rb, Tensor *x, Tensor *emb_act);
Tensor *unet_downsample_forward(Ctx *c, UNet *m, int conv, Tensor *x);
Tensor *unet_upsample_forward(Ctx *c, UNet *m, int conv, Tensor *x);

// unet_attention.c. x (N, C, H, W) -> (N, C, H, W); context (N, L, context_dim).
Tensor *unet_attention_forward(Ctx *c, UNet *m, const UNetAttention *a, Tensor *x);
Tensor *unet_transformer_forward(Ctx *c, UNet *m, const UNetTransformer *st, Tensor *x, Tensor *context);

#endif
