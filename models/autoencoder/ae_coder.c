/* ae_coder.c: CompVis model.py Encoder and Decoder (a506df5): module tree (state-dict names in
   named_parameters order) and forward. temb_ch = 0 in both, so no timestep embedding. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/autoencoder/ae_impl.h"

static int norm_add(AeModel *m, AeNorm *n, int C, Err *e, const char *prefix) {
    if (ae_param_add(m, &n->weight, 1, (int[]){C}, e, "%s.weight", prefix)) return e->code;
    return ae_param_add(m, &n->bias, 1, (int[]){C}, e, "%s.bias", prefix);
}

// ResnetBlock.__init__ order: norm1, conv1, norm2, conv2, nin_shortcut.
static int resblock_add(AeModel *m, AeResBlock *b, int cin, int cout, Err *e, const char *prefix) {
    char p[128];
    b->cin = cin;
    b->cout = cout;
    b->has_nin_shortcut = cin != cout;
    snprintf(p, sizeof p, "%s.norm1", prefix);
    if (norm_add(m, &b->norm1, cin, e, p)) return e->code;
    if (ae_conv_add(m, &b->conv1, cin, cout, 3, 1, 1, e, "%s.conv1", prefix)) return e->code;
    snprintf(p, sizeof p, "%s.norm2", prefix);
    if (norm_add(m, &b->norm2, cout, e, p)) return e->code;
    if (ae_conv_add(m, &b->conv2, cout, cout, 3, 1, 1, e, "%s.conv2", prefix)) return e->code;
    if (b->has_nin_shortcut && ae_conv_add(m, &b->nin_shortcut, cin, cout, 1, 1, 0, e, "%s.nin_shortcut", prefix))
        return e->code;
    return 0;
}

// AttnBlock.__init__ order: norm, q, k, v, proj_out.
static int attn_add(AeModel *m, AeAttn *a, int C, Err *e, const char *prefix) {
    char p[128];
    a->c = C;
    snprintf(p, sizeof p, "%s.norm", prefix);
    if (norm_add(m, &a->norm, C, e, p)) return e->code;
    if (ae_conv_add(m, &a->q, C, C, 1, 1, 0, e, "%s.q", prefix)) return e->code;
    if (ae_conv_add(m, &a->k, C, C, 1, 1, 0, e, "%s.k", prefix)) return e->code;
    if (ae_conv_add(m, &a->v, C, C, 1, 1, 0, e, "%s.v", prefix)) return e->code;
    return ae_conv_add(m, &a->proj_out, C, C, 1, 1, 0, e, "%s.proj_out", prefix);
}

static int has_attn(const AeDDConfig *dd, int res) {
    if (dd->attn_none) return 0;  // make_attn(attn_type="none") is nn.Identity: no parameters
    for (int i = 0; i < dd->n_attn_resolutions; i++)
        if (dd->attn_resolutions[i] == res) return 1;
    return 0;
}

// One level: n_block ResnetBlocks (cin -> cout, then cout -> cout), an AttnBlock after each
// when res is an attention resolution, then the resampler (a 3x3 conv under `resample_name`).
static int level_add(AeModel *m, AeLevel *l, int n_block, int cin, int cout, int res, int resample,
                     const char *resample_name, const AeDDConfig *dd, Err *e, const char *prefix) {
    char p[128];
    l->n_block = n_block;
    l->block = calloc((size_t)n_block, sizeof *l->block);
    l->n_attn = has_attn(dd, res) ? n_block : 0;
    l->attn = l->n_attn ? calloc((size_t)n_block, sizeof *l->attn) : NULL;
    if (!l->block || (l->n_attn && !l->attn)) return err_set(e, ERR_NOMEM, "autoencoder: out of memory");
    for (int i = 0; i < n_block; i++) {
        snprintf(p, sizeof p, "%s.block.%d", prefix, i);
        if (resblock_add(m, &l->block[i], i == 0 ? cin : cout, cout, e, p)) return e->code;
    }
    for (int i = 0; i < l->n_attn; i++) {
        snprintf(p, sizeof p, "%s.attn.%d", prefix, i);
        if (attn_add(m, &l->attn[i], cout, e, p)) return e->code;
    }
    l->has_resample = resample;
    if (resample && dd->resamp_with_conv) {
        // Downsample: 3x3 stride 2 pad 0 (padding done by hand); Upsample: 3x3 stride 1 pad 1
        int down = !strcmp(resample_name, "downsample");
        if (ae_conv_add(m, &l->resample_conv, cout, cout, 3, down ? 2 : 1, down ? 0 : 1, e, "%s.%s.conv", prefix,
                        resample_name))
            return e->code;
    }
    return 0;
}

static int mid_add(AeModel *m, AeCoder *k, int C, const AeDDConfig *dd, Err *e, const char *prefix) {
    char p[128];
    snprintf(p, sizeof p, "%s.mid.block_1", prefix);
    if (resblock_add(m, &k->mid_block_1, C, C, e, p)) return e->code;
    if (!dd->attn_none) {
        snprintf(p, sizeof p, "%s.mid.attn_1", prefix);
        if (attn_add(m, &k->mid_attn_1, C, e, p)) return e->code;
    }
    snprintf(p, sizeof p, "%s.mid.block_2", prefix);
    return resblock_add(m, &k->mid_block_2, C, C, e, p);
}

// Encoder.__init__: conv_in, down.<i> (in_ch_mult = (1,) + ch_mult), mid, norm_out, conv_out.
int ae_encoder_build(AeModel *m, AeCoder *k, const AeDDConfig *dd, Err *e) {
    int n = dd->n_ch_mult, ch = dd->ch;
    k->n_level = n;
    if (ae_conv_add(m, &k->conv_in, dd->in_channels, ch, 3, 1, 1, e, "encoder.conv_in")) return e->code;
    int block_in = ch, res = dd->resolution;
    for (int i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof p, "encoder.down.%d", i);
        int cin = ch * (i == 0 ? 1 : dd->ch_mult[i - 1]), cout = ch * dd->ch_mult[i];
        if (level_add(m, &k->level[i], dd->num_res_blocks, cin, cout, res, i != n - 1, "downsample", dd, e, p))
            return e->code;
        block_in = cout;
        if (i != n - 1) res /= 2;
    }
    if (mid_add(m, k, block_in, dd, e, "encoder")) return e->code;
    if (norm_add(m, &k->norm_out, block_in, e, "encoder.norm_out")) return e->code;
    int zc = dd->double_z ? 2 * dd->z_channels : dd->z_channels;
    return ae_conv_add(m, &k->conv_out, block_in, zc, 3, 1, 1, e, "encoder.conv_out");
}

// Decoder.__init__: conv_in, mid, up.<i> (built from the lowest resolution upwards but
// registered as up.0, up.1, ... because of `self.up.insert(0, up)`), norm_out, conv_out.
int ae_decoder_build(AeModel *m, AeCoder *k, const AeDDConfig *dd, Err *e) {
    int n = dd->n_ch_mult, ch = dd->ch;
    k->n_level = n;
    int block_in = ch * dd->ch_mult[n - 1];
    if (ae_conv_add(m, &k->conv_in, dd->z_channels, block_in, 3, 1, 1, e, "decoder.conv_in")) return e->code;
    if (mid_add(m, k, block_in, dd, e, "decoder")) return e->code;
    for (int i = 0; i < n; i++) {
        char p[64];
        snprintf(p, sizeof p, "decoder.up.%d", i);
        // level i starts from the output of level i + 1 (the mid block's width for the last level)
        int cin = ch * dd->ch_mult[i + 1 < n ? i + 1 : n - 1], cout = ch * dd->ch_mult[i];
        int res = dd->resolution >> i;
        if (level_add(m, &k->level[i], dd->num_res_blocks + 1, cin, cout, res, i != 0, "upsample", dd, e, p))
            return e->code;
    }
    int c0 = ch * dd->ch_mult[0];
    if (norm_add(m, &k->norm_out, c0, e, "decoder.norm_out")) return e->code;
    return ae_conv_add(m, &k->conv_out, c0, dd->out_ch, 3, 1, 1, e, "decoder.conv_out");
}

void ae_coder_free(AeCoder *k) {
    for (int i = 0; i < AE_MAX_LEVELS; i++) {
        free(k->level[i].block);
        free(k->level[i].attn);
        k->level[i].block = NULL;
        k->level[i].attn = NULL;
    }
}

static Tensor *level_blocks(Ctx *c, AeLevel *l, Tensor *h, CtxScope s) {
    for (int j = 0; j < l->n_block && h; j++) {
        h = ctx_scope_end(c, s, ae_resblock_forward(c, &l->block[j], h));
        if (l->n_attn) h = ctx_scope_end(c, s, ae_attn_forward(c, &l->attn[j], h));
    }
    return h;
}

static Tensor *mid_forward(Ctx *c, AeCoder *k, const AeDDConfig *dd, Tensor *h, CtxScope s) {
    h = ctx_scope_end(c, s, ae_resblock_forward(c, &k->mid_block_1, h));
    if (!dd->attn_none) h = ctx_scope_end(c, s, ae_attn_forward(c, &k->mid_attn_1, h));
    return ctx_scope_end(c, s, ae_resblock_forward(c, &k->mid_block_2, h));
}

// Encoder.forward. Only hs[-1] is ever read, so one activation is live between blocks;
// every ctx_scope_end(c, s, h) frees all but h since the start.
Tensor *ae_encoder_forward(Ctx *c, AeCoder *k, const AeDDConfig *dd, Tensor *x) {
    CtxScope s = ctx_scope_begin(c);
    Tensor *h = ctx_scope_end(c, s, layer_forward(c, &k->conv_in, x));
    for (int i = 0; i < k->n_level && h; i++) {
        h = level_blocks(c, &k->level[i], h, s);
        if (k->level[i].has_resample)
            h = ctx_scope_end(c, s, ae_downsample_forward(c, &k->level[i], dd->resamp_with_conv, h));
    }
    h = mid_forward(c, k, dd, h, s);
    h = layer_forward(c, &k->conv_out, ae_norm_swish(c, &k->norm_out, h));
    return ctx_scope_end(c, s, h);
}

// Decoder.forward (give_pre_end and tanh_out false).
Tensor *ae_decoder_forward(Ctx *c, AeCoder *k, const AeDDConfig *dd, Tensor *z) {
    CtxScope s = ctx_scope_begin(c);
    Tensor *h = ctx_scope_end(c, s, layer_forward(c, &k->conv_in, z));
    h = mid_forward(c, k, dd, h, s);
    for (int i = k->n_level - 1; i >= 0 && h; i--) {
        h = level_blocks(c, &k->level[i], h, s);
        if (k->level[i].has_resample)
            h = ctx_scope_end(c, s, ae_upsample_forward(c, &k->level[i], dd->resamp_with_conv, h));
    }
    h = layer_forward(c, &k->conv_out, ae_norm_swish(c, &k->norm_out, h));
    return ctx_scope_end(c, s, h);
}
