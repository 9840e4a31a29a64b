/* autoencoder.c: CompVis ldm/models/autoencoder.py (a506df5) AutoencoderKL / VQModel /
   VQModelInterface: parameter table, loading, encode / decode. The blocks are in
   ae_blocks.c, the Encoder / Decoder trees in ae_coder.c, the codebook in ae_quantize.c. */
#include "models/autoencoder/autoencoder.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "models/autoencoder/ae_impl.h"
#include "util/grow.h"

void ae_ddconfig_defaults(AeDDConfig *dd) {
    // model.py Encoder.__init__(*, ch, out_ch, ch_mult=(1,2,4,8), num_res_blocks, attn_resolutions,
    // dropout=0.0, resamp_with_conv=True, in_channels, resolution, z_channels, double_z=True, ...)
    memset(dd, 0, sizeof *dd);
    dd->double_z = 1;
    dd->n_ch_mult = 4;
    dd->ch_mult[0] = 1;
    dd->ch_mult[1] = 2;
    dd->ch_mult[2] = 4;
    dd->ch_mult[3] = 8;
    dd->resamp_with_conv = 1;
}

int ae_config_check(const AeConfig *cfg, Err *e) {
    const AeDDConfig *dd = &cfg->dd;
    if (dd->ch <= 0 || dd->z_channels <= 0 || dd->in_channels <= 0 || dd->out_ch <= 0 || dd->resolution <= 0)
        return err_set(e, ERR_VALUE, "ddconfig: ch, z_channels, in_channels, out_ch, resolution must be positive");
    if (dd->num_res_blocks < 0)
        return err_set(e, ERR_VALUE, "ddconfig.num_res_blocks: expected >= 0, found %d", dd->num_res_blocks);
    if (dd->n_ch_mult < 1 || dd->n_ch_mult > AE_MAX_LEVELS)
        return err_set(e, ERR_VALUE, "ddconfig.ch_mult: expected 1 to %d entries, found %d", AE_MAX_LEVELS,
                       dd->n_ch_mult);
    for (int i = 0; i < dd->n_ch_mult; i++) {
        // GroupNorm(32, C) needs C divisible by 32
        if (dd->ch_mult[i] <= 0 || (dd->ch * dd->ch_mult[i]) % 32 != 0)
            return err_set(e, ERR_VALUE, "ddconfig.ch_mult[%d]: ch * ch_mult = %d must be a positive multiple of 32 "
                           "(GroupNorm with 32 groups)", i, dd->ch * dd->ch_mult[i]);
    }
    int f = 1 << (dd->n_ch_mult - 1);
    if (dd->resolution % f != 0)
        return err_set(e, ERR_VALUE, "ddconfig.resolution: %d is not divisible by 2^(len(ch_mult) - 1) = %d",
                       dd->resolution, f);
    if (cfg->embed_dim <= 0) return err_set(e, ERR_VALUE, "embed_dim: expected > 0, found %d", cfg->embed_dim);
    if (cfg->kind == AE_KL && !dd->double_z)
        return err_set(e, ERR_VALUE, "ddconfig.double_z: AutoencoderKL needs double_z: true");
    if (cfg->kind != AE_KL && cfg->n_embed <= 0)
        return err_set(e, ERR_VALUE, "n_embed: expected > 0, found %d", cfg->n_embed);
    return 0;
}

int ae_param_add(AeModel *m, Tensor *t, int ndim, const int *shape, Err *e, const char *fmt, ...) {
    if (grow_array((void **)&m->params, &m->cap_params, m->n_params + 1, 128, sizeof *m->params))
        return err_set(e, ERR_NOMEM, "autoencoder: out of memory for the parameter table");
    AeParam *p = &m->params[m->n_params++];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->name, sizeof p->name, fmt, ap);
    va_end(ap);
    tensor_init_param(t, NULL, NULL, ndim, shape);  // data pointed into the block by ae_new
    p->t = t;
    return 0;
}

int ae_conv_add(AeModel *m, ModelLayer *l, int cin, int cout, int k, int stride, int pad, Err *e, const char *fmt,
                ...) {
    memset(l, 0, sizeof *l);
    l->kind = LAYER_CONV2D;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->name, sizeof l->name, fmt, ap);
    va_end(ap);
    l->stride = stride;
    l->pad = pad;
    if (ae_param_add(m, &l->weight, 4, (int[]){cout, cin, k, k}, e, "%s.weight", l->name)) return e->code;
    return ae_param_add(m, &l->bias, 1, (int[]){cout}, e, "%s.bias", l->name);
}

void ae_free(AeModel *m) {
    if (!m) return;
    ae_coder_free(&m->enc);
    ae_coder_free(&m->dec);
    free(m->params);
    free(m->block);
    free(m);
}

int ae_new(AeModel **out, const AeConfig *cfg, Err *e) {
    *out = NULL;
    if (ae_config_check(cfg, e)) return e->code;
    AeModel *m = calloc(1, sizeof *m);
    if (!m) return err_set(e, ERR_NOMEM, "autoencoder: out of memory");
    m->cfg = *cfg;
    const AeDDConfig *dd = &cfg->dd;
    int zc = dd->z_channels, ed = cfg->embed_dim;
    // registration order: encoder, decoder, (loss: Identity), quantize (VQ), quant_conv, post_quant_conv
    if (ae_encoder_build(m, &m->enc, dd, e) || ae_decoder_build(m, &m->dec, dd, e)) goto fail;
    if (cfg->kind != AE_KL &&
        ae_param_add(m, &m->codebook, 2, (int[]){cfg->n_embed, ed}, e, "quantize.embedding.weight"))
        goto fail;
    // AutoencoderKL: quant_conv 2 z -> 2 embed_dim (mean and logvar); VQ: z -> embed_dim
    int kl = cfg->kind == AE_KL;
    if (ae_conv_add(m, &m->quant_conv, kl ? 2 * zc : zc, kl ? 2 * ed : ed, 1, 1, 0, e, "quant_conv") ||
        ae_conv_add(m, &m->post_quant_conv, ed, zc, 1, 1, 0, e, "post_quant_conv"))
        goto fail;
    size_t total = 0;
    for (int i = 0; i < m->n_params; i++) {
        size_t n = (m->params[i].t->n + 15) / 16 * 16;  // 64-byte aligned starts
        if (!size_add_ok(total, n, &total)) {
            err_set(e, ERR_VALUE, "autoencoder: parameter count overflows");
            goto fail;
        }
    }
    m->block = aligned_alloc(64, (total ? total : 16) * sizeof(float));
    if (!m->block) {
        err_set(e, ERR_NOMEM, "autoencoder: cannot allocate %zu MiB of weights", total * sizeof(float) >> 20);
        goto fail;
    }
    memset(m->block, 0, total * sizeof(float));
    size_t off = 0;
    for (int i = 0; i < m->n_params; i++) {
        m->params[i].t->data = m->block + off;
        off += (m->params[i].t->n + 15) / 16 * 16;
    }
    m->n_floats = total;
    *out = m;
    return 0;
fail:
    ae_free(m);
    return e->code;
}

static int param_index(const AeModel *m, const char *name) {
    for (int i = 0; i < m->n_params; i++)
        if (!strcmp(m->params[i].name, name)) return i;
    return -1;
}

int ae_load(AeModel *m, WeightFile *f, const char *prefix, int *unknown, Err *e) {
    char key[512];
    for (int i = 0; i < m->n_params; i++) {
        Tensor *t = m->params[i].t;
        snprintf(key, sizeof key, "%s%s", prefix, m->params[i].name);
        if (weights_read_f32(f, key, t->data, t->ndim, t->shape, e)) return e->code;
    }
    if (unknown) {
        size_t plen = strlen(prefix);
        int n = 0;
        for (int i = 0; i < weights_count(f); i++) {
            const char *name = weights_info(f, i)->name;
            if (!strncmp(name, prefix, plen) && param_index(m, name + plen) < 0) n++;
        }
        *unknown = n;
    }
    return 0;
}

const AeConfig *ae_config(const AeModel *m) { return &m->cfg; }

size_t ae_param_count(const AeModel *m) {
    size_t n = 0;
    for (int i = 0; i < m->n_params; i++) n += m->params[i].t->n;
    return n;
}

Tensor *ae_param(AeModel *m, const char *name) {
    int i = param_index(m, name);
    return i < 0 ? NULL : m->params[i].t;
}

void ae_latent_shape(const AeModel *m, int *C, int *H, int *W) {
    int f = 1 << (m->cfg.dd.n_ch_mult - 1);
    *C = m->cfg.embed_dim;
    *H = *W = m->cfg.dd.resolution / f;
}

static int check_input(Ctx *c, Tensor *x, int channels, const char *what) {
    if (!x) return 0;
    if (x->ndim != 4 || x->shape[1] != channels) {
        char buf[64];
        err_set(&c->err, ERR_SHAPE, "autoencoder %s: expected input (N, %d, H, W), found %s", what, channels,
                tensor_shape_str(x, buf, sizeof buf));
        return 0;
    }
    return 1;
}

Tensor *ae_decode_noquant(Ctx *c, AeModel *m, Tensor *z) {
    if (!check_input(c, z, m->cfg.embed_dim, "decode")) return NULL;
    int prev = ctx_set_grad(c, 0);
    CtxScope s = ctx_scope_begin(c);
    Tensor *h = ctx_scope_end(c, s, layer_forward(c, &m->post_quant_conv, z));
    Tensor *out = ctx_scope_end(c, s, ae_decoder_forward(c, &m->dec, &m->cfg.dd, h));
    ctx_set_grad(c, prev);
    return out;
}

// LatentDiffusion.decode_first_stage (without the 1 / scale_factor): only VQModelInterface.decode
// quantizes (force_not_quantize=False); VQModel.decode and AutoencoderKL.decode do not.
Tensor *ae_decode(Ctx *c, AeModel *m, Tensor *z) {
    if (m->cfg.kind != AE_VQ_INTERFACE) return ae_decode_noquant(c, m, z);
    if (!check_input(c, z, m->cfg.embed_dim, "decode")) return NULL;
    CtxScope s = ctx_scope_begin(c);
    Tensor *q = ctx_scope_end(c, s, ae_quantize(c, m, z));
    return ctx_scope_end(c, s, ae_decode_noquant(c, m, q));
}

int ae_encode(Ctx *c, AeModel *m, Tensor *x, Tensor **mean, Tensor **logvar) {
    *mean = NULL;
    if (logvar) *logvar = NULL;
    if (!check_input(c, x, m->cfg.dd.in_channels, "encode")) return c->err.code ? c->err.code : ERR_INTERNAL;
    int prev = ctx_set_grad(c, 0);
    CtxScope s = ctx_scope_begin(c);
    Tensor *h = ctx_scope_end(c, s, ae_encoder_forward(c, &m->enc, &m->cfg.dd, x));
    Tensor *moments = ctx_scope_end(c, s, layer_forward(c, &m->quant_conv, h));
    ctx_set_grad(c, prev);
    if (!moments) return c->err.code;
    int ed = m->cfg.embed_dim;
    if (m->cfg.kind == AE_KL) {
        // distributions.py DiagonalGaussianDistribution: mean, logvar = chunk(moments, 2, dim=1);
        // logvar = clamp(logvar, -30, 20)
        *mean = t_slice(c, moments, 1, 0, ed);
        Tensor *lv = t_slice(c, moments, 1, ed, ed);
        if (!*mean || !lv) return c->err.code;
        for (size_t i = 0; i < lv->n; i++) {
            float v = lv->data[i];
            lv->data[i] = v < -30.0f ? -30.0f : (v > 20.0f ? 20.0f : v);
        }
        if (logvar) *logvar = lv;
        return 0;
    }
    // VQModelInterface.encode stops before the quantizer; VQModel.encode quantizes
    *mean = m->cfg.kind == AE_VQ ? ae_quantize(c, m, moments) : moments;
    return *mean ? 0 : c->err.code;
}
