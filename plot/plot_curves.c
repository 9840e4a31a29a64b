/* plot_curves.c: a run's training curves (plot_curves.h) on plot.h's axes. */
#include "plot/plot_curves.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "plot/plot.h"

// Layout at 1200 x 800, scaled with the figure: margins and the rows between panels.
#define M_LEFT 96.0
#define M_RIGHT 28.0
#define M_TOP 52.0      // the title line
#define HEAD 34.0       // a panel's heading row above its area
#define GAP 14.0        // between one panel's area and the next heading
#define M_BOTTOM 52.0   // x numbers and the axis label

static const PlotStyle STEP_LOSS = {{0.337, 0.706, 0.914, 0.55}, 0.8, 0, 0, "loss per step"};
static const PlotStyle EPOCH_MEAN = {PLOT_BLUE, 2.4, 0, 0, "epoch mean"};
static const PlotStyle BEST = {PLOT_BLACK, 1.3, 1, 0, NULL};
static const PlotStyle REF = {PLOT_GREY, 1.2, 1, 0, "starting model"};

// The y range of v[0..n) (finite, positive on a log axis) with a margin, and whether it is
// drawn on a log axis (only when `may_log` and it spans more than PLOT_CURVES_LOG_DECADES).
static PlotScale y_range(const double *v, int n, int may_log, double extra, double *y0, double *y1) {
    double lo = INFINITY, hi = -INFINITY;
    for (int i = 0; i < n; i++)
        if (isfinite(v[i])) {
            lo = fmin(lo, v[i]);
            hi = fmax(hi, v[i]);
        }
    if (isfinite(extra)) {
        lo = fmin(lo, extra);
        hi = fmax(hi, extra);
    }
    if (!isfinite(lo)) lo = hi = 1.0;
    PlotScale sc = may_log && lo > 0 && log10(hi / lo) > PLOT_CURVES_LOG_DECADES ? PLOT_LOG : PLOT_LINEAR;
    plot_range_pad(lo, hi, sc, 0.05, y0, y1);
    return sc;
}

// The dashed line of the selected epoch (in the legend when labelled); rings around the
// selected validation's points of the series ys[0..n_series) (each of n values at vx).
static void mark_best(PlotAxes *a, const PlotCurvesOpts *o, int labelled, const RunLogData *d, const double *vx,
                      const double *const *ys, int n_series) {
    if (o->best_epoch < -1) return;
    for (int i = 0; i < d->n_vals; i++)
        if (d->vals[i].epoch == o->best_epoch)
            for (int k = 0; k < n_series; k++) plot_rings(a, &vx[i], &ys[k][i], 1, PLOT_BLACK, 6.5);
    char label[160] = "";
    if (o->best_epoch < 0) snprintf(label, sizeof label, "selected: the starting model");
    else snprintf(label, sizeof label, "selected: epoch %d", o->best_epoch + 1);
    if (o->best_note) snprintf(label + strlen(label), sizeof label - strlen(label), " (%s)", o->best_note);
    PlotStyle s = BEST;
    s.label = labelled ? label : NULL;
    plot_vline(a, o->best_epoch + 1.0, &s);
}

static void short_num(double v, char *buf, size_t cap) { snprintf(buf, cap, "%.3g", v); }

int plot_curves_png(const RunLogData *d, const PlotCurvesOpts *o, const char *path, PlotCurvesInfo *info, Err *e) {
    if (!d->n_steps) return err_set(e, ERR_VALUE, "%s: the log has no step rows yet (nothing to plot)", path);
    int W = o->width ? o->width : PLOT_CURVES_W, H = o->height ? o->height : PLOT_CURVES_H;
    if (W < 400 || H < 300) return err_set(e, ERR_ARG, "figure size %dx%d: expected at least 400x300", W, H);
    int S = d->steps_per_epoch > 0 ? d->steps_per_epoch : 1;
    int has_sampled = 0;
    for (int i = 0; i < d->n_vals; i++)
        has_sampled |= isfinite(d->vals[i].sample_mse) || isfinite(d->vals[i].sample_real);
    int n_panels = 1 + (d->n_vals > 0) + has_sampled;

    // every array the panels draw, in one block
    int ns = d->n_steps, ne = d->n_epochs, nv = d->n_vals;
    double *buf = malloc((size_t)(2 * ns + 2 * ne + 6 * (nv ? nv : 1)) * sizeof(double));
    if (!buf) return err_set(e, ERR_NOMEM, "out of memory");
    double *sx = buf, *sy = sx + ns, *ex = sy + ns, *ey = ex + ne, *vx = ey + ne, *verr = vx + nv, *vmse = verr + nv,
           *vfd = vmse + nv, *vreal = vfd + nv;
    double x1 = 0;
    for (int i = 0; i < ns; i++) {
        sx[i] = d->steps[i].epoch + (d->steps[i].step + 0.5) / S;
        sy[i] = d->steps[i].loss;
        x1 = fmax(x1, d->steps[i].epoch + 1.0);
    }
    for (int k = 0; k < ne; k++) {  // an unfinished epoch's mean would be of its first steps only
        ex[k] = d->epochs[k].epoch + 0.5;
        ey[k] = d->epochs[k].n >= S ? d->epochs[k].mean : NAN;
    }
    for (int i = 0; i < nv; i++) {
        vx[i] = d->vals[i].epoch + 1.0;
        x1 = fmax(x1, vx[i]);
    }
    if (o->best_epoch >= -1) x1 = fmax(x1, o->best_epoch + 1.0);
    // a margin, so that the starting model's points at 0 and a line at the last epoch show whole
    const double xpad = 0.015 * x1, x0 = -xpad;
    x1 += xpad;

    PlotFig *f = NULL;
    if (plot_fig_new(&f, W, H, e)) {
        free(buf);
        return e->code;
    }
    const double sxs = W / (double)PLOT_CURVES_W, sys = H / (double)PLOT_CURVES_H;
    const double L = M_LEFT * sxs, R = W - M_RIGHT * sxs, top = M_TOP * sys, bottom = H - M_BOTTOM * sys;
    if (o->title) {
        double w = plot_fig_text(f, L - 60 * sxs, 32 * sys, PLOT_TITLE, 0.0, 1.0, o->title);  // on one baseline
        if (o->subtitle) plot_fig_text(f, L - 60 * sxs + w + 14, 32 * sys, PLOT_LABEL, 0.0, 1.0, o->subtitle);
    }
    // panel heights: the loss gets the most room
    static const double share[3][3] = {{1.0, 0, 0}, {0.56, 0.44, 0}, {0.45, 0.33, 0.22}};
    double room = bottom - top - n_panels * HEAD * sys - (n_panels - 1) * GAP * sys, y = top;
    PlotAxes ax[3];
    for (int p = 0; p < n_panels; p++) {
        y += HEAD * sys;
        double h = room * share[n_panels - 1][p];
        plot_axes_init(&ax[p], f, L, y, R - L, h);
        ax[p].xstep_min = 1.0;  // whole epochs
        y += h + GAP * sys;
    }
    const char *xlabel = "epoch";

    // 1: the loss
    double y0, y1;
    PlotScale sc = y_range(sy, ns, 1, NAN, &y0, &y1);
    plot_axes_range(&ax[0], x0, x1, y0, y1, sc);
    plot_axes_draw(&ax[0], "Training loss", n_panels == 1 ? xlabel : NULL,
                   sc == PLOT_LOG ? "distillation loss (log scale)" : "distillation loss", n_panels == 1);
    plot_line(&ax[0], sx, sy, ns, &STEP_LOSS);
    PlotStyle mean = EPOCH_MEAN;
    mean.marker = ne <= 40 ? 3.0 : 0.0;
    plot_line(&ax[0], ex, ey, ne, &mean);
    mark_best(&ax[0], o, 1, d, NULL, NULL, 0);
    plot_legend(&ax[0]);

    // 2: the validation
    if (nv) {
        PlotAxes *a = &ax[1];
        int last = n_panels == 2;
        const RunLogVal *ref = &d->vals[0];  // the starting model when the log has it
        char head[128], l_err[96], l_mse[96], l_fd[96], num[32];
        if (has_sampled) {
            for (int i = 0; i < nv; i++) {
                const RunLogVal *v = &d->vals[i];
                verr[i] = ref->val_error > 0 ? v->val_error / ref->val_error : NAN;
                vmse[i] = ref->sample_mse > 0 ? v->sample_mse / ref->sample_mse : NAN;
                vfd[i] = ref->sample_fd > 0 ? v->sample_fd / ref->sample_fd : NAN;
            }
            sc = y_range(verr, 3 * nv, 1, 1.0, &y0, &y1);  // verr, vmse, vfd are one run of buf
            if (ref->epoch < 0) snprintf(head, sizeof head, "Validation, relative to the starting model");
            else snprintf(head, sizeof head, "Validation, relative to epoch %d", ref->epoch + 1);
            plot_axes_range(a, x0, x1, y0, y1, sc);
            plot_axes_draw(a, head, last ? xlabel : NULL, "ratio", last);
            // the legend says what is drawn: each measure over its reference value
            short_num(ref->val_error, num, sizeof num);
            snprintf(l_err, sizeof l_err, "val_error \u00f7 %s", num);
            short_num(ref->sample_mse, num, sizeof num);
            snprintf(l_mse, sizeof l_mse, "sample MSE \u00f7 %s", num);
            short_num(ref->sample_fd, num, sizeof num);
            snprintf(l_fd, sizeof l_fd, "sample FD \u00f7 %s", num);
            PlotStyle r = REF;
            if (ref->epoch >= 0) r.label = "reference";
            plot_hline(a, 1.0, &r);
            plot_line(a, vx, verr, nv, &(PlotStyle){PLOT_VERMILLION, 1.8, 0, 3.5, l_err});
            plot_line(a, vx, vmse, nv, &(PlotStyle){PLOT_GREEN, 1.8, 0, 3.5, l_mse});
            plot_line(a, vx, vfd, nv, &(PlotStyle){PLOT_PURPLE, 1.8, 0, 3.5, l_fd});
        } else {
            for (int i = 0; i < nv; i++) verr[i] = d->vals[i].val_error;
            sc = y_range(verr, nv, 1, NAN, &y0, &y1);
            plot_axes_range(a, x0, x1, y0, y1, sc);
            plot_axes_draw(a, "Validation", last ? xlabel : NULL, "val_error (\u03b5 MSE)", last);
            if (ref->epoch < 0) plot_hline(a, ref->val_error, &REF);
            plot_line(a, vx, verr, nv, &(PlotStyle){PLOT_VERMILLION, 1.8, 0, 3.5, "val_error"});
        }
        mark_best(a, o, 0, d, vx, (const double *const[]){verr, vmse, vfd}, has_sampled ? 3 : 1);
        plot_legend(a);
    }

    // 3: how plausible the student's samples are to the teacher
    if (has_sampled) {
        PlotAxes *a = &ax[2];
        for (int i = 0; i < nv; i++) vreal[i] = d->vals[i].sample_real;
        sc = y_range(vreal, nv, 0, 1.0, &y0, &y1);
        plot_axes_range(a, x0, x1, y0, y1, sc);
        plot_axes_draw(a, "Teacher's denoising error on the student's samples \u00f7 on its own", xlabel, "ratio", 1);
        plot_hline(a, 1.0, &(PlotStyle){PLOT_GREY, 1.2, 1, 0, "teacher's own samples"});
        plot_line(a, vx, vreal, nv, &(PlotStyle){PLOT_ORANGE, 1.8, 0, 3.5, "val_sample_real"});
        mark_best(a, o, 0, d, vx, (const double *const[]){vreal}, 1);
        plot_legend(a);
    }
    if (info) {
        info->n_panels = n_panels;
        for (int p = 0; p < n_panels; p++) {
            info->area[p][0] = ax[p].px;
            info->area[p][1] = ax[p].py;
            info->area[p][2] = ax[p].pw;
            info->area[p][3] = ax[p].ph;
            info->ylog[p] = ax[p].yscale == PLOT_LOG;
        }
    }
    int rc = plot_fig_write_png(f, path, e);
    plot_fig_free(f);
    free(buf);
    return rc;
}
