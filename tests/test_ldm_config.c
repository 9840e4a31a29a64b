/* test_ldm_config.c: CompVis YAML -> LdmConfig. Every shipped config (the teacher, the parity
   fixtures) and five real upstream configs (tests/data/compvis_configs, README there) parse to
   the numbers written in their YAML text; CompVis defaults apply to absent keys; errors name
   the key path, the expected and the found value. Also make_beta_schedule against its
   closed forms. */
#include "testutil.h"

#include <math.h>
#include <stdio.h>
#include <string.h>

#include "models/ldm_config.h"
#include "models/ldm_schedule.h"

static void load_ok(LdmConfig *c, const char *rel) {
    Err e = {0};
    if (ldm_config_load(c, test_data_path(rel), &e)) {
        print_error("%s: %s\n", rel, e.msg);
        fail();
    }
}

static void assert_ints(const int *got, int n_got, const int *want, int n_want) {
    assert_int_equal(n_got, n_want);
    for (int i = 0; i < n_want; i++) assert_int_equal(got[i], want[i]);
}

// Parses text; expects the error code and the substrings n1 (and n2 unless NULL) in the message.
static void expect_error(const char *text, int code, const char *n1, const char *n2) {
    LdmConfig c;
    Err e = {0};
    int rc = ldm_config_load_mem(&c, text, strlen(text), "bad.yaml", &e);
    if (rc != code || !strstr(e.msg, n1) || (n2 && !strstr(e.msg, n2))) {
        print_error("expected %s with '%s'%s%s, got %s: %s\n", err_name(code), n1, n2 ? " and " : "", n2 ? n2 : "",
                    err_name(rc), e.msg);
        fail();
    }
    assert_non_null(strstr(e.msg, "bad.yaml"));
}

static void test_teacher(void **state) {
    (void)state;
    LdmConfig c;
    load_ok(&c, "../../models/zoo/fmnist-ldm/config.yaml");
    assert_int_equal(c.timesteps, 1000);
    assert_true(c.linear_start == 0.0015 && c.linear_end == 0.0195);
    assert_int_equal(c.beta_schedule, LDM_BETA_LINEAR);
    assert_int_equal(c.parameterization, LDM_PARAM_EPS);
    assert_true(c.scale_factor == 0.5935243180872978);
    assert_int_equal(c.scale_by_std, 0);
    assert_int_equal(c.conditioning_key, LDM_COND_CROSSATTN);
    assert_int_equal(c.channels, 4);
    assert_int_equal(c.image_size, 8);
    assert_int_equal(c.use_ema, 0);
    assert_string_equal(c.first_stage_key, "image");
    assert_string_equal(c.cond_stage_key, "class_label");
    // unet_config.params
    assert_int_equal(c.unet.image_size, 8);
    assert_int_equal(c.unet.in_channels, 4);
    assert_int_equal(c.unet.out_channels, 4);
    assert_int_equal(c.unet.model_channels, 32);
    assert_ints(c.unet.attention_resolutions, c.unet.n_attention_resolutions, (int[]){2}, 1);
    assert_int_equal(c.unet.num_res_blocks, 2);
    assert_ints(c.unet.channel_mult, c.unet.n_channel_mult, (int[]){1, 2}, 2);
    assert_int_equal(c.unet.num_heads, 1);
    assert_int_equal(c.unet.num_head_channels, -1);
    assert_int_equal(c.unet.use_spatial_transformer, 1);
    assert_int_equal(c.unet.transformer_depth, 1);
    assert_int_equal(c.unet.context_dim, 64);
    assert_int_equal(c.unet.legacy, 1);
    assert_int_equal(c.unet.conv_resample, 1);
    // first_stage_config
    assert_int_equal(c.has_first_stage, 1);
    assert_int_equal(c.first_stage.kind, AE_KL);
    assert_int_equal(c.first_stage.embed_dim, 4);
    const AeDDConfig *dd = &c.first_stage.dd;
    assert_int_equal(dd->double_z, 1);
    assert_int_equal(dd->z_channels, 4);
    assert_int_equal(dd->resolution, 32);
    assert_int_equal(dd->in_channels, 1);
    assert_int_equal(dd->out_ch, 1);
    assert_int_equal(dd->ch, 32);
    assert_ints(dd->ch_mult, dd->n_ch_mult, (int[]){1, 2, 4}, 3);
    assert_int_equal(dd->num_res_blocks, 1);
    assert_int_equal(dd->n_attn_resolutions, 0);
    assert_int_equal(dd->resamp_with_conv, 1);
    // cond_stage_config
    assert_int_equal(c.cond_stage.kind, LDM_CS_CLASS_EMBEDDER);
    assert_int_equal(c.cond_stage.n_classes, 11);
    assert_int_equal(c.cond_stage.embed_dim, 64);
    assert_string_equal(c.cond_stage.key, "class_label");
}

static void test_parity_configs(void **state) {
    (void)state;
    LdmConfig c;
    load_ok(&c, "parity/unet_cin/config.yaml");
    assert_int_equal(c.conditioning_key, LDM_COND_CROSSATTN);
    assert_int_equal(c.has_first_stage, 0);
    assert_ints(c.unet.attention_resolutions, c.unet.n_attention_resolutions, (int[]){1, 2}, 2);
    assert_int_equal(c.unet.context_dim, 32);
    assert_int_equal(c.cond_stage.n_classes, 11);
    assert_int_equal(c.cond_stage.embed_dim, 32);
    assert_int_equal(c.use_ema, 1);           // absent: the CompVis default
    assert_true(c.scale_factor == 1.0);       // absent: LatentDiffusion's default

    load_ok(&c, "parity/unet_cin_head_channels/config.yaml");
    assert_int_equal(c.unet.num_heads, -1);
    assert_int_equal(c.unet.num_head_channels, 16);

    load_ok(&c, "parity/unet_uncond/config.yaml");
    assert_int_equal(c.cond_stage.kind, LDM_CS_UNCONDITIONAL);
    assert_int_equal(c.conditioning_key, LDM_COND_NONE);
    assert_ints(c.unet.channel_mult, c.unet.n_channel_mult, (int[]){1, 2, 2}, 3);
    assert_ints(c.unet.attention_resolutions, c.unet.n_attention_resolutions, (int[]){2, 4}, 2);
    assert_int_equal(c.unet.num_heads, 2);
    assert_int_equal(c.unet.num_res_blocks, 1);
    assert_int_equal(c.unet.use_scale_shift_norm, 1);
    assert_int_equal(c.unet.resblock_updown, 1);
    assert_int_equal(c.unet.use_spatial_transformer, 0);

    load_ok(&c, "parity/ae_kl/config.yaml");
    assert_int_equal(c.conditioning_key, LDM_COND_NONE);
    assert_int_equal(c.has_first_stage, 1);
    assert_int_equal(c.first_stage.kind, AE_KL);
    assert_ints(c.first_stage.dd.attn_resolutions, c.first_stage.dd.n_attn_resolutions, (int[]){8}, 1);
    assert_int_equal(c.unet.num_res_blocks, 1);
    assert_int_equal(c.unet.num_heads, 2);
}

static void test_upstream_cin256_v2(void **state) {
    (void)state;
    LdmConfig c;
    load_ok(&c, "compvis_configs/cin256-v2.yaml");
    assert_true(c.linear_start == 0.0015 && c.linear_end == 0.0195);
    assert_int_equal(c.channels, 3);
    assert_int_equal(c.image_size, 64);
    assert_int_equal(c.use_ema, 0);
    assert_int_equal(c.conditioning_key, LDM_COND_CROSSATTN);
    assert_int_equal(c.unet.model_channels, 192);
    assert_ints(c.unet.attention_resolutions, c.unet.n_attention_resolutions, (int[]){8, 4, 2}, 3);
    assert_ints(c.unet.channel_mult, c.unet.n_channel_mult, (int[]){1, 2, 3, 5}, 4);
    assert_int_equal(c.unet.context_dim, 512);
    assert_int_equal(c.first_stage.kind, AE_VQ_INTERFACE);
    assert_int_equal(c.first_stage.embed_dim, 3);
    assert_int_equal(c.first_stage.n_embed, 8192);
    assert_int_equal(c.first_stage.dd.double_z, 0);
    assert_int_equal(c.first_stage.dd.resolution, 256);
    assert_int_equal(c.first_stage.dd.ch, 128);
    assert_ints(c.first_stage.dd.ch_mult, c.first_stage.dd.n_ch_mult, (int[]){1, 2, 4}, 3);
    assert_int_equal(c.first_stage.dd.num_res_blocks, 2);
    assert_int_equal(c.cond_stage.n_classes, 1001);
    assert_int_equal(c.cond_stage.embed_dim, 512);
}

static void test_upstream_cin_vq_f8(void **state) {
    (void)state;
    LdmConfig c;
    load_ok(&c, "compvis_configs/cin-ldm-vq-f8.yaml");
    assert_int_equal(c.use_ema, 1);
    assert_int_equal(c.image_size, 32);
    assert_int_equal(c.channels, 4);
    assert_int_equal(c.unet.model_channels, 256);
    assert_int_equal(c.unet.num_heads, -1);
    assert_int_equal(c.unet.num_head_channels, 32);
    assert_ints(c.unet.attention_resolutions, c.unet.n_attention_resolutions, (int[]){4, 2, 1}, 3);
    assert_int_equal(c.first_stage.n_embed, 16384);
    assert_ints(c.first_stage.dd.ch_mult, c.first_stage.dd.n_ch_mult, (int[]){1, 2, 2, 4}, 4);
    assert_ints(c.first_stage.dd.attn_resolutions, c.first_stage.dd.n_attn_resolutions, (int[]){32}, 1);
    assert_int_equal(c.cond_stage.n_classes, 1000);  // ClassEmbedder's default
    assert_string_equal(c.cond_stage.key, "class_label");
}

static void test_upstream_lsun_churches(void **state) {
    (void)state;
    LdmConfig c;
    load_ok(&c, "compvis_configs/lsun_churches256.yaml");
    assert_true(c.linear_end == 0.0155);
    assert_int_equal(c.scale_by_std, 1);
    assert_true(c.scale_factor == 1.0);
    assert_int_equal(c.conditioning_key, LDM_COND_NONE);
    assert_int_equal(c.cond_stage.kind, LDM_CS_UNCONDITIONAL);
    assert_int_equal(c.image_size, 32);
    assert_int_equal(c.unet.model_channels, 192);
    assert_ints(c.unet.attention_resolutions, c.unet.n_attention_resolutions, (int[]){1, 2, 4, 8}, 4);
    assert_ints(c.unet.channel_mult, c.unet.n_channel_mult, (int[]){1, 2, 2, 4, 4}, 5);
    assert_int_equal(c.unet.num_heads, 8);
    assert_int_equal(c.unet.use_scale_shift_norm, 1);
    assert_int_equal(c.unet.resblock_updown, 1);
    assert_int_equal(c.first_stage.kind, AE_KL);
    assert_ints(c.first_stage.dd.ch_mult, c.first_stage.dd.n_ch_mult, (int[]){1, 2, 4, 4}, 4);
    assert_int_equal(c.first_stage.dd.double_z, 1);
}

static void test_upstream_celeba(void **state) {
    (void)state;
    LdmConfig c;
    load_ok(&c, "compvis_configs/celeba256.yaml");
    assert_int_equal(c.use_ema, 1);
    assert_int_equal(c.conditioning_key, LDM_COND_NONE);  // unconditional forces None
    assert_string_equal(c.cond_stage_key, "class_label");
    assert_int_equal(c.unet.model_channels, 224);
    assert_int_equal(c.unet.num_head_channels, 32);
    assert_int_equal(c.first_stage.kind, AE_VQ_INTERFACE);
}

static void test_upstream_text_encoder_unsupported(void **state) {
    (void)state;
    LdmConfig c;
    Err e = {0};
    assert_int_equal(ldm_config_load(&c, test_data_path("compvis_configs/text2img256.yaml"), &e), ERR_UNSUPPORTED);
    assert_non_null(strstr(e.msg, "ldm.modules.encoders.modules.BERTEmbedder"));
    assert_non_null(strstr(e.msg, "model.params.cond_stage_config.target"));
    assert_non_null(strstr(e.msg, "text2img256.yaml"));
}

// A minimal valid config; tests replace one line of it.
static const char *BASE =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    timesteps: 1000\n"
    "    channels: 4\n"
    "    image_size: 8\n"
    "    conditioning_key: crossattn\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params: {image_size: 8, in_channels: 4, out_channels: 4, model_channels: 32,\n"
    "               attention_resolutions: [2], num_res_blocks: 1, channel_mult: [1, 2], num_heads: 1,\n"
    "               use_spatial_transformer: true, context_dim: 16}\n"
    "    first_stage_config:\n"
    "      target: ldm.models.autoencoder.AutoencoderKL\n"
    "      params:\n"
    "        embed_dim: 4\n"
    "        ddconfig: {double_z: true, z_channels: 4, resolution: 32, in_channels: 1, out_ch: 1, ch: 32,\n"
    "                   ch_mult: [1, 2, 4], num_res_blocks: 1, attn_resolutions: [], dropout: 0.0}\n"
    "    cond_stage_config:\n"
    "      target: ldm.modules.encoders.modules.ClassEmbedder\n"
    "      params: {n_classes: 5, embed_dim: 16}\n";

// BASE with the first occurrence of `from` replaced by `to`.
static const char *edit(const char *from, const char *to) {
    static char buf[4096];
    const char *p = strstr(BASE, from);
    assert_non_null(p);
    snprintf(buf, sizeof buf, "%.*s%s%s", (int)(p - BASE), BASE, to, p + strlen(from));
    return buf;
}

static void test_base_and_defaults(void **state) {
    (void)state;
    LdmConfig c;
    Err e = {0};
    assert_int_equal(ldm_config_load_mem(&c, BASE, strlen(BASE), "base.yaml", &e), 0);
    assert_true(c.linear_start == 1e-4 && c.linear_end == 2e-2 && c.cosine_s == 8e-3);  // DDPM defaults
    assert_int_equal(c.use_ema, 1);
    assert_string_equal(c.cond_stage.key, "class");  // ClassEmbedder(key='class')
    assert_string_equal(c.cond_stage_key, "image");
    assert_int_equal(c.first_stage.dd.resamp_with_conv, 1);

    // conditioning_key absent: concat_mode (default True) -> concat; concat_mode false -> crossattn
    const char *t = edit("    conditioning_key: crossattn\n", "");
    assert_int_equal(ldm_config_load_mem(&c, t, strlen(t), "x.yaml", &e), 0);
    assert_int_equal(c.conditioning_key, LDM_COND_CONCAT);
    t = edit("    conditioning_key: crossattn\n", "    concat_mode: false\n");
    assert_int_equal(ldm_config_load_mem(&c, t, strlen(t), "x.yaml", &e), 0);
    assert_int_equal(c.conditioning_key, LDM_COND_CROSSATTN);
    t = edit("    conditioning_key: crossattn\n", "    conditioning_key: null\n    concat_mode: false\n");
    assert_int_equal(ldm_config_load_mem(&c, t, strlen(t), "x.yaml", &e), 0);
    assert_int_equal(c.conditioning_key, LDM_COND_CROSSATTN);

    t = edit("    timesteps: 1000\n", "    timesteps: 500\n    parameterization: v\n    beta_schedule: cosine\n");
    assert_int_equal(ldm_config_load_mem(&c, t, strlen(t), "x.yaml", &e), 0);
    assert_int_equal(c.parameterization, LDM_PARAM_V);
    assert_int_equal(c.beta_schedule, LDM_BETA_COSINE);
    assert_int_equal(c.timesteps, 500);

}

static void test_vq_model(void **state) {
    (void)state;
    const char *t = edit("      target: ldm.models.autoencoder.AutoencoderKL\n      params:\n        embed_dim: 4\n",
                         "      target: ldm.models.autoencoder.VQModel\n      params:\n        embed_dim: 4\n"
                         "        n_embed: 64\n");
    LdmConfig c;
    Err e = {0};
    assert_int_equal(ldm_config_load_mem(&c, t, strlen(t), "vq.yaml", &e), 0);
    assert_int_equal(c.first_stage.kind, AE_VQ);
    assert_int_equal(c.first_stage.n_embed, 64);
    // VQ without n_embed: required
    t = edit("ldm.models.autoencoder.AutoencoderKL", "ldm.models.autoencoder.VQModelInterface");
    expect_error(t, ERR_KEY, "model.params.first_stage_config.params.n_embed", "missing");
}

static void test_errors(void **state) {
    (void)state;
    expect_error(edit("ldm.models.diffusion.ddpm.LatentDiffusion", "ldm.models.diffusion.ddpm.DDPM"), ERR_VALUE,
                 "model.target", "'ldm.models.diffusion.ddpm.DDPM'");
    expect_error(edit("ldm.modules.diffusionmodules.openaimodel.UNetModel", "my.UNet"), ERR_VALUE,
                 "model.params.unet_config.target", "'my.UNet'");
    expect_error(edit("ldm.models.autoencoder.AutoencoderKL", "ldm.models.autoencoder.IdentityFirstStage"),
                 ERR_UNSUPPORTED, "model.params.first_stage_config.target", "IdentityFirstStage");
    expect_error(edit("ldm.modules.encoders.modules.ClassEmbedder", "ldm.modules.encoders.modules.FrozenCLIPEmbedder"),
                 ERR_UNSUPPORTED, "model.params.cond_stage_config.target", "FrozenCLIPEmbedder");
    expect_error(edit("    timesteps: 1000\n", "    timesteps: abc\n"), ERR_VALUE, "model.params.timesteps", "abc");
    expect_error(edit("    timesteps: 1000\n", "    timesteps: 0\n"), ERR_VALUE, "model.params.timesteps", "found 0");
    expect_error(edit("    timesteps: 1000\n", "    beta_schedule: quad\n"), ERR_VALUE, "model.params.beta_schedule",
                 "'quad'");
    expect_error(edit("    timesteps: 1000\n", "    parameterization: mu\n"), ERR_VALUE,
                 "model.params.parameterization", "'mu'");
    expect_error(edit("    timesteps: 1000\n", "    scale_factor: -2\n"), ERR_VALUE, "model.params.scale_factor",
                 "-2");
    expect_error(edit("    conditioning_key: crossattn\n", "    conditioning_key: film\n"), ERR_VALUE,
                 "model.params.conditioning_key", "'film'");
    expect_error(edit("    timesteps: 1000\n", "    use_ema: maybe\n"), ERR_VALUE, "model.params.use_ema", "maybe");
    expect_error(edit("z_channels: 4, ", ""), ERR_KEY, "first_stage_config.params.ddconfig.z_channels", "missing");
    expect_error(edit("in_channels: 4, ", ""), ERR_KEY, "unet_config.params.in_channels", "missing");
    expect_error(edit("double_z: true", "double_z: false"), ERR_VALUE, "ddconfig.double_z", NULL);
    expect_error(edit("ch_mult: [1, 2, 4]", "ch_mult: []"), ERR_VALUE, "ddconfig.ch_mult", NULL);
    expect_error(edit("ch: 32,", "ch: 24,"), ERR_VALUE, "ddconfig", "32");  // GroupNorm(32) needs C % 32 == 0
    expect_error(edit("resolution: 32", "resolution: 30"), ERR_VALUE, "ddconfig", "resolution");
    expect_error(edit("attn_resolutions: [],", "attn_resolutions: [], attn_type: linear,"), ERR_UNSUPPORTED,
                 "ddconfig.attn_type", "linear");
    expect_error(edit("channel_mult: [1, 2],", "channel_mult: [1, 2], dims: 3,"), ERR_UNSUPPORTED,
                 "unet_config.params.dims", "3");
    expect_error(edit("context_dim: 16", "context_dim: 16, n_embed: 8192"), ERR_UNSUPPORTED,
                 "unet_config.params.n_embed", NULL);
    expect_error(edit("num_heads: 1,", ""), ERR_VALUE, "unet_config.params", "num_heads");
    expect_error(edit("n_classes: 5", "n_classes: five"), ERR_VALUE, "cond_stage_config.params.n_classes", "five");
    expect_error(edit("    cond_stage_config:\n      target: ldm.modules.encoders.modules.ClassEmbedder\n"
                      "      params: {n_classes: 5, embed_dim: 16}\n",
                      "    cond_stage_config: __is_first_stage__\n"),
                 ERR_UNSUPPORTED, "model.params.cond_stage_config", "__is_first_stage__");
    const char *no_unet = "model:\n  target: ldm.models.diffusion.ddpm.LatentDiffusion\n  params:\n"
                          "    cond_stage_config: __is_unconditional__\n";
    expect_error(no_unet, ERR_KEY, "model.params.unet_config", "missing");
    expect_error("model:\n  params: {}\n", ERR_KEY, "model.target", "missing");
    expect_error("foo: 1\n", ERR_KEY, "model", "missing");
}

static void test_unknown_keys_ignored(void **state) {
    (void)state;
    const char *t = edit("    timesteps: 1000\n", "    timesteps: 1000\n    monitor: val/loss\n    my_new_option: 3\n"
                                               "    scheduler_config: {target: x.Y, params: {a: 1}}\n");
    LdmConfig c;
    Err e = {0};
    assert_int_equal(ldm_config_load_mem(&c, t, strlen(t), "x.yaml", &e), 0);
}

// make_beta_schedule against the closed forms (independent float64 arithmetic).
static void test_beta_schedules(void **state) {
    (void)state;
    enum { T = 1000 };
    static double b[T], acp[T];
    Err e = {0};
    const double ls = 0.0015, le = 0.0195;
    assert_int_equal(ldm_make_beta_schedule(LDM_BETA_LINEAR, T, ls, le, 8e-3, b, &e), 0);
    for (int i = 0; i < T; i++) {
        double v = sqrt(ls) + (sqrt(le) - sqrt(ls)) * i / (T - 1);
        assert_true(fabs(b[i] - v * v) <= 1e-15 * v * v);
    }
    assert_true(b[0] == ls);  // linspace hits its ends exactly
    assert_true(fabs(b[T - 1] - le) <= 1e-17);
    ldm_alphas_cumprod(b, T, acp);
    double p = 1;
    for (int i = 0; i < T; i++) {
        p *= 1 - b[i];
        assert_true(acp[i] == p);
    }
    assert_int_equal(ldm_make_beta_schedule(LDM_BETA_SQRT_LINEAR, T, ls, le, 8e-3, b, &e), 0);
    for (int i = 0; i < T; i++) assert_true(fabs(b[i] - (ls + (le - ls) * i / (T - 1))) <= 1e-17);
    assert_int_equal(ldm_make_beta_schedule(LDM_BETA_SQRT, T, ls, le, 8e-3, b, &e), 0);
    for (int i = 0; i < T; i++) assert_true(fabs(b[i] - sqrt(ls + (le - ls) * i / (T - 1))) <= 1e-15);
    const double s = 8e-3, pi = 3.141592653589793;
    assert_int_equal(ldm_make_beta_schedule(LDM_BETA_COSINE, T, ls, le, s, b, &e), 0);
    for (int i = 0; i < T; i++) {
        double f0 = cos(s / (1 + s) * pi / 2), f1 = cos(((double)i / T + s) / (1 + s) * pi / 2),
               f2 = cos(((double)(i + 1) / T + s) / (1 + s) * pi / 2);
        double want = 1 - (f2 * f2 / (f0 * f0)) / (f1 * f1 / (f0 * f0));
        if (want > 0.999) want = 0.999;
        assert_true(fabs(b[i] - want) <= 1e-12);
    }
    assert_true(b[T - 1] == 0.999);  // the last cosine beta is clipped
    assert_int_equal(ldm_make_beta_schedule(LDM_BETA_LINEAR, 0, ls, le, s, b, &e), ERR_VALUE);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_teacher),
        cmocka_unit_test(test_parity_configs),
        cmocka_unit_test(test_upstream_cin256_v2),
        cmocka_unit_test(test_upstream_cin_vq_f8),
        cmocka_unit_test(test_upstream_lsun_churches),
        cmocka_unit_test(test_upstream_celeba),
        cmocka_unit_test(test_upstream_text_encoder_unsupported),
        cmocka_unit_test(test_base_and_defaults),
        cmocka_unit_test(test_vq_model),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_unknown_keys_ignored),
        cmocka_unit_test(test_beta_schedules),
    };
    return cmocka_run_group_tests_name("ldm_config", tests, NULL, NULL);
}
