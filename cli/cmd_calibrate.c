/* cmd_calibrate.c: effdm calibrate: naive PTQ of a run (run/run_calibrate.h). */
#include <signal.h>
#include <stdio.h>
#include <string.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "run/run_calibrate.h"

static const char *const usage[] = {
    "usage: effdm calibrate --config R.yaml [--set KEY=VALUE ...] [--threads N] [--force]",
    "",
    "Naive PTQ, the starting point of fine-tuning: runs the FP teacher's DDIM sampler",
    "(calib.steps, calib.eta, calib.scale, calib.n_samples random classes, calib.batch at a",
    "time) and records every UNet input, conditional and unconditional halves alike; builds",
    "the quantized student (quant.*: 'max' weight ranges) and fits the activation ranges in",
    "one forward of the fake-quantized network on calib.n_inputs random recorded inputs.",
    "",
    "Writes the run directory run.out: config.yaml (the resolved config), calib.safetensors",
    "(the recorded inputs; fine-tuning draws its validation set from the unused ones) and",
    "state.safetensors (the student). `effdm export --run DIR` turns it into a sampleable",
    "W4A4 model: the naive PTQ baseline.",
    "",
    "  --config R.yaml  run config (every key and default: docs/USER_GUIDE.md \"The run config\")",
    "  --set KEY=VALUE  set one run-config key after the file, as if it were the file's last",
    "                   line (repeatable; a later one wins): --set calib.n_samples=8",
    "                   --set run.out=/tmp/x. VALUE is read like the YAML file's values (lists",
    "                   in flow form: --set 'quant.fp_name_contains=[skip, op]'); an unknown key",
    "                   or a bad value is an error (exit 2). config.yaml records the result",
    "  --threads N      threads (default: run.threads, else $EFFDM_THREADS, else all cores)",
    "  --force          replace an existing state.safetensors in run.out (a calibrated or",
    "                   fine-tuned student is lost)",
    "",
    "Exit status: 0, 2 on bad input (arguments, config, model files), 1 on other failures.",
    NULL,
};

static volatile sig_atomic_t stop_signal = 0;
static void on_signal(int sig) { stop_signal = sig; }

int cmd_calibrate(int argc, char **argv) {
    Err e = {0};
    const char *config = NULL;
    int threads = -1, force = 0, help = 0;
    CliStrs sets = {0};
    CliOpt opts[] = {
        {"--config", OPT_STR, &config, 0},
        {"--threads", OPT_INT, &threads, 0},
        {"--force", OPT_FLAG, &force, 0},
        {"--set", OPT_STRS, &sets, 0},
    };
    if (cli_parse(argc, argv, opts, 4, NULL, NULL, 0, &help, &e)) return cli_fail("calibrate", &e);
    if (help) return cli_help(usage);
    if (!config) {
        err_set(&e, ERR_ARG, "--config R.yaml is required (see --help)");
        return cli_fail("calibrate", &e);
    }
    static RunConfig rc;  // large (paths, overrides): off the stack
    if (run_config_load_set(config, sets.v, sets.n, &rc, &e)) return cli_fail("calibrate", &e);
    if (cli_threads(opts[1].seen ? threads : rc.run.threads > 0 ? rc.run.threads : -1, &e))
        return cli_fail("calibrate", &e);
    CliCalibBar ps = {.units = 1};
    struct sigaction sa;  // a signal stops between trajectory batches; nothing is written then
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESETHAND;  // a second signal ends at once (nothing is written before the end)
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    CalibOpts o = {force, progress_calib, &ps, &stop_signal};
    CalibSummary s;
    if (run_calibrate(&rc, &o, &s, &e) == ERR_INTERRUPTED) {
        fprintf(stderr, "\neffdm calibrate: %s: nothing was written\n", e.msg);
        return 128 + (int)stop_signal;
    }
    if (e.code) return cli_fail("calibrate", &e);
    if (s.warning[0]) fprintf(stderr, "effdm calibrate: note: %s\n", s.warning);
    printf("calibrated %s in %.1f s (teacher trajectories %.1f s, activation ranges %.1f s)\n", rc.run.out,
           s.sec_total, s.sec_record, s.sec_calib);
    printf("  layers: %d trainable (W%dA%d%s, LoRA rank %d, %d TALSQ entr%s), %d special (W%dA%d), %d FP%s\n",
           s.trainable, s.w_bits, s.a_bits, rc.quant.act_granularity == RC_GRAN_TOKEN ? " per-token" : "", s.rank,
           s.entries, s.entries == 1 ? "y" : "ies", s.special,
           s.special_bits, s.special_bits, s.fp, rc.quant.fp_layers == RC_FP_F16 ? " (float16 weights)" : "");
    printf("  calibration: %d trajectories x %d DDIM steps (eta %g, scale %g), %d UNet inputs recorded, %d used "
           "for the activation ranges%s\n",
           rc.calib.n_samples, s.steps, rc.calib.eta, rc.calib.scale, s.n_recorded, s.n_used,
           s.using_ema ? "; teacher: EMA weights" : "");
    printf("  wrote %s/config.yaml, calib.safetensors, state.safetensors\n", rc.run.out);
    return 0;
}
