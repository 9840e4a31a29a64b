/* cmd_export.c: effdm export: a run directory's student as one deployable .safetensors
   (run/run_export.h; the format: qalora/export.h). */
#include <stdio.h>
#include <unistd.h>
#include <string.h>

#include "cli/cli.h"
#include "run/run_config.h"
#include "cli/commands.h"
#include "io/weights.h"
#include "run/run_export.h"

static const char *const usage[] = {
    "usage: effdm export --run RUN_DIR --out M.safetensors [--format effdm|compvis-fp32|compvis-fp16]",
    "                    [--epoch last|best] [--fp16-layers] [--threads N]",
    "",
    "Merges the LoRA branches into the weights, packs the integer levels (2 per byte at",
    "4 bits, 8 in 3 bytes at 3 bits, 4 per byte at 2 bits, special layers 1 per byte), and",
    "writes per-channel Δ/z, the activation tables (rounded zero points) with their",
    "training timesteps, the FP rest of the UNet, the first stage, the class embedder, the",
    "schedule and the CompVis YAML into one file: `effdm sample --model M.safetensors`",
    "needs nothing else.",
    "A calibrated run directory (effdm calibrate) exports the naive PTQ model.",
    "",
    "With --format compvis-fp32 or compvis-fp16 it writes instead, for PyTorch, the student",
    "DEQUANTIZED into the teacher's CompVis state dict: the same tensor names and shapes",
    "(model.diffusion_model.*, first_stage_model.*, cond_stage_model.*, betas, alphas_cumprod,",
    "...), each quantized layer's weight replaced by the weight the fake-quantized student",
    "computes with; scale_factor only with the YAML's scale_by_std, model_ema.* (the student",
    "again) only with its use_ema, so that",
    "LatentDiffusion(**config.model.params).load_state_dict(sd, strict=True) loads it. Such a",
    "file holds no activation quantization and no guidance/eps gain (a note says so). Only",
    ".safetensors names: effdm writes no torch .ckpt.",
    "",
    "  --run RUN_DIR   the run directory (config.yaml, state.safetensors)",
    "  --out FILE      the export to write (atomically)",
    "  --format F      effdm (default): the packed integer export effdm samples; compvis-fp32:",
    "                  the dequantized CompVis state dict in float32; compvis-fp16: the same with",
    "                  the networks' weights in float16 (schedule buffers stay float32)",
    "  --epoch WHICH   last: state.safetensors; best: best.safetensors, the epoch the run's",
    "                  validation chose (the starting model, naive PTQ, when no epoch beat it).",
    "                  Default: the run's train.select_epoch (best_val, best_sampled -> best;",
    "                  last -> last)",
    "  --fp16-layers   for a run with quant.fp_layers f32 (the reference recipe's default): store",
    "                  the weights of the layers left FP (skip connections, Downsample convs,",
    "                  layers kept FP) as float16 anyway: half their size, but the model is then",
    "                  no longer bit-exact to the student. Runs with quant.fp_layers f16 (the",
    "                  effdm recipe's default) always write them as F16, exactly: the student",
    "                  was trained with those float16 values; the flag changes nothing there",
    "  --threads N     threads (default: $EFFDM_THREADS, else all cores)",
    "",
    "Prints the size of the UNet part against the FP32 UNet (the FP autoencoder comes on top).",
    "Exit status: 0, 2 on bad input (arguments, run directory, files), 1 on other failures.",
    NULL,
};

static void on_fit_progress(long done, long total, void *user) {
    Progress *bar = user;
    if (done == 0) progress_start(bar, "gain fit (the teacher's samples, then the student's at each grid gain)", total);
    else if (done >= total) progress_finish(bar, NULL);
    else {
        bar->total = total;  // a grid walk past its start grid adds passes
        progress_update(bar, done, NULL);
    }
}

// --format compvis-*: write, then say what the file is and what it cannot hold.
static int export_compvis(const char *run, const ExportOpts *eo, const char *out, const char *format) {
    Err e = {0};
    CompvisSummary s;
    if (run_export_compvis(run, eo, out, &s, &e)) return cli_fail("export", &e);
    fprintf(stderr, "effdm export: note: %s\n", s.note);
    if (s.keys_note[0]) fprintf(stderr, "effdm export: note: keys as the YAML's LatentDiffusion has them: %s\n", s.keys_note);
    printf("exported %s (%s) to %s as a %s CompVis state dict (%d tensors)\n", run, eo->epoch, out, format,
           s.n_tensors);
    printf("  dequantized: %d quantized layers as the weights the student computes with", s.n_quantized);
    if (s.n_fp_rounded) printf("; %d FP layers as the float16-rounded weights it ran", s.n_fp_rounded);
    if (s.n_ema) printf("; %d model_ema.* buffers hold the same student weights", s.n_ema);
    printf("\n  whole file: %zu bytes of tensors (%.2f MiB)\n", s.total_bytes, (double)s.total_bytes / 1048576.0);
    return 0;
}

int cmd_export(int argc, char **argv) {
    Err e = {0};
    const char *run = NULL, *out = NULL, *epoch = NULL, *format = "effdm";
    int threads = -1, help = 0, fp16 = 0;
    CliOpt opts[] = {
        {"--fp16-layers", OPT_FLAG, &fp16, 0},
        {"--run", OPT_STR, &run, 0},
        {"--out", OPT_STR, &out, 0},
        {"--epoch", OPT_STR, &epoch, 0},
        {"--threads", OPT_INT, &threads, 0},
        {"--format", OPT_STR, &format, 0},
    };
    if (cli_parse(argc, argv, opts, 6, NULL, NULL, 0, &help, &e)) return cli_fail("export", &e);
    if (help) return cli_help(usage);
    if (!run || !out) {
        err_set(&e, ERR_ARG, "%s is required (see --help)", !run ? "--run RUN_DIR" : "--out M.safetensors");
        return cli_fail("export", &e);
    }
    ExportFormat fmt;
    if (run_export_format(format, &fmt, &e)) return cli_fail("export", &e);
    char cfg_path[4096];
    if (!epoch) {  // the run's own choice: train.select_epoch of its resolved config
        RunConfig rc;
        snprintf(cfg_path, sizeof cfg_path, "%s/config.yaml", run);
        if (run_config_load(cfg_path, &rc, &e)) return cli_fail("export", &e);
        epoch = rc.train.select_epoch != RC_SELECT_LAST ? "best" : "last";
        snprintf(cfg_path, sizeof cfg_path, "%s/best.safetensors", run);
        if (!strcmp(epoch, "best") && access(cfg_path, R_OK) != 0) {
            // a calibrated run that was never fine-tuned: its only state is the naive PTQ model
            fprintf(stderr, "effdm export: note: %s has no best.safetensors (not fine-tuned yet): "
                    "exporting state.safetensors\n", run);
            epoch = "last";
        }
    }
    if (strcmp(epoch, "last") != 0 && strcmp(epoch, "best") != 0) {
        err_set(&e, ERR_ARG, "--epoch: expected 'last' or 'best', found '%s'", epoch);
        return cli_fail("export", &e);
    }
    if (cli_threads(threads, &e)) return cli_fail("export", &e);
    if (!strcmp(epoch, "best")) {  // say so when the run's best is its starting model
        char bp[4200];
        WeightFile *bf;
        int64_t be = 0;
        Err ignore = {0};
        snprintf(bp, sizeof bp, "%s/best.safetensors", run);
        if (!weights_open(&bf, bp, &ignore)) {
            if (weights_find(bf, "best.epoch") && !weights_read_raw(bf, "best.epoch", &be, sizeof be, &ignore) && be < 0)
                fprintf(stderr, "effdm export: note: the run's best is its starting model (naive PTQ): no fine-tuned "
                        "epoch beat it on the run's validation (train.select_epoch); --epoch last exports the "
                        "fine-tuned student anyway\n");
            weights_close(bf);
        }
    }
    ExportSummary s;
    Progress bar;
    ExportOpts eo = {epoch, fp16, on_fit_progress, &bar, fmt};
    if (fmt != EXPORT_EFFDM) return export_compvis(run, &eo, out, format);
    if (run_export(run, &eo, out, &s, &e)) return cli_fail("export", &e);
    printf("exported %s (%s) to %s%s\n", run, epoch, out,
           !s.fp16_layers ? "" : (s.exact ? " (FP layers as float16, as the student ran them)"
                                          : " (FP layers rounded to float16 at export: not bit-exact to the student)"));
    printf("  layers: %d trainable (W%dA%d%s, %d TALSQ entr%s), %d special (W%dA%d), %d FP\n", s.trainable, s.w_bits,
           s.a_bits, s.token ? " per-token" : "", s.entries, s.entries == 1 ? "y" : "ies", s.special, s.special_bits,
           s.special_bits, s.fp);
    printf("  UNet part: %zu bytes (%.2f MiB) vs FP32 UNet %zu bytes (%.2f MiB): 1/%.2f\n", s.unet_bytes,
           (double)s.unet_bytes / 1048576.0, s.unet_fp32_bytes, (double)s.unet_fp32_bytes / 1048576.0,
           s.unet_bytes ? (double)s.unet_fp32_bytes / (double)s.unet_bytes : 0.0);
    if (s.n_gain)
        printf("  guidance gain: %.3f (train.guidance_gain fit on %d teacher trajectories, %d gains measured from %.3g "
               "to %.3g: latent MSE to the teacher %.4g at gain 1, %.4g at the best gain measured)\n", (double)s.gain_min,
               s.gain_samples, s.gain_points, (double)s.gain_lo, (double)s.gain_hi, (double)s.gain_err1,
               (double)s.gain_err);
    if (s.eps_gain > 0)
        printf("  eps gain: %.4f (train.eps_gain fit on %d teacher trajectories, %d gains measured from %.4g to %.4g: "
               "latent MSE to the teacher %.4g at gain 1, %.4g at the best gain measured)\n", (double)s.eps_gain,
               s.gain_samples, s.eps_points, (double)s.eps_lo, (double)s.eps_hi, (double)s.eps_err1, (double)s.eps_err);
    printf("  whole file: %zu bytes of tensors (%.2f MiB; first stage, class embedder, schedule included)\n",
           s.total_bytes, (double)s.total_bytes / 1048576.0);
    return 0;
}
