// The UNet module tree and its weight block: CompVis openaimodel.py UNetModel.__init__
// (commit a506df5), with ldm/modules/attention.py SpatialTransformer / BasicTransformerBlock /
// CrossAttention / FeedForward. Every layer, norm and parameter is declared here in the
// order PyTorch registers it, so names and order equal the state dict's.
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/unet/unet_impl.h"

// One walk over the architecture. Counting pass (m->weights == NULL): only the counters
// move. Filling pass: the counters are the running indices / float offset into arrays
// sized by the counting pass.
typedef struct {
    UNet *m;
    int fill;
    int n_layers, n_norms, n_tblocks, n_params, n_input, n_output;
    size_t n_floats;
    UNetSeq scratch;  // target of module writes in the counting pass
    // unet_config_read_widths: a counting pass that reads each FeedForward's width and each
    // attention's heads from a file into probe_cfg (NULL otherwise)
    const WeightFile *probe;
    const char *probe_prefix;
    UNetConfig *probe_cfg;
    Err *e;
} Build;

static int vname(Build *b, char *dst, size_t size, const char *fmt, va_list ap) {
    int k = vsnprintf(dst, size, fmt, ap);
    if (k < 0 || (size_t)k >= size)
        return err_set(b->e, ERR_INTERNAL, "UNet: module name longer than %zu characters", size - 1);
    return 0;
}

// Declares a parameter of `ndim`/`shape` named `name` (checkpoint ndim file_ndim) at the
// next offset of the weight block.
static int add_param(Build *b, Tensor *t, int ndim, const int *shape, int file_ndim, const char *name,
                     const char *suffix) {
    size_t n = 1;
    for (int i = 0; i < ndim; i++)
        if (!size_mul_ok(n, (size_t)shape[i], &n))
            return err_set(b->e, ERR_VALUE, "UNet: parameter %s%s is too large", name, suffix);
    if (b->fill) {
        UNetParam *p = &b->m->params[b->n_params];
        int k = snprintf(p->name, sizeof p->name, "%s%s", name, suffix);
        if (k < 0 || (size_t)k >= sizeof p->name)
            return err_set(b->e, ERR_INTERNAL, "UNet: parameter name '%s%s' too long", name, suffix);
        p->t = t;
        p->file_ndim = file_ndim;
        tensor_init_param(t, b->m->weights + b->n_floats, NULL, ndim, shape);
    }
    b->n_params++;
    if (!size_add_ok(b->n_floats, n, &b->n_floats))
        return err_set(b->e, ERR_VALUE, "UNet: the parameters do not fit in memory");
    return 0;
}

// A Conv2d (k x k, Cin -> Cout), Linear (Cin -> Cout; k = 1) or kernel-1 Conv1d; returns its
// index in layers[], or -1 (b->e set).
static int add_layer(Build *b, LayerKind kind, int cout, int cin, int k, int stride, int pad, int bias,
                     const char *fmt, ...) {
    char name[sizeof(((ModelLayer *)0)->name)];
    va_list ap;
    va_start(ap, fmt);
    int rc = vname(b, name, sizeof name, fmt, ap);
    va_end(ap);
    if (rc) return -1;
    int idx = b->n_layers++;
    ModelLayer dummy, *l = b->fill ? &b->m->layers[idx] : &dummy;
    memset(l, 0, sizeof *l);
    l->kind = kind;
    l->index = idx;
    l->stride = stride;
    l->pad = pad;
    memcpy(l->name, name, sizeof name);
    int shape4[4] = {cout, cin, k, k}, shape2[2] = {cout, cin};
    int file_ndim = kind == LAYER_CONV2D ? 4 : kind == LAYER_CONV1D ? 3 : 2;
    if (kind == LAYER_LINEAR) rc = add_param(b, &l->weight, 2, shape2, 2, name, ".weight");
    else rc = add_param(b, &l->weight, 4, shape4, file_ndim, name, ".weight");
    if (!rc && bias) rc = add_param(b, &l->bias, 1, &cout, 1, name, ".bias");
    return rc ? -1 : idx;
}

// Affine parameters (C) of a norm; GroupNorm(32, C) also needs C % 32 == 0 (torch asserts it).
static int add_norm(Build *b, int C, int groups, const char *fmt, ...) {
    char name[UNET_NAME_MAX];
    va_list ap;
    va_start(ap, fmt);
    int rc = vname(b, name, sizeof name, fmt, ap);
    va_end(ap);
    if (rc) return -1;
    if (groups > 0 && C % groups != 0) {
        err_set(b->e, ERR_VALUE, "UNet config: %s normalizes %d channels, not a multiple of the %d "
                "GroupNorm groups (model_channels x channel_mult must be multiples of %d)", name, C,
                groups, groups);
        return -1;
    }
    int idx = b->n_norms++;
    UNetNorm dummy, *nm = b->fill ? &b->m->norms[idx] : &dummy;
    if (add_param(b, &nm->weight, 1, &C, 1, name, ".weight") ||
        add_param(b, &nm->bias, 1, &C, 1, name, ".bias"))
        return -1;
    return idx;
}

static UNetModule *seq_push(Build *b, UNetSeq *s) {
    if (!b->fill) {
        memset(&b->scratch, 0, sizeof b->scratch);
        return &b->scratch.mod[0];
    }
    UNetModule *mod = &s->mod[s->n++];
    memset(mod, 0, sizeof *mod);
    return mod;
}

// CompVis ResBlock.__init__: in_layers (GroupNorm32, SiLU, conv3x3), h_upd/x_upd (no
// parameters), emb_layers (SiLU, Linear), out_layers (GroupNorm32, SiLU, Dropout,
// conv3x3), skip_connection (Identity, or 1x1 conv when the channel count changes).
static int build_resblock(Build *b, UNetSeq *s, const char *path, int ch, int out, int resample) {
    const UNetConfig *c = &b->m->cfg;
    UNetModule *mod = seq_push(b, s);
    UNetResBlock *r = &mod->u.res;
    mod->kind = UNET_MOD_RESBLOCK;
    r->ch_in = ch;
    r->ch_out = out;
    r->resample = resample;
    r->in_norm = add_norm(b, ch, UNET_GN_GROUPS, "%s.in_layers.0", path);
    if (r->in_norm < 0) return b->e->code;
    r->in_conv = add_layer(b, LAYER_CONV2D, out, ch, 3, 1, 1, 1, "%s.in_layers.2", path);
    if (r->in_conv < 0) return b->e->code;
    int emb_out = c->use_scale_shift_norm ? 2 * out : out;
    r->emb_linear = add_layer(b, LAYER_LINEAR, emb_out, b->m->time_embed_dim, 1, 1, 0, 1, "%s.emb_layers.1", path);
    if (r->emb_linear < 0) return b->e->code;
    r->out_norm = add_norm(b, out, UNET_GN_GROUPS, "%s.out_layers.0", path);
    if (r->out_norm < 0) return b->e->code;
    r->out_conv = add_layer(b, LAYER_CONV2D, out, out, 3, 1, 1, 1, "%s.out_layers.3", path);
    if (r->out_conv < 0) return b->e->code;
    r->skip = -1;
    if (out != ch) {
        // UNetModel never passes use_conv=True, so a channel change is always the 1x1 conv.
        r->skip = add_layer(b, LAYER_CONV2D, out, ch, 1, 1, 0, 1, "%s.skip_connection", path);
        if (r->skip < 0) return b->e->code;
    }
    return 0;
}

// CompVis AttentionBlock.__init__: norm (GroupNorm32), qkv (Conv1d C -> 3C), proj_out (Conv1d).
static int build_attention_block(Build *b, UNetSeq *s, const char *path, int ch, int heads) {
    UNetModule *mod = seq_push(b, s);
    UNetAttention *a = &mod->u.attn;
    mod->kind = UNET_MOD_ATTENTION;
    a->ch = ch;
    a->heads = heads;
    a->new_order = b->m->cfg.use_new_attention_order;
    if ((a->norm = add_norm(b, ch, UNET_GN_GROUPS, "%s.norm", path)) < 0 ||
        (a->qkv = add_layer(b, LAYER_CONV1D, 3 * ch, ch, 1, 1, 0, 1, "%s.qkv", path)) < 0 ||
        (a->proj_out = add_layer(b, LAYER_CONV1D, ch, ch, 1, 1, 0, 1, "%s.proj_out", path)) < 0)
        return b->e->code;
    return 0;
}

// attention.py CrossAttention.__init__: to_q, to_k, to_v (no bias; query_dim or context_dim
// -> width = heads x dim_head), to_out.0 (Linear width -> query_dim = inner).
static int build_cross_attention(Build *b, int *idx, const char *path, int inner, int width, int context_dim) {
    if ((idx[0] = add_layer(b, LAYER_LINEAR, width, inner, 1, 1, 0, 0, "%s.to_q", path)) < 0 ||
        (idx[1] = add_layer(b, LAYER_LINEAR, width, context_dim, 1, 1, 0, 0, "%s.to_k", path)) < 0 ||
        (idx[2] = add_layer(b, LAYER_LINEAR, width, context_dim, 1, 1, 0, 0, "%s.to_v", path)) < 0 ||
        (idx[3] = add_layer(b, LAYER_LINEAR, inner, width, 1, 1, 0, 1, "%s.to_out.0", path)) < 0)
        return b->e->code;
    return 0;
}

// attention.py SpatialTransformer.__init__: norm (GroupNorm 32, eps 1e-6), proj_in (1x1
// conv C -> inner), transformer_blocks, proj_out (1x1 conv inner -> C). Each
// BasicTransformerBlock registers attn1, ff, attn2, norm1, norm2, norm3 in that order.
// The hidden width of transformer block `index`'s FeedForward: CompVis's FeedForward(dim,
// mult=4, glu=True) unless the config holds a pruned width; in a probe pass, the file's.
static int ff_width(Build *b, int index, const char *block, int inner, int *width) {
    const UNetConfig *c = &b->m->cfg;
    *width = index < UNET_MAX_TBLOCKS && c->ff_inner[index] > 0 ? c->ff_inner[index] : 4 * inner;
    if (!b->probe) return 0;
    char name[UNET_NAME_MAX + 64];
    snprintf(name, sizeof name, "%s%s.ff.net.0.proj.bias", b->probe_prefix, block);
    const WeightInfo *wi = weights_find(b->probe, name);
    if (!wi) return 0;  // unet_load names the missing tensor
    if (wi->ndim != 1 || wi->shape[0] < 2 || wi->shape[0] % 2)
        return err_set(b->e, ERR_SHAPE, "%s: tensor '%s': expected one even length (2 per GEGLU unit), found %lld "
                       "values", weights_path(b->probe), name, wi->ndim == 1 ? (long long)wi->shape[0] : -1LL);
    int w = (int)(wi->shape[0] / 2);
    if (w == 4 * inner) return 0;
    if (index >= UNET_MAX_TBLOCKS)
        return err_set(b->e, ERR_UNSUPPORTED, "%s: tensor '%s': a pruned FeedForward in transformer block %d (this "
                       "build reads pruned widths in the first %d)", weights_path(b->probe), name, index,
                       UNET_MAX_TBLOCKS);
    b->probe_cfg->ff_inner[index] = *width = w;
    return 0;
}

// The heads of transformer block `index`'s attention j (0: attn1, 1: attn2): the config's
// unless it holds a pruned count; in a probe pass, the file's (rows of to_q.weight / dim_head).
static int attn_heads(Build *b, int index, int j, const char *block, int heads, int dim_head, int *out) {
    const UNetConfig *c = &b->m->cfg;
    *out = index < UNET_MAX_TBLOCKS && c->attn_heads[index][j] > 0 ? c->attn_heads[index][j] : heads;
    if (!b->probe) return 0;
    // to_q's rows: its weight, or in an effdm export where to_q is quantized, its per-row steps
    // w_delta (qalora/export.h)
    char name[UNET_NAME_MAX + 64];
    snprintf(name, sizeof name, "%s%s.attn%d.to_q.weight", b->probe_prefix, block, j + 1);
    const WeightInfo *wi = weights_find(b->probe, name);
    int ndim = 2;
    if (!wi) {
        snprintf(name, sizeof name, "%s%s.attn%d.to_q.w_delta", b->probe_prefix, block, j + 1);
        wi = weights_find(b->probe, name);
        ndim = 1;
    }
    if (!wi) return 0;  // unet_load / export_load names the missing tensor
    long long rows = wi->ndim == ndim ? (long long)wi->shape[0] : -1;
    if (rows < dim_head || rows % dim_head || rows > (long long)heads * dim_head)
        return err_set(b->e, ERR_SHAPE, "%s: tensor '%s': expected 1 to %d heads of %d rows (dim_head), found %lld rows",
                       weights_path(b->probe), name, heads, dim_head, rows);
    int h = (int)(rows / dim_head);
    if (h == heads) return 0;
    if (index >= UNET_MAX_TBLOCKS)
        return err_set(b->e, ERR_UNSUPPORTED, "%s: tensor '%s': a pruned attention in transformer block %d (this "
                       "build reads pruned head counts in the first %d)", weights_path(b->probe), name, index,
                       UNET_MAX_TBLOCKS);
    b->probe_cfg->attn_heads[index][j] = *out = h;
    return 0;
}

static int build_transformer(Build *b, UNetSeq *s, const char *path, int ch, int heads, int dim_head) {
    const UNetConfig *c = &b->m->cfg;
    UNetModule *mod = seq_push(b, s);
    UNetTransformer *st = &mod->u.st;
    int inner = heads * dim_head, ff_inner;
    mod->kind = UNET_MOD_TRANSFORMER;
    st->ch = ch;
    st->heads = heads;
    st->dim_head = dim_head;
    st->depth = c->transformer_depth;
    if ((st->norm = add_norm(b, ch, UNET_GN_GROUPS, "%s.norm", path)) < 0 ||
        (st->proj_in = add_layer(b, LAYER_CONV2D, inner, ch, 1, 1, 0, 1, "%s.proj_in", path)) < 0)
        return b->e->code;
    st->first_block = b->n_tblocks;
    for (int d = 0; d < st->depth; d++) {
        UNetTransformerBlock dummy, *tb = b->fill ? &b->m->tblocks[b->n_tblocks] : &dummy;
        b->n_tblocks++;
        char bp[UNET_NAME_MAX], ap[UNET_NAME_MAX];
        int k = snprintf(bp, sizeof bp, "%s.transformer_blocks.%d", path, d);
        if (k < 0 || (size_t)k >= sizeof bp) return err_set(b->e, ERR_INTERNAL, "UNet: name too long");
        int index = b->n_tblocks - 1;
        tb->dim_head = dim_head;
        if (attn_heads(b, index, 0, bp, heads, dim_head, &tb->heads[0]) ||
            attn_heads(b, index, 1, bp, heads, dim_head, &tb->heads[1]))
            return b->e->code;
        snprintf(ap, sizeof ap, "%s.attn1", bp);
        // attn1 is self-attention: its context_dim defaults to query_dim.
        if (build_cross_attention(b, tb->attn1, ap, inner, tb->heads[0] * dim_head, inner)) return b->e->code;
        if (ff_width(b, index, bp, inner, &ff_inner)) return b->e->code;
        if ((tb->ff_in = add_layer(b, LAYER_LINEAR, 2 * ff_inner, inner, 1, 1, 0, 1, "%s.ff.net.0.proj", bp)) < 0 ||
            (tb->ff_out = add_layer(b, LAYER_LINEAR, inner, ff_inner, 1, 1, 0, 1, "%s.ff.net.2", bp)) < 0)
            return b->e->code;
        snprintf(ap, sizeof ap, "%s.attn2", bp);
        if (build_cross_attention(b, tb->attn2, ap, inner, tb->heads[1] * dim_head, c->context_dim)) return b->e->code;
        if ((tb->norm1 = add_norm(b, inner, 0, "%s.norm1", bp)) < 0 ||
            (tb->norm2 = add_norm(b, inner, 0, "%s.norm2", bp)) < 0 ||
            (tb->norm3 = add_norm(b, inner, 0, "%s.norm3", bp)) < 0)
            return b->e->code;
    }
    if ((st->proj_out = add_layer(b, LAYER_CONV2D, ch, inner, 1, 1, 0, 1, "%s.proj_out", path)) < 0)
        return b->e->code;
    return 0;
}

static int build_attention(Build *b, UNetSeq *s, const char *path, int ch, int upsample) {
    int heads, dim_head;
    if (unet_attention_heads(&b->m->cfg, ch, upsample, path, &heads, &dim_head, b->e)) return b->e->code;
    if (b->m->cfg.use_spatial_transformer) return build_transformer(b, s, path, ch, heads, dim_head);
    return build_attention_block(b, s, path, ch, heads);
}

// Downsample / Upsample modules (not the ResBlock variants of resblock_updown).
static int build_resampler(Build *b, UNetSeq *s, const char *path, int ch, UNetModKind kind) {
    UNetModule *mod = seq_push(b, s);
    mod->kind = kind;
    mod->u.conv = -1;
    if (!b->m->cfg.conv_resample) return 0;  // avg_pool_nd(2, 2) / plain nearest upsampling
    if (kind == UNET_MOD_DOWNSAMPLE)
        mod->u.conv = add_layer(b, LAYER_CONV2D, ch, ch, 3, 2, 1, 1, "%s.op", path);
    else
        mod->u.conv = add_layer(b, LAYER_CONV2D, ch, ch, 3, 1, 1, 1, "%s.conv", path);
    return mod->u.conv < 0 ? b->e->code : 0;
}

static int has_attention(const UNetConfig *c, int ds) {
    for (int i = 0; i < c->n_attention_resolutions; i++)
        if (c->attention_resolutions[i] == ds) return 1;
    return 0;
}

static UNetSeq *next_seq(Build *b, int output) {
    int k = output ? b->n_output++ : b->n_input++;
    if (!b->fill) return &b->scratch;
    UNetSeq *s = output ? &b->m->output_blocks[k] : &b->m->input_blocks[k];
    memset(s, 0, sizeof *s);
    return s;
}

// CompVis UNetModel.__init__, line by line.
static int build_walk(Build *b, int *chans) {
    UNet *m = b->m;
    const UNetConfig *c = &m->cfg;
    int mc = c->model_channels, temb = 4 * mc, L = c->n_channel_mult;
    char path[UNET_NAME_MAX];
    m->time_embed_dim = temb;
    if ((m->time_embed[0] = add_layer(b, LAYER_LINEAR, temb, mc, 1, 1, 0, 1, "time_embed.0")) < 0 ||
        (m->time_embed[1] = add_layer(b, LAYER_LINEAR, temb, temb, 1, 1, 0, 1, "time_embed.2")) < 0)
        return b->e->code;
    if (c->num_classes > 0) {
        Tensor dummy;
        if (add_param(b, b->fill ? &m->label_emb : &dummy, 2, (int[]){c->num_classes, temb}, 2, "label_emb",
                      ".weight"))
            return b->e->code;
    }

    UNetSeq *s = next_seq(b, 0);
    UNetModule *mod = seq_push(b, s);
    mod->kind = UNET_MOD_CONV;
    if ((mod->u.conv = add_layer(b, LAYER_CONV2D, mc, c->in_channels, 3, 1, 1, 1, "input_blocks.0.0")) < 0)
        return b->e->code;
    int n_chans = 0, ch = mc, ds = 1;
    chans[n_chans++] = ch;
    for (int level = 0; level < L; level++) {
        for (int r = 0; r < c->num_res_blocks; r++) {
            int k = b->n_input;
            s = next_seq(b, 0);
            snprintf(path, sizeof path, "input_blocks.%d.0", k);
            if (build_resblock(b, s, path, ch, c->channel_mult[level] * mc, UNET_RESAMPLE_NONE)) return b->e->code;
            ch = c->channel_mult[level] * mc;
            if (has_attention(c, ds)) {
                snprintf(path, sizeof path, "input_blocks.%d.1", k);
                if (build_attention(b, s, path, ch, 0)) return b->e->code;
            }
            chans[n_chans++] = ch;
        }
        if (level != L - 1) {
            int k = b->n_input;
            s = next_seq(b, 0);
            snprintf(path, sizeof path, "input_blocks.%d.0", k);
            int rc = c->resblock_updown ? build_resblock(b, s, path, ch, ch, UNET_RESAMPLE_DOWN)
                                        : build_resampler(b, s, path, ch, UNET_MOD_DOWNSAMPLE);
            if (rc) return rc;
            chans[n_chans++] = ch;
            ds *= 2;
        }
    }

    UNetSeq *mid = b->fill ? &m->middle_block : &b->scratch;
    if (b->fill) memset(mid, 0, sizeof *mid);
    if (build_resblock(b, mid, "middle_block.0", ch, ch, UNET_RESAMPLE_NONE) ||
        build_attention(b, mid, "middle_block.1", ch, 0) ||
        build_resblock(b, mid, "middle_block.2", ch, ch, UNET_RESAMPLE_NONE))
        return b->e->code;

    for (int level = L - 1; level >= 0; level--) {
        for (int i = 0; i <= c->num_res_blocks; i++) {
            int ich = chans[--n_chans], k = b->n_output, j = 0;
            s = next_seq(b, 1);
            snprintf(path, sizeof path, "output_blocks.%d.%d", k, j++);
            int out = mc * c->channel_mult[level];
            if (build_resblock(b, s, path, ch + ich, out, UNET_RESAMPLE_NONE)) return b->e->code;
            ch = out;
            if (has_attention(c, ds)) {
                snprintf(path, sizeof path, "output_blocks.%d.%d", k, j++);
                if (build_attention(b, s, path, ch, 1)) return b->e->code;
            }
            if (level && i == c->num_res_blocks) {
                snprintf(path, sizeof path, "output_blocks.%d.%d", k, j++);
                int rc = c->resblock_updown ? build_resblock(b, s, path, ch, ch, UNET_RESAMPLE_UP)
                                            : build_resampler(b, s, path, ch, UNET_MOD_UPSAMPLE);
                if (rc) return rc;
                ds /= 2;
            }
        }
    }

    if ((m->out_norm = add_norm(b, ch, UNET_GN_GROUPS, "out.0")) < 0 ||
        (m->out_conv = add_layer(b, LAYER_CONV2D, c->out_channels, mc, 3, 1, 1, 1, "out.2")) < 0)
        return b->e->code;
    return 0;
}

// One walk (see unet_build); probe: unet_config_read_widths's file, or NULL.
static int build(UNet *m, const WeightFile *probe, const char *prefix, UNetConfig *probe_cfg, Err *e) {
    Build b;
    memset(&b, 0, sizeof b);
    b.m = m;
    b.fill = m->weights != NULL;
    b.probe = probe;
    b.probe_prefix = prefix;
    b.probe_cfg = probe_cfg;
    b.e = e;
    // input_block_chans holds one entry per input block: 1 + levels x num_res_blocks + levels - 1.
    const UNetConfig *c = &m->cfg;
    size_t n_chans = 1 + (size_t)c->n_channel_mult * ((size_t)c->num_res_blocks + 1);
    int *chans = malloc(n_chans * sizeof *chans);
    if (!chans) return err_set(e, ERR_NOMEM, "UNet: out of memory");
    int rc = build_walk(&b, chans);
    free(chans);
    if (rc) return rc;
    if (b.fill) {
        if (b.n_layers != m->n_layers || b.n_norms != m->n_norms || b.n_tblocks != m->n_tblocks ||
            b.n_params != m->n_params || b.n_floats != m->n_floats || b.n_input != m->n_input_blocks ||
            b.n_output != m->n_output_blocks)
            return err_set(e, ERR_INTERNAL, "UNet: the filling pass disagrees with the counting pass");
    } else {
        m->n_layers = b.n_layers;
        m->n_norms = b.n_norms;
        m->n_tblocks = b.n_tblocks;
        m->n_params = b.n_params;
        m->n_floats = b.n_floats;
        m->n_input_blocks = b.n_input;
        m->n_output_blocks = b.n_output;
    }
    return 0;
}

int unet_build(UNet *m, Err *e) { return build(m, NULL, NULL, NULL, e); }

int unet_config_read_widths(UNetConfig *cfg, const WeightFile *f, const char *prefix, Err *e) {
    UNet *tmp = calloc(1, sizeof *tmp);  // a counting pass: no weights
    if (!tmp) return err_set(e, ERR_NOMEM, "UNet: out of memory");
    memset(cfg->ff_inner, 0, sizeof cfg->ff_inner);
    memset(cfg->attn_heads, 0, sizeof cfg->attn_heads);
    tmp->cfg = *cfg;
    int rc = build(tmp, f, prefix, cfg, e);
    free(tmp);
    return rc;
}
