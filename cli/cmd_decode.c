/* cmd_decode.c: effdm decode: the first stage of a CompVis LDM on .npy inputs (decode latents,
   or encode images with --encode), for conversion checks against PyTorch. */
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "io/npy.h"
#include "models/ldm.h"

static const char *const usage[] = {
    "usage: effdm decode --ldm-config C.yaml --ckpt M.ckpt --z z.npy --out img.npy [--no-quantize]",
    "       effdm decode --ldm-config C.yaml --ckpt M.ckpt --encode --x x.npy --out mean.npy [--logvar lv.npy]",
    "",
    "Decode: first_stage_model.decode(z) on z exactly as given (no 1 / scale_factor):",
    "decoder(post_quant_conv(z)) for AutoencoderKL and VQModel; VQModelInterface quantizes z",
    "to its nearest codebook entries first, as LatentDiffusion.decode_first_stage does",
    "(--no-quantize skips that). Output (N, out_ch, H, W), values as the decoder gives them",
    "(about [-1, 1], not clamped).",
    "",
    "Encode (--encode): AutoencoderKL's posterior mean of quant_conv(encoder(x)) to --out and,",
    "with --logvar, its log-variance (clamped to [-30, 20]); VQModelInterface: quant_conv(",
    "encoder(x)) before quantization; VQModel: after. x (N, in_channels, H, W) in [-1, 1].",
    "",
    "  --ldm-config C.yaml  CompVis YAML of the model (needs model.params.first_stage_config)",
    "  --ckpt M.ckpt        its weights (.ckpt or .safetensors): first_stage_model.*",
    "  --threads N          (default $EFFDM_THREADS, else all cores)",
    "Outputs are float32 .npy files written atomically. Exit status: 0, 2 for bad input (one",
    "line naming the file / key / tensor), 1 otherwise.",
    NULL,
};

int cmd_decode(int argc, char **argv) {
    const char *cfg_path = NULL, *ckpt_path = NULL, *z_path = NULL, *x_path = NULL, *out = NULL, *lv_path = NULL;
    int threads = -1, encode = 0, no_quant = 0;
    CliOpt opts[] = {
        {"--ldm-config", OPT_STR, &cfg_path}, {"--ckpt", OPT_STR, &ckpt_path}, {"--z", OPT_STR, &z_path},
        {"--x", OPT_STR, &x_path},            {"--encode", OPT_FLAG, &encode},  {"--logvar", OPT_STR, &lv_path},
        {"--out", OPT_STR, &out},             {"--no-quantize", OPT_FLAG, &no_quant},
        {"--threads", OPT_INT, &threads},
    };
    Err e = {0};
    int help = 0;
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0, &help, &e))
        return cli_fail("decode", &e);
    if (help) return cli_help(usage);
    const char *in_path = encode ? x_path : z_path;
    if (!cfg_path || !ckpt_path || !out)
        err_set(&e, ERR_ARG, "--ldm-config, --ckpt and --out are required (see effdm decode --help)");
    else if (!in_path)
        err_set(&e, ERR_ARG, encode ? "--encode needs --x x.npy" : "--z z.npy is required (or --encode --x x.npy)");
    else if (encode ? (z_path != NULL || no_quant) : (x_path != NULL || lv_path != NULL))
        err_set(&e, ERR_ARG, encode ? "--z and --no-quantize do not go with --encode"
                                    : "--x and --logvar go with --encode");
    if (e.code || cli_threads(threads, &e)) return cli_fail("decode", &e);

    NpyArray in = {0};
    Ldm *m = NULL;
    Ctx ctx = {0};
    int rc = 0, wrote_out = 0;
    LdmLoadOpts lo = {LDM_EMA_OFF, LDM_PART_FIRST_STAGE};
    if ((rc = npy_read(in_path, &in, &e))) {
        err_prefix(&e, "%s", encode ? "--x" : "--z");
        goto done;
    }
    if ((rc = ldm_load(&m, cfg_path, ckpt_path, &lo, &e))) goto done;
    if (!m->ae) {
        rc = err_set(&e, ERR_KEY, "%s: model.params.first_stage_config: required to decode, but missing", cfg_path);
        goto done;
    }
    const AeConfig *ac = ae_config(m->ae);
    int want_c = encode ? ac->dd.in_channels : ac->embed_dim;
    if (in.ndim != 4 || in.shape[1] != want_c) {
        rc = err_set(&e, ERR_SHAPE, "%s %s: expected (N, %d, H, W) (first stage %s), found %d dims with %d channels",
                     encode ? "--x" : "--z", in_path, want_c, encode ? "ddconfig in_channels" : "embed_dim", in.ndim,
                     in.ndim >= 2 ? in.shape[1] : 0);
        goto done;
    }
    if ((rc = ctx_init(&ctx, (size_t)16 << 30, &e))) goto done;
    ctx_set_grad(&ctx, 0);
    Tensor *x = tensor_from(&ctx, in.data, 4, in.shape);
    if (!encode) {
        Tensor *img = no_quant ? ae_decode_noquant(&ctx, m->ae, x) : ae_decode(&ctx, m->ae, x);
        if (!img) {
            rc = err_set(&e, ctx.err.code ? ctx.err.code : ERR_INTERNAL, "%s", ctx.err.msg);
            goto done;
        }
        if ((rc = npy_write(out, img->data, 4, img->shape, &e))) goto done;
    } else {
        Tensor *mean = NULL, *logvar = NULL;
        if ((rc = ae_encode(&ctx, m->ae, x, &mean, &logvar))) {
            err_set(&e, rc, "%s", ctx.err.msg);
            goto done;
        }
        if (lv_path && !logvar) {
            rc = err_set(&e, ERR_ARG, "--logvar: the first stage (%s) has no posterior variance",
                         ldm_first_stage_name(ac->kind));
            goto done;
        }
        if ((rc = npy_write(out, mean->data, 4, mean->shape, &e))) goto done;
        wrote_out = 1;
        if (lv_path && (rc = npy_write(lv_path, logvar->data, 4, logvar->shape, &e))) goto done;
    }
    if (m->warning[0]) fprintf(stderr, "effdm decode: note: %s\n", m->warning);
    printf("wrote %s\n", out);
    if (lv_path) printf("wrote %s\n", lv_path);
done:
    if (rc) {
        if (wrote_out) unlink(out);  // no partial output: --out without its --logvar
        cli_fail("decode", &e);
    }
    ctx_free(&ctx);
    ldm_free(m);
    npy_free(&in);
    return rc ? err_exit_status(rc) : 0;
}
