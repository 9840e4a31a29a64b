/* cmd_compress.c: effdm compress: structured pruning of the FeedForward units and attention heads
   with UDFC's data-free reconstruction (prune/prune.h), and UDFC for the weight-quantization
   error of ff.net.0.proj (prune_quant.c), written as a checkpoint. */
#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "io/fileio.h"
#include "models/ldm_config.h"
#include "prune/prune.h"
#include "util/clock.h"
#include "util/zoo.h"

static const char *const usage[] = {
    "usage: effdm compress [--ldm-config C.yaml --ckpt M.ckpt] [--ff RATIO] [--heads RATIO]",
    "                      [--quant-udfc BITS] --out P.safetensors [options]",
    "",
    "Removes a fraction of the GEGLU units of every transformer block's FeedForward",
    "(ff.net.0.proj rows, ff.net.2 columns) and/or of the heads of every SpatialTransformer",
    "attention, attn1 and attn2 (to_q, to_k, to_v rows, to_out.0 columns): the tensors shrink.",
    "With UDFC, what the removed units / heads carried is folded into the kept ones (ff.net.2 /",
    "to_out.0 and its bias, a closed-form least squares on the second moments of that layer's",
    "inputs over the teacher's own sampled trajectories: no training data, no fine-tuning).",
    "The output is a checkpoint: give it as --ckpt (with the same YAML) to sample, calibrate,",
    "finetune and export, like any other. docs/PRUNING.md.",
    "",
    "  --ldm-config C.yaml   CompVis YAML of the model; with --ckpt (default: the shipped teacher)",
    "  --ckpt M.ckpt         its weights (.ckpt or .safetensors)",
    "  --ema auto|on|off     EMA weights (default auto: as effdm sample)",
    "  --ff RATIO            fraction of each FeedForward's units removed, 0 <= RATIO < 1",
    "  --heads RATIO         fraction of each attention's heads removed, 0 <= RATIO < 1; at least",
    "                        one head is kept (an attention of 1 head is left as it is). Only",
    "                        SpatialTransformer attentions (use_spatial_transformer), not the",
    "                        legacy AttentionBlock. --ff and --heads combine; give at least one",
    "                        of them (a ratio 0 prunes nothing there)",
    "  --reconstruct udfc|none   default udfc",
    "  --criterion l2|l1     unit / head score: norm of its weights in (value and gate rows; q, k,",
    "                        v rows) times norm of its weights out (ff.net.2 / to_out.0",
    "                        columns); default l2",
    "  --samples N           trajectories whose ff.net.2 / to_out.0 inputs give the moments",
    "                        (default 64, class-balanced; DDIM --steps, eta 0, guidance --scale)",
    "  --steps N             DDIM steps (default 20)",
    "  --scale S             guidance scale (default 3; unconditional models: none)",
    "  --seed N              x_T seeds of the trajectories (default 1234)",
    "  --ridge R             ridge of the solve, relative to the mean diagonal (default 1e-6)",
    "  --quant-udfc BITS     also UDFC for weight-quantization error: ff.net.2 absorbs what",
    "                        quantizing ff.net.0.proj to BITS (uniform, per row, min/max ranges:",
    "                        quant.weight_init max) loses; for runs at that weight_bits (default off)",
    "  --out FILE            the pruned checkpoint (.safetensors)",
    "  --threads N           threads (default: $EFFDM_THREADS, else all cores)",
    "",
    "The file is read by effdm only: CompVis's FeedForward has one width and its CrossAttention",
    "one head count per model, so PyTorch would need those modules rebuilt with the widths and",
    "head counts stored (metadata effdm.pruned).",
    "",
    "Example (30% of the FeedForward units of the shipped teacher, then its naive W4A8 PTQ):",
    "  effdm compress --ff 0.3 --out models/ff30.safetensors",
    "  effdm finetune --config configs/fmnist-ldm-w4a8.yaml --set train.epochs=0 \\",
    "      --set model.ckpt=models/ff30.safetensors --set run.out=runs/ff30-w4a8",
    "Half of the heads of every attention and 30% of the FeedForward units:",
    "  effdm compress --ldm-config C.yaml --ckpt M.ckpt --heads 0.5 --ff 0.3 --out P.safetensors",
    "",
    "Exit status: 0, 2 for bad input (arguments, files), 1 for other failures.",
    NULL,
};

static int parse_choice(const char *opt, const char *v, const char *a, const char *b, int *out, Err *e) {
    if (!strcmp(v, a)) *out = 0;
    else if (!strcmp(v, b)) *out = 1;
    else return err_set(e, ERR_ARG, "%s: expected %s or %s, found '%s'", opt, a, b, v);
    return 0;
}

static void on_progress(long done, long total, void *user) {
    Progress *bar = user;
    if (done == 0) progress_start(bar, "moments (the teacher's trajectories)", total);
    else if (done >= total) progress_finish(bar, NULL);
    else progress_update(bar, done, NULL);
}

// effdm.pruned: what was done, per block the FeedForward width and the heads of attn1, attn2 kept.
static char *pruned_json(const PruneOpts *o, const PruneSampling *ps, int quant_bits, UNet *u, const char *src) {
    cJSON *j = cJSON_CreateObject(), *w = cJSON_CreateArray(), *h = cJSON_CreateArray();
    cJSON_AddNumberToObject(j, "ff_ratio", round(o->ff_ratio * 1e6) / 1e6);  // as typed, not float's digits
    cJSON_AddNumberToObject(j, "head_ratio", round(o->head_ratio * 1e6) / 1e6);
    cJSON_AddStringToObject(j, "reconstruct", o->udfc ? "udfc" : "none");
    cJSON_AddStringToObject(j, "criterion", o->norm == PRUNE_L1 ? "l1" : "l2");
    if (quant_bits > 0) cJSON_AddNumberToObject(j, "quant_udfc_bits", quant_bits);
    if (o->udfc || quant_bits > 0) {
        cJSON_AddNumberToObject(j, "samples", ps->n_samples);
        cJSON_AddNumberToObject(j, "steps", ps->steps);
        cJSON_AddNumberToObject(j, "scale", round(ps->scale * 1e6) / 1e6);
        cJSON_AddNumberToObject(j, "seed", (double)ps->seed);
        cJSON_AddNumberToObject(j, "ridge", o->ridge);  // a float: 1e-6 reads 9.99999997e-07
    }
    for (int k = 0; k < unet_ff_blocks(u); k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(u, k, &proj, &out);
        cJSON_AddItemToArray(w, cJSON_CreateNumber(out->weight.shape[1]));
        int heads[2], d;
        ModelLayer *l[4];
        for (int a = 0; a < 2; a++) unet_attn_layers(u, k, a, l, &heads[a], &d);
        cJSON_AddItemToArray(h, cJSON_CreateIntArray(heads, 2));
    }
    cJSON_AddItemToObject(j, "ff_widths", w);
    cJSON_AddItemToObject(j, "heads", h);
    cJSON_AddStringToObject(j, "source", src);
    char *s = cJSON_PrintUnformatted(j);
    cJSON_Delete(j);
    return s;
}

int cmd_compress(int argc, char **argv) {
    // ratios NAN: not given (cli_parse stores finite numbers only)
    const char *cfg_path = NULL, *ckpt_path = NULL, *ema_s = "auto", *recon = "udfc", *crit = "l2", *out = NULL;
    float ff = NAN, heads = NAN, scale = 3, ridge = 1e-6f;
    int samples = 64, steps = 20, seed = 1234, threads = -1, help = 0, quant_bits = 0;
    CliOpt opts[] = {
        {"--ldm-config", OPT_STR, &cfg_path}, {"--ckpt", OPT_STR, &ckpt_path}, {"--ema", OPT_STR, &ema_s},
        {"--ff", OPT_FLOAT, &ff},             {"--heads", OPT_FLOAT, &heads},   {"--reconstruct", OPT_STR, &recon},
        {"--criterion", OPT_STR, &crit},
        {"--samples", OPT_INT, &samples},     {"--steps", OPT_INT, &steps},     {"--scale", OPT_FLOAT, &scale},
        {"--seed", OPT_INT, &seed},           {"--ridge", OPT_FLOAT, &ridge},   {"--out", OPT_STR, &out},
        {"--threads", OPT_INT, &threads},     {"--quant-udfc", OPT_INT, &quant_bits},
    };
    Err e = {0};
    if (cli_parse(argc, argv, opts, (int)(sizeof opts / sizeof opts[0]), NULL, NULL, 0, &help, &e))
        return cli_fail("compress", &e);
    if (help) return cli_help(usage);
    int no_udfc = 0, l1 = 0, ema = 0;
    static const char *const ema_names[] = {"auto", "on", "off"};
    for (ema = 0; ema < 3 && strcmp(ema_s, ema_names[ema]); ema++) {}
    if (!out) err_set(&e, ERR_ARG, "--out is required (see effdm compress --help)");
    else if (isnan(ff) && isnan(heads) && quant_bits == 0)
        err_set(&e, ERR_ARG, "nothing to do: give --ff, --heads and/or --quant-udfc (see effdm compress --help)");
    else if (quant_bits != 0 && (quant_bits < 2 || quant_bits > 8))
        err_set(&e, ERR_ARG, "--quant-udfc: expected weight bits 2..8, found %d", quant_bits);
    else if (!isnan(ff) && !(ff >= 0 && ff < 1)) err_set(&e, ERR_ARG, "--ff: expected a fraction 0 <= RATIO < 1 (see --help)");
    else if (!isnan(heads) && !(heads >= 0 && heads < 1))
        err_set(&e, ERR_ARG, "--heads: expected a fraction 0 <= RATIO < 1 (see --help)");
    else if (!!cfg_path != !!ckpt_path) err_set(&e, ERR_ARG, "--ldm-config and --ckpt go together (give both or neither)");
    else if (ema == 3) err_set(&e, ERR_ARG, "--ema: expected auto, on or off, found '%s'", ema_s);
    else if (samples < 1) err_set(&e, ERR_ARG, "--samples: expected >= 1, found %d", samples);
    else if (steps < 1) err_set(&e, ERR_ARG, "--steps: expected >= 1, found %d", steps);
    else if (!(ridge > 0)) err_set(&e, ERR_ARG, "--ridge: expected > 0");
    if (e.code || parse_choice("--reconstruct", recon, "udfc", "none", &no_udfc, &e) ||
        parse_choice("--criterion", crit, "l2", "l1", &l1, &e) || cli_threads(threads, &e))
        return cli_fail("compress", &e);
    char zcfg[4096], zckpt[4096];
    if (!cfg_path) {
        if (zoo_path("config.yaml", zcfg, sizeof zcfg, &e) || zoo_path("model.ckpt", zckpt, sizeof zckpt, &e))
            return cli_fail("compress", &e);
        cfg_path = zcfg, ckpt_path = zckpt;
    }
    if (isnan(ff)) ff = 0;
    if (isnan(heads)) heads = 0;
    PruneOpts po = {.ff_ratio = ff, .head_ratio = heads, .norm = l1 ? PRUNE_L1 : PRUNE_L2, .udfc = !no_udfc, .ridge = ridge};
    const int pruning = ff > 0 || heads > 0;
    PruneSampling ps = {steps, scale, samples, 16, (uint64_t)seed, on_progress, NULL};
    Progress bar;
    ps.user = &bar;
    LdmConfig *lc = malloc(sizeof *lc);
    WeightFile *wf = NULL;
    Ldm *m = NULL;
    UNet *small = NULL, *big = NULL;
    PruneMoments mom = {0}, qmom = {0};
    PruneQuantSummary qs = {0};
    unsigned char *yaml = NULL;
    size_t yaml_len = 0;
    char *json = NULL;
    int rc = 0;
    double t0 = clock_seconds();
    LdmLoadOpts lo = {(LdmEmaMode)ema, LDM_PARTS_ALL};
    if (!lc) rc = err_set(&e, ERR_NOMEM, "out of memory");
    if (!rc) rc = file_read_all(cfg_path, &yaml, &yaml_len, &e);
    if (!rc) {
        unsigned char *y2 = realloc(yaml, yaml_len + 1);
        if (!y2) rc = err_set(&e, ERR_NOMEM, "out of memory");
        else (yaml = y2)[yaml_len] = '\0';
    }
    if (!rc) rc = ldm_config_load(lc, cfg_path, &e);
    if (!rc && heads > 0 && !lc->unet.use_spatial_transformer)
        rc = err_set(&e, ERR_UNSUPPORTED, "%s: --heads: the UNet's attention is the legacy AttentionBlock "
                     "(use_spatial_transformer false), whose heads effdm does not prune; --heads prunes "
                     "SpatialTransformer attentions only", cfg_path);
    if (!rc) rc = weights_open(&wf, ckpt_path, &e);
    if (!rc) rc = ldm_load_from(&m, lc, wf, &lo, &e);
    if (!rc && unet_ff_blocks(m->unet) == 0)
        rc = err_set(&e, ERR_UNSUPPORTED, "%s: the UNet has no transformer blocks (use_spatial_transformer): no "
                     "FeedForward and no SpatialTransformer heads to prune (the heads of the legacy AttentionBlock "
                     "are not pruned)", cfg_path);
    if (!rc && po.udfc && pruning) rc = prune_moments(m, &ps, &po, &mom, &e);
    PruneSummary s;
    if (!rc) rc = prune_unet(m->unet, &po, &mom, &small, &s, &e);
    if (!rc) {
        big = m->unet;
        m->unet = small;
        m->cfg.unet = *unet_config(small);
    }
    if (!rc && quant_bits > 0) {
        rc = prune_ff_quant_moments(m, &ps, quant_bits, &qmom, &e);
        if (!rc) rc = prune_ff_quant_fold(m->unet, &qmom, ridge, &qs, &e);
    }
    if (!rc && !(json = pruned_json(&po, &ps, quant_bits, m->unet, ckpt_path))) rc = err_set(&e, ERR_NOMEM, "out of memory");
    if (!rc) rc = prune_write(m, wf, (const char *)yaml, json, out, &e);
    const int removed = !rc && (s.units_after < s.units_before || s.heads_after < s.heads_before);
    if (!rc && !pruning) printf("compressed %s: no unit or head pruned\n", ckpt_path);
    if (!rc && pruning) {
        printf("pruned %s: %d of %d FeedForward units and %d of %d attention heads kept in %d transformer blocks "
               "(%s, %s)\n", ckpt_path, s.units_after, s.units_before, s.heads_after, s.heads_before, s.n_blocks,
               po.udfc && removed ? "UDFC reconstruction" : "no reconstruction", l1 ? "l1" : "l2");
        if (heads > 0 && s.heads_after == s.heads_before)
            printf("  no head removed: every attention has %s (at least one is kept)\n",
                   s.heads_before == 2 * s.n_blocks ? "1 head" : "too few heads for this ratio");
        printf("  UNet parameters: %zu -> %zu (%.1f%% fewer)\n", s.params_before, s.params_after,
               100.0 * (1.0 - (double)s.params_after / (double)s.params_before));
    }
    if (!rc && quant_bits > 0)
        printf("  quantization UDFC (ff.net.0.proj at W%d): FeedForward output error of the weight quantization "
               "%.4g -> %.4g per token, summed over %d blocks (on the moments' own trajectories)\n",
               quant_bits, qs.err_before, qs.err_after, qs.n_blocks);
    if (!rc && ((po.udfc && removed) || quant_bits > 0))
        printf("  moments: %d trajectories, DDIM %d steps, guidance %g\n", samples, steps, scale);
    if (!rc) printf("wrote %s (%.1f s)\n", out, clock_seconds() - t0);
    if (big) unet_free(big);
    prune_moments_free(&mom);
    prune_moments_free(&qmom);
    ldm_free(m);
    weights_close(wf);
    free(lc);
    free(yaml);
    cJSON_free(json);
    return rc ? cli_fail("compress", &e) : 0;
}
