/* run_plot.h: "plot this run": a run directory's training curves as a PNG (plot/plot_curves.h),
   for effdm plot and, at each checkpoint, effdm finetune.

       RunPlotSummary s;
       if (run_plot("runs/x", NULL, &s, &e)) return e.code;     // runs/x/curves.png

   Reads RUN_DIR/log.csv (train/run_log.h run_log_read), and to mark the selected epoch the
   run's train.select_epoch (config.yaml) and best.safetensors' best.epoch: the epoch effdm
   export --epoch best exports (train/run_state.c). With select_epoch last, or without
   best.safetensors, nothing is marked. The title is the directory's name; the subtitle its
   bits, epochs and steps (config.yaml, the log).
*/
#ifndef EFFDM_RUN_PLOT_H
#define EFFDM_RUN_PLOT_H

#include "util/err.h"

#define RUN_PLOT_FILE "curves.png"

typedef struct {
    int n_steps, n_vals, n_epochs;  // rows of the log, epochs with step rows
    int best_epoch;                 // the marked epoch (log numbering, -1: the starting model), or -2: none
    int torn_last;                  // the log's torn last line was left out (run_log.h)
    char path[4200];                // the PNG written
} RunPlotSummary;

// Writes the curves of run_dir to out (NULL: run_dir/curves.png). s may be NULL. 0, or
// ERR_IO (no log.csv, an unwritable out), ERR_FORMAT / ERR_VALUE (a malformed log row, named
// by file and line; a broken best.safetensors or config.yaml), ERR_NOMEM.
int run_plot(const char *run_dir, const char *out, RunPlotSummary *s, Err *e);

#endif
