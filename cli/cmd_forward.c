/* cmd_forward.c: effdm forward: the raw UNet output of a CompVis LDM on .npy inputs, for
   conversion checks against PyTorch (always the raw, non-EMA weights: docs/DESIGN.md "Formats"). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "io/npy.h"
#include "models/ldm.h"

static const char *const usage[] = {
    "usage: effdm forward --ldm-config C.yaml --ckpt M.ckpt --x x.npy --t t.npy",
    "                     [--y y.npy | --context c.npy] --out eps.npy [--threads N]",
    "",
    "Runs the model's UNet once, as LatentDiffusion.apply_model(x, t, c) does, and writes its",
    "output (eps, x0 or v, per the config's parameterization) as a float32 .npy.",
    "",
    "  --ldm-config C.yaml  CompVis YAML of the model",
    "  --ckpt M.ckpt        its weights (.ckpt or .safetensors); the raw model.diffusion_model.*",
    "                       weights are used, never the EMA copy",
    "  --x x.npy            noisy latents (N, C, H, W)",
    "  --t t.npy            N timesteps (integer values; any numeric dtype)",
    "  --y y.npy            N class labels for a class-conditional model: the context is the",
    "                       model's ClassEmbedder output embedding(y)[:, None, :]",
    "  --context c.npy      or the cross-attention context itself (N, L, context_dim)",
    "  --out eps.npy        output (N, out_channels, H, W), written atomically",
    "  --threads N          (default $EFFDM_THREADS, else all cores)",
    "",
    "Exit status: 0, 2 for bad input (one line naming the file / key / tensor), 1 otherwise.",
    NULL,
};

// Reads a .npy; ERR_ naming the option and file.
static int read_npy(const char *opt, const char *path, NpyArray *a, Err *e) {
    if (npy_read(path, a, e)) return err_prefix(e, "%s", opt);
    return 0;
}

static const char *shape_str(const NpyArray *a, char *buf, size_t cap) {
    size_t k = (size_t)snprintf(buf, cap, "(");
    for (int i = 0; i < a->ndim && k < cap; i++)
        k += (size_t)snprintf(buf + k, cap - k, i ? ", %d" : "%d", a->shape[i]);
    if (k < cap) snprintf(buf + k, cap - k, ")");
    return buf;
}

int cmd_forward(int argc, char **argv) {
    const char *cfg_path = NULL, *ckpt_path = NULL, *x_path = NULL, *t_path = NULL, *y_path = NULL,
               *c_path = NULL, *out = NULL;
    int threads = -1;
    CliOpt opts[] = {
        {"--ldm-config", OPT_STR, &cfg_path}, {"--ckpt", OPT_STR, &ckpt_path}, {"--x", OPT_STR, &x_path},
        {"--t", OPT_STR, &t_path},            {"--y", OPT_STR, &y_path},        {"--context", OPT_STR, &c_path},
        {"--out", OPT_STR, &out},             {"--threads", OPT_INT, &threads},
    };
    Err e = {0};
    int help = 0;
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0, &help, &e))
        return cli_fail("forward", &e);
    if (help) return cli_help(usage);
    if (!cfg_path || !ckpt_path || !x_path || !t_path || !out)
        err_set(&e, ERR_ARG, "--ldm-config, --ckpt, --x, --t and --out are required (see effdm forward --help)");
    else if (y_path && c_path)
        err_set(&e, ERR_ARG, "--y and --context exclude each other");
    if (e.code || cli_threads(threads, &e)) return cli_fail("forward", &e);

    NpyArray x = {0}, t = {0}, y = {0}, cx = {0};
    Ldm *m = NULL;
    Ctx ctx = {0};
    int *labels = NULL, rc = 0;
    char b1[96];
    LdmLoadOpts lo = {LDM_EMA_OFF, LDM_PART_UNET | (y_path ? LDM_PART_COND_STAGE : 0)};
    if ((rc = read_npy("--x", x_path, &x, &e)) || (rc = read_npy("--t", t_path, &t, &e)) ||
        (y_path && (rc = read_npy("--y", y_path, &y, &e))) || (c_path && (rc = read_npy("--context", c_path, &cx, &e))))
        goto done;
    if ((rc = ldm_load(&m, cfg_path, ckpt_path, &lo, &e))) goto done;
    const UNetConfig *u = &m->cfg.unet;
    if (x.ndim != 4 || x.shape[1] != u->in_channels) {
        rc = err_set(&e, ERR_SHAPE, "--x %s: expected (N, %d, H, W) for unet_config in_channels %d, found %s", x_path,
                     u->in_channels, u->in_channels, shape_str(&x, b1, sizeof b1));
        goto done;
    }
    int N = x.shape[0];
    if (t.n != (size_t)N) {
        rc = err_set(&e, ERR_SHAPE, "--t %s: expected %d timesteps (one per image of --x), found %zu values", t_path,
                     N, t.n);
        goto done;
    }
    for (size_t i = 0; i < t.n; i++)
        if (!(t.data[i] >= 0 && t.data[i] < (float)m->T) || t.data[i] != floorf(t.data[i])) {
            rc = err_set(&e, ERR_VALUE, "--t %s: entry %zu: expected an integer timestep in [0, %d), found %g", t_path,
                         i, m->T, (double)t.data[i]);
            goto done;
        }
    int cc = ldm_is_class_conditional(m) || u->use_spatial_transformer;
    if (cc && !y_path && !c_path) {
        rc = err_set(&e, ERR_ARG, "%s: the model is conditional (cross-attention): give --y or --context", cfg_path);
        goto done;
    }
    if (!cc && (y_path || c_path)) {
        rc = err_set(&e, ERR_ARG, "%s: the model is unconditional: --%s is not used", cfg_path,
                     y_path ? "y" : "context");
        goto done;
    }
    if (y_path) {
        if (!ldm_is_class_conditional(m)) {
            rc = err_set(&e, ERR_ARG, "%s: --y needs a ClassEmbedder conditioning model (give --context)", cfg_path);
            goto done;
        }
        if (y.n != (size_t)N) {
            rc = err_set(&e, ERR_SHAPE, "--y %s: expected %d labels, found %zu values", y_path, N, y.n);
            goto done;
        }
        labels = malloc((size_t)N * sizeof(int));
        if (!labels) {
            rc = err_set(&e, ERR_NOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < N; i++) {
            float v = y.data[i];
            if (!(v >= 0 && v < (float)ldm_n_classes(m)) || v != floorf(v)) {
                rc = err_set(&e, ERR_VALUE, "--y %s: entry %d: expected a label in [0, %d), found %g", y_path, i,
                             ldm_n_classes(m), (double)v);
                goto done;
            }
            labels[i] = (int)v;
        }
    }
    if (c_path && (cx.ndim != 3 || cx.shape[0] != N || cx.shape[2] != u->context_dim)) {
        rc = err_set(&e, ERR_SHAPE, "--context %s: expected (%d, L, %d) (unet_config context_dim %d), found %s",
                     c_path, N, u->context_dim, u->context_dim, shape_str(&cx, b1, sizeof b1));
        goto done;
    }
    if ((rc = ctx_init(&ctx, (size_t)16 << 30, &e))) goto done;
    ctx_set_grad(&ctx, 0);
    Tensor *xt = tensor_from(&ctx, x.data, 4, x.shape);
    Tensor *eps = c_path ? unet_forward(&ctx, m->unet, xt, t.data, tensor_from(&ctx, cx.data, 3, cx.shape), NULL)
                         : ldm_apply_model(&ctx, m, xt, t.data, labels);
    if (!eps) {
        rc = err_set(&e, ctx.err.code ? ctx.err.code : ERR_INTERNAL, "%s", ctx.err.msg);
        goto done;
    }
    if ((rc = npy_write(out, eps->data, eps->ndim, eps->shape, &e))) goto done;
    if (m->warning[0]) fprintf(stderr, "effdm forward: note: %s\n", m->warning);
    printf("wrote %s %s\n", out, tensor_shape_str(eps, b1, sizeof b1));
done:
    if (rc) cli_fail("forward", &e);
    ctx_free(&ctx);
    free(labels);
    ldm_free(m);
    npy_free(&x);
    npy_free(&t);
    npy_free(&y);
    npy_free(&cx);
    return rc ? err_exit_status(rc) : 0;
}
