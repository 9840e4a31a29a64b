/* ldm_config.c: CompVis YAML -> LdmConfig. Defaults follow CompVis latent-diffusion a506df5:
   ldm/models/diffusion/ddpm.py DDPM.__init__ / LatentDiffusion.__init__, openaimodel.py
   UNetModel.__init__, model.py Encoder.__init__, encoders/modules.py ClassEmbedder.__init__. */
#include "models/ldm_config.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "io/cfg.h"

// "file: key.path.key: <msg>" for a key of map.
static int key_err(Err *e, int code, const CfgNode *map, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static int key_err(Err *e, int code, const CfgNode *map, const char *key, const char *fmt, ...) {
    char msg[400];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    const char *p = cfg_node_path(map);
    return err_set(e, code, "%s: %s%s%s: %s", cfg_file(map), p && *p ? p : "", p && *p ? "." : "", key, msg);
}

// Getter wrappers: 0 found, 1 absent (value unchanged), <0 error; `required` turns absent into ERR_KEY.
static int get_int(const CfgNode *map, const char *key, int *out, int required, int min, Err *e) {
    int r = cfg_get_int(map, key, out, e);
    if (r < 0) return r;
    if (r == 1) return required ? -key_err(e, ERR_KEY, map, key, "required key is missing") : 1;
    if (*out < min) return -key_err(e, ERR_VALUE, map, key, "expected an integer >= %d, found %d", min, *out);
    return 0;
}

static int get_pos_double(const CfgNode *map, const char *key, double *out, Err *e) {
    int r = cfg_get_double(map, key, out, e);
    if (r != 0) return r;
    if (!isfinite(*out) || *out <= 0)
        return -key_err(e, ERR_VALUE, map, key, "expected a positive number, found %g", *out);
    return 0;
}

static int get_bool(const CfgNode *map, const char *key, int *out, Err *e) {
    return cfg_get_bool(map, key, out, e);
}

static int get_str_copy(const CfgNode *map, const char *key, char *dst, size_t cap, Err *e) {
    const char *s = NULL;
    int r = cfg_get_str(map, key, &s, e);
    if (r != 0) return r;
    if (strlen(s) >= cap)
        return -key_err(e, ERR_VALUE, map, key, "expected at most %zu characters, found %zu", cap - 1, strlen(s));
    strcpy(dst, s);
    return 0;
}

static int get_int_list(const CfgNode *map, const char *key, int *out, int max, int *count, int required,
                        int min, Err *e) {
    int r = cfg_get_int_list(map, key, out, max, count, e);
    if (r < 0) return r;
    if (r == 1) return required ? -key_err(e, ERR_KEY, map, key, "required key is missing") : 1;
    for (int i = 0; i < *count; i++)
        if (out[i] < min)
            return -key_err(e, ERR_VALUE, map, key, "entry %d: expected an integer >= %d, found %d", i, min, out[i]);
    return 0;
}

// A conditioning_key read as a string: NULL (absent or null) or the text "None".
static int is_none_text(const char *s) { return !s || !strcmp(s, "None"); }

// 1 if n is absent or a scalar None (an optional Python argument left at None).
static int is_none_node(const CfgNode *n) {
    return !n || cfg_is_null(n) || (cfg_kind(n) == CFG_SCALAR && !cfg_is_quoted(n) && !strcmp(cfg_scalar(n), "None"));
}

static int child_map(const CfgNode *map, const char *key, const CfgNode **out, int required, Err *e) {
    const CfgNode *n = cfg_child(map, key);
    *out = NULL;
    if (!n) return required ? -key_err(e, ERR_KEY, map, key, "required key is missing") : 1;
    if (cfg_kind(n) != CFG_MAP) {
        const char *s = cfg_scalar(n);
        return -key_err(e, ERR_VALUE, map, key, "expected a map, found %s", s ? s : "a list");
    }
    *out = n;
    return 0;
}

// target of a {target:, params:} map; ERR_KEY when missing.
static int get_target(const CfgNode *map, const char **target, Err *e) {
    int r = cfg_get_str(map, "target", target, e);
    if (r < 0) return r;
    if (r == 1) return -key_err(e, ERR_KEY, map, "target", "required key is missing");
    return 0;
}

static int parse_unet(UNetConfig *u, const CfgNode *uc, Err *e) {
    const char *target;
    if (get_target(uc, &target, e) < 0) return e->code;
    if (strcmp(target, LDM_UNET_TARGET) != 0)
        return key_err(e, ERR_VALUE, uc, "target", "expected %s, found '%s'", LDM_UNET_TARGET, target);
    const CfgNode *p;
    if (child_map(uc, "params", &p, 1, e) < 0) return e->code;
    unet_config_defaults(u);
    // openaimodel.py UNetModel.__init__: these have no default
    if (get_int(p, "image_size", &u->image_size, 1, 1, e) < 0) return e->code;
    if (get_int(p, "in_channels", &u->in_channels, 1, 1, e) < 0) return e->code;
    if (get_int(p, "model_channels", &u->model_channels, 1, 1, e) < 0) return e->code;
    if (get_int(p, "out_channels", &u->out_channels, 1, 1, e) < 0) return e->code;
    if (get_int(p, "num_res_blocks", &u->num_res_blocks, 1, 1, e) < 0) return e->code;
    if (get_int_list(p, "attention_resolutions", u->attention_resolutions, UNET_MAX_LEVELS,
                     &u->n_attention_resolutions, 1, 1, e) < 0)
        return e->code;
    int n = u->n_channel_mult;
    int r = get_int_list(p, "channel_mult", u->channel_mult, UNET_MAX_LEVELS, &n, 0, 1, e);
    if (r < 0) return e->code;
    if (r == 0) {
        if (n == 0) return key_err(e, ERR_VALUE, p, "channel_mult", "expected a non-empty list, found []");
        u->n_channel_mult = n;
    }
    double dropout = 0;
    if (cfg_get_double(p, "dropout", &dropout, e) < 0) return e->code;
    if (get_bool(p, "conv_resample", &u->conv_resample, e) < 0) return e->code;
    int dims = 2;
    if (get_int(p, "dims", &dims, 0, 1, e) < 0) return e->code;
    if (dims != 2) return key_err(e, ERR_UNSUPPORTED, p, "dims", "only dims = 2 is supported, found %d", dims);
    if (!is_none_node(cfg_child(p, "num_classes")) && get_int(p, "num_classes", &u->num_classes, 0, 1, e) < 0)
        return e->code;
    int flag = 0;
    if (get_bool(p, "use_checkpoint", &flag, e) < 0) return e->code;  // gradient checkpointing: no effect on values
    if (get_bool(p, "use_fp16", &flag, e) < 0) return e->code;
    if (flag) return key_err(e, ERR_UNSUPPORTED, p, "use_fp16", "fp16 UNets are not supported (float32 only)");
    if (get_int(p, "num_heads", &u->num_heads, 0, -1, e) < 0) return e->code;
    if (get_int(p, "num_head_channels", &u->num_head_channels, 0, -1, e) < 0) return e->code;
    if (get_int(p, "num_heads_upsample", &u->num_heads_upsample, 0, -1, e) < 0) return e->code;
    if (get_bool(p, "use_scale_shift_norm", &u->use_scale_shift_norm, e) < 0) return e->code;
    if (get_bool(p, "resblock_updown", &u->resblock_updown, e) < 0) return e->code;
    if (get_bool(p, "use_new_attention_order", &u->use_new_attention_order, e) < 0) return e->code;
    if (get_bool(p, "use_spatial_transformer", &u->use_spatial_transformer, e) < 0) return e->code;
    if (get_int(p, "transformer_depth", &u->transformer_depth, 0, 1, e) < 0) return e->code;
    if (!is_none_node(cfg_child(p, "context_dim")) && get_int(p, "context_dim", &u->context_dim, 0, 1, e) < 0)
        return e->code;
    if (!is_none_node(cfg_child(p, "n_embed")))
        return key_err(e, ERR_UNSUPPORTED, p, "n_embed", "codebook-id prediction (n_embed) is not supported");
    if (get_bool(p, "legacy", &u->legacy, e) < 0) return e->code;
    int rc = unet_config_check(u, e);
    if (rc) return err_prefix(e, "%s: %s", cfg_file(p), cfg_node_path(p));
    return 0;
}

static int parse_ddconfig(AeDDConfig *dd, const CfgNode *d, int kl, Err *e) {
    ae_ddconfig_defaults(dd);
    if (get_bool(d, "double_z", &dd->double_z, e) < 0) return e->code;
    if (get_int(d, "z_channels", &dd->z_channels, 1, 1, e) < 0) return e->code;
    if (get_int(d, "resolution", &dd->resolution, 1, 1, e) < 0) return e->code;
    if (get_int(d, "in_channels", &dd->in_channels, 1, 1, e) < 0) return e->code;
    if (get_int(d, "out_ch", &dd->out_ch, 1, 1, e) < 0) return e->code;
    if (get_int(d, "ch", &dd->ch, 1, 1, e) < 0) return e->code;
    int n = 0;
    int r = get_int_list(d, "ch_mult", dd->ch_mult, AE_MAX_LEVELS, &n, 0, 1, e);
    if (r < 0) return e->code;
    if (r == 0) {
        if (n == 0) return key_err(e, ERR_VALUE, d, "ch_mult", "expected a non-empty list, found []");
        dd->n_ch_mult = n;
    }
    if (get_int(d, "num_res_blocks", &dd->num_res_blocks, 1, 0, e) < 0) return e->code;
    if (get_int_list(d, "attn_resolutions", dd->attn_resolutions, AE_MAX_LEVELS * 2, &dd->n_attn_resolutions, 1,
                     1, e) < 0)
        return e->code;
    double dropout = 0;
    if (cfg_get_double(d, "dropout", &dropout, e) < 0) return e->code;
    dd->dropout = (float)dropout;
    if (get_bool(d, "resamp_with_conv", &dd->resamp_with_conv, e) < 0) return e->code;
    int flag = 0;
    if (get_bool(d, "use_linear_attn", &flag, e) < 0) return e->code;
    if (flag) return key_err(e, ERR_UNSUPPORTED, d, "use_linear_attn", "LinearAttention blocks are not supported");
    char attn_type[32] = "vanilla";
    if (get_str_copy(d, "attn_type", attn_type, sizeof attn_type, e) < 0) return e->code;
    if (!strcmp(attn_type, "none")) dd->attn_none = 1;
    else if (strcmp(attn_type, "vanilla") != 0)
        return key_err(e, ERR_UNSUPPORTED, d, "attn_type", "expected vanilla or none, found '%s'", attn_type);
    flag = 0;
    if (get_bool(d, "give_pre_end", &flag, e) < 0) return e->code;
    if (flag) return key_err(e, ERR_UNSUPPORTED, d, "give_pre_end", "must be false for sampling");
    if (get_bool(d, "tanh_out", &flag, e) < 0) return e->code;
    if (flag) return key_err(e, ERR_UNSUPPORTED, d, "tanh_out", "tanh_out decoders are not supported");
    if (kl && !dd->double_z)  // AutoencoderKL.__init__: assert ddconfig["double_z"]
        return key_err(e, ERR_VALUE, d, "double_z", "AutoencoderKL needs double_z: true, found false");
    return 0;
}

static int parse_first_stage(AeConfig *a, const CfgNode *fc, Err *e) {
    const char *target;
    if (get_target(fc, &target, e) < 0) return e->code;
    memset(a, 0, sizeof *a);
    if (!strcmp(target, "ldm.models.autoencoder.AutoencoderKL")) a->kind = AE_KL;
    else if (!strcmp(target, "ldm.models.autoencoder.VQModel")) a->kind = AE_VQ;
    else if (!strcmp(target, "ldm.models.autoencoder.VQModelInterface")) a->kind = AE_VQ_INTERFACE;
    else
        return key_err(e, ERR_UNSUPPORTED, fc, "target",
                       "first stage '%s' is not supported (expected ldm.models.autoencoder.AutoencoderKL, "
                       "VQModel or VQModelInterface)", target);
    const CfgNode *p, *d;
    if (child_map(fc, "params", &p, 1, e) < 0) return e->code;
    if (get_int(p, "embed_dim", &a->embed_dim, 1, 1, e) < 0) return e->code;
    if (a->kind != AE_KL) {
        if (get_int(p, "n_embed", &a->n_embed, 1, 1, e) < 0) return e->code;
        if (!is_none_node(cfg_child(p, "remap")))
            return key_err(e, ERR_UNSUPPORTED, p, "remap", "codebook index remapping is not supported");
    }
    if (child_map(p, "ddconfig", &d, 1, e) < 0) return e->code;
    if (parse_ddconfig(&a->dd, d, a->kind == AE_KL, e)) return e->code;
    int rc = ae_config_check(a, e);
    if (rc) return err_prefix(e, "%s: %s", cfg_file(d), cfg_node_path(d));
    return 0;
}

static int parse_cond_stage(LdmCondStageConfig *cs, const CfgNode *params, Err *e) {
    memset(cs, 0, sizeof *cs);
    const CfgNode *n = cfg_child(params, "cond_stage_config");
    if (!n) return key_err(e, ERR_KEY, params, "cond_stage_config", "required key is missing");
    if (cfg_kind(n) == CFG_SCALAR) {
        const char *s = cfg_scalar(n);
        if (!strcmp(s, "__is_unconditional__")) {
            cs->kind = LDM_CS_UNCONDITIONAL;
            return 0;
        }
        return key_err(e, ERR_UNSUPPORTED, params, "cond_stage_config",
                       "expected __is_unconditional__ or a ClassEmbedder, found '%s'", s);
    }
    if (cfg_kind(n) != CFG_MAP)
        return key_err(e, ERR_VALUE, params, "cond_stage_config", "expected a map, found a list");
    const char *target;
    if (get_target(n, &target, e) < 0) return e->code;
    if (strcmp(target, LDM_CLASS_EMBEDDER_TARGET) != 0)
        return key_err(e, ERR_UNSUPPORTED, n, "target",
                       "conditioning model '%s' is not supported (only %s and __is_unconditional__)", target,
                       LDM_CLASS_EMBEDDER_TARGET);
    cs->kind = LDM_CS_CLASS_EMBEDDER;
    cs->n_classes = 1000;  // ClassEmbedder(embed_dim, n_classes=1000, key='class')
    strcpy(cs->key, "class");
    const CfgNode *p;
    if (child_map(n, "params", &p, 1, e) < 0) return e->code;
    if (get_int(p, "embed_dim", &cs->embed_dim, 1, 1, e) < 0) return e->code;
    if (get_int(p, "n_classes", &cs->n_classes, 0, 2, e) < 0) return e->code;
    if (get_str_copy(p, "key", cs->key, sizeof cs->key, e) < 0) return e->code;
    return 0;
}

static int parse_model(LdmConfig *c, const CfgNode *root, Err *e) {
    const CfgNode *model, *p;
    if (child_map(root, "model", &model, 1, e) < 0) return e->code;
    const char *target;
    if (get_target(model, &target, e) < 0) return e->code;
    if (strcmp(target, LDM_TARGET) != 0)
        return key_err(e, ERR_VALUE, model, "target", "expected %s, found '%s'", LDM_TARGET, target);
    if (child_map(model, "params", &p, 1, e) < 0) return e->code;

    // DDPM.__init__ defaults
    c->timesteps = 1000;
    c->beta_schedule = LDM_BETA_LINEAR;
    c->linear_start = 1e-4;
    c->linear_end = 2e-2;
    c->cosine_s = 8e-3;
    c->parameterization = LDM_PARAM_EPS;
    c->use_ema = 1;
    c->image_size = 256;
    c->channels = 3;
    strcpy(c->first_stage_key, "image");
    // LatentDiffusion.__init__ defaults
    c->scale_factor = 1.0;
    c->scale_by_std = 0;
    strcpy(c->cond_stage_key, "image");

    if (get_int(p, "timesteps", &c->timesteps, 0, 1, e) < 0) return e->code;
    char s[64] = "linear";
    if (get_str_copy(p, "beta_schedule", s, sizeof s, e) < 0) return e->code;
    if (!strcmp(s, "linear")) c->beta_schedule = LDM_BETA_LINEAR;
    else if (!strcmp(s, "cosine")) c->beta_schedule = LDM_BETA_COSINE;
    else if (!strcmp(s, "sqrt_linear")) c->beta_schedule = LDM_BETA_SQRT_LINEAR;
    else if (!strcmp(s, "sqrt")) c->beta_schedule = LDM_BETA_SQRT;
    else
        return key_err(e, ERR_VALUE, p, "beta_schedule", "expected linear, cosine, sqrt_linear or sqrt, found '%s'", s);
    if (get_pos_double(p, "linear_start", &c->linear_start, e) < 0) return e->code;
    if (get_pos_double(p, "linear_end", &c->linear_end, e) < 0) return e->code;
    if (get_pos_double(p, "cosine_s", &c->cosine_s, e) < 0) return e->code;
    if (c->linear_end < c->linear_start)
        return key_err(e, ERR_VALUE, p, "linear_end", "expected >= linear_start (%g), found %g", c->linear_start,
                       c->linear_end);
    strcpy(s, "eps");
    if (get_str_copy(p, "parameterization", s, sizeof s, e) < 0) return e->code;
    if (!strcmp(s, "eps")) c->parameterization = LDM_PARAM_EPS;
    else if (!strcmp(s, "x0")) c->parameterization = LDM_PARAM_X0;
    else if (!strcmp(s, "v")) c->parameterization = LDM_PARAM_V;
    else return key_err(e, ERR_VALUE, p, "parameterization", "expected eps, x0 or v, found '%s'", s);
    if (get_pos_double(p, "scale_factor", &c->scale_factor, e) < 0) return e->code;
    if (get_bool(p, "scale_by_std", &c->scale_by_std, e) < 0) return e->code;
    if (get_int(p, "channels", &c->channels, 0, 1, e) < 0) return e->code;
    if (get_int(p, "image_size", &c->image_size, 0, 1, e) < 0) return e->code;
    if (get_bool(p, "use_ema", &c->use_ema, e) < 0) return e->code;
    if (get_str_copy(p, "first_stage_key", c->first_stage_key, sizeof c->first_stage_key, e) < 0) return e->code;
    if (get_str_copy(p, "cond_stage_key", c->cond_stage_key, sizeof c->cond_stage_key, e) < 0) return e->code;

    if (parse_cond_stage(&c->cond_stage, p, e)) return e->code;
    // LatentDiffusion.__init__: conditioning_key None -> 'concat' if concat_mode else 'crossattn';
    // an unconditional cond stage forces None.
    int concat_mode = 1;
    if (get_bool(p, "concat_mode", &concat_mode, e) < 0) return e->code;
    const char *ck = NULL;
    if (!is_none_node(cfg_child(p, "conditioning_key")) && cfg_get_str(p, "conditioning_key", &ck, e) < 0)
        return e->code;
    if (is_none_text(ck)) c->conditioning_key = concat_mode ? LDM_COND_CONCAT : LDM_COND_CROSSATTN;
    else if (!strcmp(ck, "crossattn")) c->conditioning_key = LDM_COND_CROSSATTN;
    else if (!strcmp(ck, "concat")) c->conditioning_key = LDM_COND_CONCAT;
    else if (!strcmp(ck, "hybrid")) c->conditioning_key = LDM_COND_HYBRID;
    else if (!strcmp(ck, "adm")) c->conditioning_key = LDM_COND_ADM;
    else
        return key_err(e, ERR_VALUE, p, "conditioning_key",
                       "expected crossattn, concat, hybrid, adm or None, found '%s'", ck);
    if (c->cond_stage.kind == LDM_CS_UNCONDITIONAL) c->conditioning_key = LDM_COND_NONE;

    const CfgNode *uc, *fc;
    if (child_map(p, "unet_config", &uc, 1, e) < 0) return e->code;
    if (parse_unet(&c->unet, uc, e)) return e->code;
    int r = child_map(p, "first_stage_config", &fc, 0, e);
    if (r < 0) return e->code;
    c->has_first_stage = (r == 0);
    if (c->has_first_stage && parse_first_stage(&c->first_stage, fc, e)) return e->code;
    return 0;
}

static int parse_root(LdmConfig *c, const char *name, CfgNode *root, Err *e) {
    memset(c, 0, sizeof *c);
    snprintf(c->path, sizeof c->path, "%s", name);
    return parse_model(c, root, e);
}

int ldm_config_load(LdmConfig *cfg, const char *path, Err *e) {
    CfgNode *root = NULL;
    if (cfg_load(path, &root, e)) return e->code;
    int rc = parse_root(cfg, path, root, e);
    cfg_free(root);
    return rc;
}

int ldm_config_load_mem(LdmConfig *cfg, const char *text, size_t len, const char *name, Err *e) {
    CfgNode *root = NULL;
    if (cfg_load_mem(text, len, name, &root, e)) return e->code;
    int rc = parse_root(cfg, name, root, e);
    cfg_free(root);
    return rc;
}

const char *ldm_beta_schedule_name(LdmBetaSchedule s) {
    switch (s) {
    case LDM_BETA_LINEAR: return "linear";
    case LDM_BETA_COSINE: return "cosine";
    case LDM_BETA_SQRT_LINEAR: return "sqrt_linear";
    case LDM_BETA_SQRT: return "sqrt";
    }
    return "?";
}

const char *ldm_parameterization_name(LdmParameterization p) {
    switch (p) {
    case LDM_PARAM_EPS: return "eps";
    case LDM_PARAM_X0: return "x0";
    case LDM_PARAM_V: return "v";
    }
    return "?";
}

const char *ldm_cond_key_name(LdmCondKey k) {
    switch (k) {
    case LDM_COND_NONE: return "None";
    case LDM_COND_CROSSATTN: return "crossattn";
    case LDM_COND_CONCAT: return "concat";
    case LDM_COND_HYBRID: return "hybrid";
    case LDM_COND_ADM: return "adm";
    }
    return "?";
}

const char *ldm_first_stage_name(AeKind k) {
    switch (k) {
    case AE_KL: return "AutoencoderKL";
    case AE_VQ: return "VQModel";
    case AE_VQ_INTERFACE: return "VQModelInterface";
    }
    return "?";
}
