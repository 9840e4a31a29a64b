/* plot_curves.h: the training curves of a run (its log.csv, train/run_log.h) as a PNG.

       RunLogData d;                                   // run_log_read
       PlotCurvesOpts o = {.title = "runs/x", .best_epoch = 159, .best_note = "best_val"};
       if (plot_curves_png(&d, &o, "runs/x/curves.png", NULL, &e)) return e.code;

   Panels, stacked over one x axis in epochs (a step row of epoch e, step s at e + (s + 0.5)/S,
   S steps per epoch; the validation after epoch e at e + 1, the starting model's at 0):
   1. the loss of every step (thin) and each finished epoch's mean loss (thick, at the epoch's
      middle; an epoch with fewer than S step rows has none);
      y log10 when the step losses span more than PLOT_CURVES_LOG_DECADES decades;
   2. (when the log has validation rows) the validation: with sampled measures, val_error,
      val_sample_mse and val_sample_fd each divided by its value for the starting model (else
      the first validation), the reference values in the legend; without them val_error as
      logged;
   3. (when the log has sampled measures) val_sample_real as logged, 1 marked (the teacher's
      own samples).
   The selected epoch (best_epoch >= -1) is a dashed vertical line in every panel, named in
   the first. Limitations: step rows only draw from epoch 0 on (a log has no others).
*/
#ifndef EFFDM_PLOT_CURVES_H
#define EFFDM_PLOT_CURVES_H

#include "train/run_log.h"
#include "util/err.h"

#define PLOT_CURVES_W 1200
#define PLOT_CURVES_H 800
#define PLOT_CURVES_LOG_DECADES 1.5
#define PLOT_CURVES_NO_BEST (-2)  // best_epoch: no epoch to mark

typedef struct {
    const char *title;       // figure title (e.g. the run directory); NULL: none
    const char *subtitle;    // after it, in grey (NULL: none)
    int best_epoch;          // the selected epoch, log numbering (-1: the starting model); PLOT_CURVES_NO_BEST: none
    const char *best_note;   // how it was selected ("best_val"), named beside the line (NULL: not named)
    int width, height;       // 0: PLOT_CURVES_W x PLOT_CURVES_H
} PlotCurvesOpts;

// Where the panels were drawn, for tests: their plot areas in pixels and whether y is log10.
typedef struct {
    int n_panels;
    double area[3][4];       // left, top, width, height
    int ylog[3];
} PlotCurvesInfo;

// Draws d (at least one step row) to path as a PNG, atomically. info may be NULL. 0, or
// ERR_VALUE (no step rows), ERR_ARG (size), ERR_IO (cannot write path), ERR_NOMEM.
int plot_curves_png(const RunLogData *d, const PlotCurvesOpts *o, const char *path, PlotCurvesInfo *info, Err *e);

#endif
