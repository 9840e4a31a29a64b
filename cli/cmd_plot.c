/* cmd_plot.c: effdm plot RUN_DIR: a run's training curves as a PNG. */
#include <stdio.h>

#include "cli/cli.h"
#include "cli/commands.h"
#include "plot/plot.h"
#include "plot/plot_curves.h"
#include "run/run_plot.h"

static const char *const usage[] = {
    "usage: effdm plot RUN_DIR [--out FILE.png]",
    "",
    "Draws the training curves of a fine-tuning run from RUN_DIR/log.csv into a 1200x800 PNG",
    "(default RUN_DIR/" RUN_PLOT_FILE "; effdm finetune also rewrites that file at every checkpoint):",
    "  - the training loss of every step (thin) and each epoch's mean (thick); the y axis is",
    "    logarithmic when the step losses span more than 1.5 decades;",
    "  - the validation after each validated epoch: with the sampled validation",
    "    (train.val_samples) val_error, val_sample_mse and val_sample_fd, each divided by the",
    "    starting model's value (naive PTQ, logged as epoch -1; its values are in the legend),",
    "    else val_error as logged;",
    "  - with the sampled validation, val_sample_real (1: the teacher denoises the samples as",
    "    well as its own).",
    "The epoch the run selected - best.safetensors, what effdm export --epoch best exports under",
    "train.select_epoch best_val / best_sampled - is a dashed line. Epochs are counted from 1 on",
    "the x axis: a step of epoch e (log numbering from 0) sits inside [e, e + 1], the validation",
    "after it at e + 1, the starting model at 0.",
    "",
    "  --out FILE.png   where to write the picture (written to FILE.png.tmp, then renamed)",
    "",
    "Exit status: 0; 2 when log.csv is missing or has a malformed row (the message names the",
    "file and line), or FILE.png cannot be written. A running fine-tuning can be plotted: a last",
    "line it has not finished writing is left out (and said so).",
    NULL,
};

int cmd_plot(int argc, char **argv) {
    Err e = {0};
    const char *pos[1], *out = NULL;
    int n_pos = 0, help = 0;
    CliOpt opts[] = {{"--out", OPT_STR, &out, 0}};
    if (cli_parse(argc, argv, opts, 1, pos, &n_pos, 1, &help, &e)) return cli_fail("plot", &e);
    if (help) return cli_help(usage);
    if (n_pos != 1) {
        err_set(&e, ERR_ARG, "expected one RUN_DIR (see effdm plot --help)");
        return cli_fail("plot", &e);
    }
    RunPlotSummary s;
    int rc = run_plot(pos[0], out, &s, &e);
    plot_release();
    if (rc) return cli_fail("plot", &e);
    if (s.torn_last)
        fprintf(stderr, "effdm plot: note: the log's last line is unfinished (a run writing it?): left out\n");
    printf("%s: %d steps, %d epochs, %d validations", s.path, s.n_steps, s.n_epochs, s.n_vals);
    if (s.best_epoch >= 0) printf(", selected epoch %d marked", s.best_epoch + 1);
    else if (s.best_epoch == -1) printf(", selected: the starting model (marked at 0)");
    printf("\n");
    return 0;
}
