/* ldm.c: CompVis LatentDiffusion (ldm/models/diffusion/ddpm.py, a506df5) for sampling:
   loading with the EMA rules of docs/DESIGN.md, schedule buffers, scale_factor, conditioning. */
#include "models/ldm.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "autograd/profile.h"
#include "models/ldm_schedule.h"
#include "util/rng.h"

#define UNET_PREFIX "model.diffusion_model."
#define AE_PREFIX "first_stage_model."
#define COND_PREFIX "cond_stage_model."
#define CLASS_EMB_NAME "cond_stage_model.embedding.weight"

// Buffers DDPM.register_schedule / LatentDiffusion register (read or knowingly ignored).
static const char *const schedule_buffers[] = {
    "betas", "alphas_cumprod", "alphas_cumprod_prev", "sqrt_alphas_cumprod", "sqrt_one_minus_alphas_cumprod",
    "log_one_minus_alphas_cumprod", "sqrt_recip_alphas_cumprod", "sqrt_recipm1_alphas_cumprod",
    "posterior_variance", "posterior_log_variance_clipped", "posterior_mean_coef1", "posterior_mean_coef2",
    "lvlb_weights", "logvar", "scale_factor", "cond_ids",
};

static void warn(Ldm *m, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void warn(Ldm *m, const char *fmt, ...) {
    size_t len = strlen(m->warning);
    if (len + 3 >= sizeof m->warning) return;
    if (len) {
        strcpy(m->warning + len, "; ");
        len += 2;
    }
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(m->warning + len, sizeof m->warning - len, fmt, ap);
    va_end(ap);
}

Ldm *ldm_clone_unet(const Ldm *src) {
    Ldm *m = malloc(sizeof *m);
    if (!m) return NULL;
    *m = *src;
    m->borrowed = 1;
    m->ae = NULL;
    m->split_batch = 0;
    m->split_ctx = NULL;
    m->n_split_ctx = 0;
    if (!(m->unet = src->unet ? unet_clone_layers(src->unet) : NULL) && src->unet) {
        free(m);
        return NULL;
    }
    return m;
}

void ldm_free(Ldm *m) {
    if (!m) return;
    ldm_split_free(m);
    if (m->borrowed) {
        unet_free(m->unet);
        free(m);
        return;
    }
    unet_free(m->unet);
    ae_free(m->ae);
    free(m->class_emb_data);
    free(m->betas);
    free(m->alphas_cumprod);
    free(m);
}

// Combinations this build can sample, and sizes that must agree between the sub-configs
// (CompVis does not check them; its forward would fail later with a shape error).
static int check_config(const LdmConfig *c, int parts, Err *e) {
    const char *p = c->path;
    if (c->conditioning_key == LDM_COND_CONCAT || c->conditioning_key == LDM_COND_HYBRID ||
        c->conditioning_key == LDM_COND_ADM)
        return err_set(e, ERR_UNSUPPORTED,
                       "%s: model.params.conditioning_key: '%s' conditioning is not supported (only None and "
                       "crossattn with a ClassEmbedder)%s", p, ldm_cond_key_name(c->conditioning_key),
                       c->conditioning_key == LDM_COND_CONCAT ? " (absent conditioning_key means concat when "
                                                                "concat_mode is true, as in CompVis)" : "");
    if (c->conditioning_key == LDM_COND_CROSSATTN && c->cond_stage.kind == LDM_CS_CLASS_EMBEDDER) {
        if (!c->unet.use_spatial_transformer || c->unet.context_dim != c->cond_stage.embed_dim)
            return err_set(e, ERR_VALUE,
                           "%s: model.params.unet_config.params.context_dim: expected the ClassEmbedder's embed_dim "
                           "%d (with use_spatial_transformer: true), found %d", p, c->cond_stage.embed_dim,
                           c->unet.use_spatial_transformer ? c->unet.context_dim : 0);
    }
    if ((parts & LDM_PART_UNET) && (c->unet.in_channels != c->channels || c->unet.out_channels != c->channels))
        return err_set(e, ERR_VALUE,
                       "%s: model.params.unet_config.params: in_channels and out_channels must equal "
                       "model.params.channels (%d), found %d and %d", p, c->channels, c->unet.in_channels,
                       c->unet.out_channels);
    if ((parts & LDM_PART_FIRST_STAGE) && c->has_first_stage && c->first_stage.embed_dim != c->channels)
        return err_set(e, ERR_VALUE,
                       "%s: model.params.first_stage_config.params.embed_dim: expected model.params.channels (%d), "
                       "found %d", p, c->channels, c->first_stage.embed_dim);
    return 0;
}

void ldm_ema_name(char *dst, size_t cap, const char *rest) {
    char src[512];
    snprintf(src, sizeof src, "diffusion_model.%s", rest);
    size_t k = (size_t)snprintf(dst, cap, "model_ema.");
    for (const char *s = src; *s && k + 1 < cap; s++)
        if (*s != '.') dst[k++] = *s;
    dst[k] = '\0';
}

static int load_ema(Ldm *m, WeightFile *f, LdmEmaMode mode, Err *e) {
    const char *path = weights_path(f);
    int total = unet_param_tensors(m->unet), found = 0;
    char name[600], first_missing[600] = "", first_missing_raw[600] = "";
    for (int i = 0; i < total; i++) {
        const char *pname;
        unet_param_at(m->unet, i, &pname);
        ldm_ema_name(name, sizeof name, pname);
        if (weights_find(f, name)) found++;
        else if (!first_missing[0]) {
            snprintf(first_missing, sizeof first_missing, "%s", name);
            snprintf(first_missing_raw, sizeof first_missing_raw, "%s%s", UNET_PREFIX, pname);
        }
    }
    int complete = total > 0 && found == total;
    if (mode == LDM_EMA_OFF) return 0;
    if (mode == LDM_EMA_ON && !complete)
        return err_set(e, ERR_KEY, "%s: EMA weights requested but tensor '%s' (EMA of '%s') is missing "
                       "(%d of %d UNet parameters have one)", path, first_missing, first_missing_raw, found, total);
    if (mode == LDM_EMA_AUTO && !m->cfg.use_ema) return 0;
    if (!complete) {
        if (found == 0)
            warn(m, "%s: use_ema is true but the file holds no model_ema.* buffers: using the raw UNet weights", path);
        else
            warn(m, "%s: partial EMA set (%d of %d UNet parameters, '%s' missing): using the raw UNet weights", path,
                 found, total, first_missing);
        return 0;
    }
    for (int i = 0; i < total; i++) {
        const char *pname;
        Tensor *p = unet_param_at(m->unet, i, &pname);
        // the buffer has the parameter's checkpoint shape: Conv1d weights are (Cout, Cin, 1) in
        // files and (Cout, Cin, 1, 1) in the Tensor (same data)
        int ndim = unet_param_file_ndim(m->unet, i);
        ldm_ema_name(name, sizeof name, pname);
        if (weights_read_f32(f, name, p->data, ndim, p->shape, e)) return e->code;
    }
    m->using_ema = 1;
    return 0;
}

static int load_schedule(Ldm *m, WeightFile *f, Err *e) {
    const LdmConfig *c = &m->cfg;
    int T = c->timesteps;
    m->T = T;
    double *b64 = malloc((size_t)T * sizeof(double)), *acp64 = malloc((size_t)T * sizeof(double));
    m->betas = malloc((size_t)T * sizeof(float));
    m->alphas_cumprod = malloc((size_t)T * sizeof(float));
    int rc = 0;
    if (!b64 || !acp64 || !m->betas || !m->alphas_cumprod) {
        rc = err_set(e, ERR_NOMEM, "schedule: out of memory");
        goto done;
    }
    if (ldm_make_beta_schedule(c->beta_schedule, T, c->linear_start, c->linear_end, c->cosine_s, b64, e)) {
        rc = err_prefix(e, "%s: model.params", c->path);
        goto done;
    }
    ldm_alphas_cumprod(b64, T, acp64);
    // register_buffer(..., torch.tensor(x, dtype=torch.float32)): round the float64 values once
    for (int i = 0; i < T; i++) {
        m->betas[i] = (float)b64[i];
        m->alphas_cumprod[i] = (float)acp64[i];
    }
    // load_state_dict then overwrites each buffer the file holds
    int from_file = 0;
    if (f && weights_find(f, "betas")) {
        if ((rc = weights_read_f32(f, "betas", m->betas, 1, (int[]){T}, e))) goto done;
        from_file++;
    }
    if (f && weights_find(f, "alphas_cumprod")) {
        if ((rc = weights_read_f32(f, "alphas_cumprod", m->alphas_cumprod, 1, (int[]){T}, e))) goto done;
        from_file++;
    }
    m->schedule_from_file = from_file == 2;
    for (int i = 0; i < T; i++)
        if (!(m->alphas_cumprod[i] > 0 && m->alphas_cumprod[i] <= 1)) {
            rc = err_set(e, ERR_VALUE, "%s: alphas_cumprod[%d] = %g is outside (0, 1]", f ? weights_path(f) : c->path, i,
                         (double)m->alphas_cumprod[i]);
            goto done;
        }
done:
    free(b64);
    free(acp64);
    return rc;
}

// warn: report a disagreement with the config (only worth it when the first stage will decode).
static int load_scale_factor(Ldm *m, WeightFile *f, int warn_mismatch, Err *e) {
    m->scale_factor = m->cfg.scale_factor;
    const WeightInfo *wi = weights_find(f, "scale_factor");
    if (!wi) return 0;
    if (wi->numel != 1)
        return err_set(e, ERR_SHAPE, "%s: tensor 'scale_factor': expected one value, found %zu", weights_path(f),
                       wi->numel);
    float v;
    if (weights_read_f32(f, "scale_factor", &v, wi->ndim, NULL, e)) return e->code;
    if (!(v > 0) || !isfinite(v))
        return err_set(e, ERR_VALUE, "%s: tensor 'scale_factor': expected a positive number, found %g",
                       weights_path(f), (double)v);
    if (warn_mismatch && fabs((double)v - m->cfg.scale_factor) > 1e-6 * m->cfg.scale_factor)
        warn(m, "%s: scale_factor buffer %.9g differs from the config's %.9g: using the file's", weights_path(f),
             (double)v, m->cfg.scale_factor);
    m->scale_factor = (double)v;
    m->scale_factor_from_file = 1;
    return 0;
}

static int is_known(const Ldm *m, const char *name, int parts) {
    size_t n;
    if (!strncmp(name, UNET_PREFIX, n = strlen(UNET_PREFIX)))
        return !(parts & LDM_PART_UNET) || unet_param(m->unet, name + n) != NULL;
    if (!strncmp(name, "model_ema.", 10)) return 1;
    if (!strncmp(name, AE_PREFIX, n = strlen(AE_PREFIX)))
        return !(parts & LDM_PART_FIRST_STAGE) || (m->ae && ae_param(m->ae, name + n) != NULL);
    if (!strncmp(name, COND_PREFIX, strlen(COND_PREFIX)))
        return !(parts & LDM_PART_COND_STAGE) ||
               (m->cfg.cond_stage.kind == LDM_CS_CLASS_EMBEDDER && !strcmp(name, CLASS_EMB_NAME));
    for (size_t i = 0; i < sizeof schedule_buffers / sizeof schedule_buffers[0]; i++)
        if (!strcmp(name, schedule_buffers[i])) return 1;
    return 0;
}

int ldm_load_from(Ldm **out, const LdmConfig *cfg, WeightFile *f, const LdmLoadOpts *opts, Err *e) {
    *out = NULL;
    LdmLoadOpts o = opts ? *opts : (LdmLoadOpts){LDM_EMA_AUTO, LDM_PARTS_ALL};
    if (!o.parts) o.parts = LDM_PARTS_ALL;
    if (check_config(cfg, o.parts, e)) return e->code;
    Ldm *m = calloc(1, sizeof *m);
    if (!m) return err_set(e, ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    const char *path = weights_path(f);
    if (o.parts & LDM_PART_UNET) {
        int unk = 0;
        if (unet_config_read_widths(&m->cfg.unet, f, UNET_PREFIX, e)) goto fail;  // a pruned checkpoint's
        if (unet_new(&m->unet, &m->cfg.unet, e)) {
            err_prefix(e, "%s: model.params.unet_config", cfg->path);
            goto fail;
        }
        if (unet_load(m->unet, f, UNET_PREFIX, &unk, e) || load_ema(m, f, o.ema, e)) goto fail;
    }
    if ((o.parts & LDM_PART_FIRST_STAGE) && cfg->has_first_stage) {
        if (ae_new(&m->ae, &cfg->first_stage, e)) {
            err_prefix(e, "%s: model.params.first_stage_config", cfg->path);
            goto fail;
        }
        if (ae_load(m->ae, f, AE_PREFIX, NULL, e)) goto fail;
    }
    if ((o.parts & LDM_PART_COND_STAGE) && cfg->cond_stage.kind == LDM_CS_CLASS_EMBEDDER) {
        const int shape[2] = {cfg->cond_stage.n_classes, cfg->cond_stage.embed_dim};
        m->class_emb_data = malloc((size_t)shape[0] * (size_t)shape[1] * sizeof(float));
        if (!m->class_emb_data) {
            err_set(e, ERR_NOMEM, "out of memory for %s", CLASS_EMB_NAME);
            goto fail;
        }
        if (weights_read_f32(f, CLASS_EMB_NAME, m->class_emb_data, 2, shape, e)) goto fail;
        tensor_init_param(&m->class_emb, m->class_emb_data, NULL, 2, shape);
    }
    if (load_schedule(m, f, e) || load_scale_factor(m, f, m->ae != NULL, e)) goto fail;
    const char *first_unknown = NULL;
    for (int i = 0; i < weights_count(f); i++) {
        const char *name = weights_info(f, i)->name;
        int other = 0;
        for (int k = 0; o.other_known && o.other_known[k] && !other; k++) other = !strcmp(name, o.other_known[k]);
        if (other || is_known(m, name, o.parts)) continue;
        if (!first_unknown) first_unknown = name;
        m->n_unknown++;
    }
    if (m->n_unknown) warn(m, "%s: %d tensor%s not used (first: '%s')", path, m->n_unknown,
                           m->n_unknown == 1 ? "" : "s", first_unknown);
    *out = m;
    return 0;
fail:
    ldm_free(m);
    return e->code;
}

int ldm_load(Ldm **m, const char *config_path, const char *weights_path, const LdmLoadOpts *opts, Err *e) {
    *m = NULL;
    LdmConfig *cfg = malloc(sizeof *cfg);  // large (paths), keep it off the stack
    if (!cfg) return err_set(e, ERR_NOMEM, "out of memory");
    WeightFile *f = NULL;
    int rc = ldm_config_load(cfg, config_path, e);
    if (!rc) rc = weights_open(&f, weights_path, e);
    if (!rc) rc = ldm_load_from(m, cfg, f, opts, e);
    weights_close(f);
    free(cfg);
    return rc;
}

int ldm_new_random(Ldm **out, const LdmConfig *cfg, uint64_t seed, Err *e) {
    *out = NULL;
    const int parts = LDM_PART_UNET | LDM_PART_COND_STAGE;
    if (check_config(cfg, parts, e)) return e->code;
    Ldm *m = calloc(1, sizeof *m);
    if (!m) return err_set(e, ERR_NOMEM, "out of memory");
    m->cfg = *cfg;
    Rng r;
    rng_seed(&r, seed, 0);
    if (unet_new(&m->unet, &cfg->unet, e)) {
        err_prefix(e, "%s: model.params.unet_config", cfg->path);
        goto fail;
    }
    // torch's default Conv/Linear init scale U(-1/sqrt(fan_in), 1/sqrt(fan_in)); norms
    // gamma 1, every bias 0: activations stay O(1) through the depth of the UNet
    for (int i = 0; i < unet_param_tensors(m->unet); i++) {
        const char *name;
        Tensor *t = unet_param_at(m->unet, i, &name);
        size_t len = strlen(name);
        int is_bias = len >= 5 && !strcmp(name + len - 5, ".bias");
        if (is_bias) memset(t->data, 0, t->n * sizeof(float));
        else if (t->ndim == 1) for (size_t k = 0; k < t->n; k++) t->data[k] = 1.0f;
        else {
            float b = 1.0f / sqrtf((float)(t->n / (size_t)t->shape[0]));
            rng_uniform_fill(&r, t->data, t->n, -b, b);
        }
    }
    if (cfg->cond_stage.kind == LDM_CS_CLASS_EMBEDDER) {
        const int shape[2] = {cfg->cond_stage.n_classes, cfg->cond_stage.embed_dim};
        m->class_emb_data = malloc((size_t)shape[0] * (size_t)shape[1] * sizeof(float));
        if (!m->class_emb_data) {
            err_set(e, ERR_NOMEM, "out of memory for %s", CLASS_EMB_NAME);
            goto fail;
        }
        rng_normal_fill(&r, m->class_emb_data, (size_t)shape[0] * (size_t)shape[1]);  // nn.Embedding: N(0, 1)
        tensor_init_param(&m->class_emb, m->class_emb_data, NULL, 2, shape);
    }
    if (load_schedule(m, NULL, e)) goto fail;
    m->scale_factor = cfg->scale_factor;
    *out = m;
    return 0;
fail:
    ldm_free(m);
    return e->code;
}

int ldm_is_class_conditional(const Ldm *m) {
    return m->cfg.cond_stage.kind == LDM_CS_CLASS_EMBEDDER && m->cfg.conditioning_key == LDM_COND_CROSSATTN;
}

int ldm_n_classes(const Ldm *m) { return ldm_is_class_conditional(m) ? m->cfg.cond_stage.n_classes : 0; }

int ldm_uncond_label(const Ldm *m) { return ldm_is_class_conditional(m) ? m->cfg.cond_stage.n_classes - 1 : -1; }

void ldm_latent_shape(const Ldm *m, int *C, int *H, int *W) {
    *C = m->cfg.channels;
    *H = *W = m->cfg.image_size;
}

// encoders/modules.py ClassEmbedder.forward: c = batch[key][:, None]; c = self.embedding(c).
Tensor *ldm_context(Ctx *c, Ldm *m, const int *y, int n) {
    if (!m->class_emb.data) {
        err_set(&c->err, ERR_INTERNAL, "ldm_context: the model has no class embedder loaded");
        return NULL;
    }
    Tensor *emb = t_embedding(c, &m->class_emb, y, n);
    return t_reshape(c, emb, 3, (const int[]){n, 1, m->cfg.cond_stage.embed_dim});
}

// LatentDiffusion.apply_model -> DiffusionWrapper.forward: None: diffusion_model(x, t);
// crossattn: diffusion_model(x, t, context=cat(c_crossattn, 1)) with the one context tensor.
Tensor *ldm_apply_model(Ctx *c, Ldm *m, Tensor *x, const float *t, const int *y) {
    if (!x) return NULL;
    if (!m->unet) {
        err_set(&c->err, ERR_INTERNAL, "ldm_apply_model: the UNet was not loaded");
        return NULL;
    }
    if (ldm_is_class_conditional(m) && !y) {
        err_set(&c->err, ERR_VALUE, "ldm_apply_model: a class-conditional model needs labels");
        return NULL;
    }
    if (ldm_split_applies(c, m, x->shape[0])) return ldm_split_apply(c, m, x, t, y);
    if (!ldm_is_class_conditional(m)) return unet_forward(c, m->unet, x, t, NULL, NULL);
    CtxScope s = ctx_scope_begin(c);
    Tensor *ctx = ldm_context(c, m, y, x->shape[0]);
    return ctx_scope_end(c, s, unet_forward(c, m->unet, x, t, ctx, NULL));
}

Tensor *ldm_decode_first_stage(Ctx *c, Ldm *m, Tensor *z) {
    if (!z) return NULL;
    if (!m->ae) {
        err_set(&c->err, ERR_UNSUPPORTED, "%s: the model has no first_stage_config to decode with", m->cfg.path);
        return NULL;
    }
    // z = 1. / self.scale_factor * z: a Python float (config) is applied as float32(1 / sf);
    // the float32 buffer gives the float32 quotient.
    if (ldm_split_applies(c, m, z->shape[0])) return ldm_split_decode(c, m, z);
    float inv = m->scale_factor_from_file ? 1.0f / (float)m->scale_factor : (float)(1.0 / m->scale_factor);
    CtxScope s = ctx_scope_begin(c);
    int pb = prof_block_begin(c, "first_stage", -1);
    Tensor *zs = t_scale(c, z, inv);
    Tensor *img = ae_decode(c, m->ae, zs);
    prof_block_end(c, pb);
    return ctx_scope_end(c, s, img);
}
