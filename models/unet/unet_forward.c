// unet_forward: CompVis openaimodel.py UNetModel.forward (commit a506df5).
#include <stdio.h>

#include "autograd/profile.h"
#include "models/unet/unet_impl.h"

#define UNET_TIMESTEP_MAX_PERIOD 10000.0f  // diffusionmodules/util.py timestep_embedding default

static void hook(UNet *m, const char *name, int k, const Tensor *t) {
    if (!m->hook || !t) return;
    char buf[64];
    if (k >= 0) snprintf(buf, sizeof buf, "%s.%d", name, k);
    else snprintf(buf, sizeof buf, "%s", name);
    m->hook(buf, t, m->hook_user);
}

// TimestepEmbedSequential.forward: ResBlocks get emb, SpatialTransformers get context.
static Tensor *seq_forward(Ctx *c, UNet *m, const UNetSeq *s, Tensor *h, Tensor *emb_act, Tensor *context) {
    for (int i = 0; i < s->n && h; i++) {
        const UNetModule *mod = &s->mod[i];
        switch (mod->kind) {
        case UNET_MOD_CONV: h = layer_forward(c, &m->layers[mod->u.conv], h); break;
        case UNET_MOD_RESBLOCK: h = unet_resblock_forward(c, m, &mod->u.res, h, emb_act); break;
        case UNET_MOD_ATTENTION: h = unet_attention_forward(c, m, &mod->u.attn, h); break;
        case UNET_MOD_TRANSFORMER: h = unet_transformer_forward(c, m, &mod->u.st, h, context); break;
        case UNET_MOD_DOWNSAMPLE: h = unet_downsample_forward(c, m, mod->u.conv, h); break;
        case UNET_MOD_UPSAMPLE: h = unet_upsample_forward(c, m, mod->u.conv, h); break;
        }
    }
    return h;
}

// Argument checks that upstream makes with asserts (or that would fail deep inside an op).
static int check_inputs(Ctx *c, const UNet *m, const Tensor *x, const float *t, const Tensor *context,
                        const int *y) {
    const UNetConfig *cfg = &m->cfg;
    char s[64];
    if (!x || !t) return err_set(&c->err, ERR_VALUE, "unet_forward: x and t are required");
    if (x->ndim != 4 || x->shape[1] != cfg->in_channels)
        return err_set(&c->err, ERR_SHAPE, "unet_forward: x: expected (N, %d, H, W), found %s",
                       cfg->in_channels, tensor_shape_str(x, s, sizeof s));
    // Each level but the last halves H and W, and the output blocks concatenate with the
    // saved input-block outputs, so H and W must divide by 2^(levels-1).
    int f = 1 << (cfg->n_channel_mult - 1);
    if (x->shape[2] % f || x->shape[3] % f || x->shape[2] == 0 || x->shape[3] == 0)
        return err_set(&c->err, ERR_SHAPE, "unet_forward: x: H and W must be positive multiples of %d "
                       "(%d levels), found %s", f, cfg->n_channel_mult, tensor_shape_str(x, s, sizeof s));
    if (cfg->use_spatial_transformer) {
        // CrossAttention would fall back to self-attention without a context, which only works
        // when context_dim equals the inner width; CompVis models always pass one.
        if (!context || context->ndim != 3 || context->shape[0] != x->shape[0] ||
            context->shape[2] != cfg->context_dim) {
            if (!context)
                return err_set(&c->err, ERR_VALUE, "unet_forward: this UNet has cross-attention: "
                               "context (N, L, %d) is required", cfg->context_dim);
            return err_set(&c->err, ERR_SHAPE, "unet_forward: context: expected (%d, L, %d), found %s",
                           x->shape[0], cfg->context_dim, tensor_shape_str(context, s, sizeof s));
        }
    }
    // UNetModel.forward: "must specify y if and only if the model is class-conditional".
    if ((y != NULL) != (cfg->num_classes > 0))
        return err_set(&c->err, ERR_VALUE, "unet_forward: class labels y %s (num_classes %d)",
                       y ? "given to a model without label_emb" : "are required", cfg->num_classes);
    return 0;
}

Tensor *unet_forward(Ctx *c, UNet *m, Tensor *x, const float *t, Tensor *context, const int *y) {
    if (c->err.code) return NULL;
    if (check_inputs(c, m, x, t, context, y)) return NULL;
    const UNetConfig *cfg = &m->cfg;
    int N = x->shape[0];
    if (!cfg->use_spatial_transformer) context = NULL;  // only SpatialTransformer reads it

    // Each block runs inside a scope: without a recorded node (no-grad, frozen teacher) the
    // block's intermediates are released as soon as its output exists. What stays is every
    // block output, as upstream's hs list keeps them for the skip connections.
    CtxScope sc = ctx_scope_begin(c);
    int pb = prof_block_begin(c, "time_embed", -1);
    Tensor *emb = t_timestep_embedding(c, t, N, cfg->model_channels, UNET_TIMESTEP_MAX_PERIOD);
    emb = layer_forward(c, &m->layers[m->time_embed[0]], emb);
    emb = layer_forward(c, &m->layers[m->time_embed[1]], t_silu(c, emb));
    emb = ctx_scope_end(c, sc, emb);
    prof_block_end(c, pb);
    hook(m, "time_embed", -1, emb);
    pb = prof_block_begin(c, "time_embed", -1);
    if (cfg->num_classes > 0) emb = t_add(c, emb, t_embedding(c, &m->label_emb, y, N));
    Tensor *emb_act = t_silu(c, emb);  // the SiLU opening every ResBlock's emb_layers
    prof_block_end(c, pb);

    Tensor **hs = ctx_alloc(c, (size_t)m->n_input_blocks * sizeof *hs);
    if (!hs || !emb_act) return NULL;
    Tensor *h = x;
    for (int i = 0; i < m->n_input_blocks; i++) {
        sc = ctx_scope_begin(c);
        pb = prof_block_begin(c, "input_blocks", i);
        h = ctx_scope_end(c, sc, seq_forward(c, m, &m->input_blocks[i], h, emb_act, context));
        prof_block_end(c, pb);
        if (!h) return NULL;
        hs[i] = h;
        hook(m, "input_blocks", i, h);
    }
    sc = ctx_scope_begin(c);
    pb = prof_block_begin(c, "middle_block", -1);
    h = ctx_scope_end(c, sc, seq_forward(c, m, &m->middle_block, h, emb_act, context));
    prof_block_end(c, pb);
    hook(m, "middle_block", -1, h);
    int n_hs = m->n_input_blocks;
    for (int i = 0; i < m->n_output_blocks && h; i++) {
        sc = ctx_scope_begin(c);
        pb = prof_block_begin(c, "output_blocks", i);
        Tensor *cat[2] = {h, hs[--n_hs]};
        h = t_concat(c, cat, 2, 1);  // th.cat([h, hs.pop()], dim=1)
        h = ctx_scope_end(c, sc, seq_forward(c, m, &m->output_blocks[i], h, emb_act, context));
        prof_block_end(c, pb);
        hook(m, "output_blocks", i, h);
    }
    // out = GroupNorm32, SiLU, conv3x3 (model_channels -> out_channels).
    UNetNorm *on = &m->norms[m->out_norm];
    sc = ctx_scope_begin(c);
    pb = prof_block_begin(c, "out", -1);
    h = t_group_norm(c, h, &on->weight, &on->bias, UNET_GN_GROUPS, UNET_GN_EPS);
    h = layer_forward(c, &m->layers[m->out_conv], t_silu(c, h));
    prof_block_end(c, pb);
    return ctx_scope_end(c, sc, h);
}
