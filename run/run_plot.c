/* run_plot.c: a run directory's training curves (see run_plot.h). */
#include "run/run_plot.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "io/cfg.h"
#include "io/weights.h"
#include "plot/plot_curves.h"
#include "train/run_log.h"

static void path_join(char *dst, size_t cap, const char *dir, const char *name) {
    size_t n = strlen(dir);
    snprintf(dst, cap, "%s%s%s", dir, (n && dir[n - 1] == '/') ? "" : "/", name);
}

// best.safetensors' best.epoch into *epoch. 0 or the reader's error (ERR_KEY: not there).
static int read_best_epoch(const char *path, int *epoch, Err *e) {
    WeightFile *f;
    if (weights_open(&f, path, e)) return e->code;
    const WeightInfo *wi = weights_find(f, "best.epoch");
    int64_t v = 0;
    int rc = 0;
    if (!wi || wi->dtype != DT_I64 || wi->numel != 1)
        rc = err_set(e, ERR_KEY, "%s: no I64 tensor 'best.epoch' (expected a best-state file of effdm finetune)", path);
    else rc = weights_read_raw(f, "best.epoch", &v, sizeof v, e);
    weights_close(f);
    if (!rc && (v < -1 || v > 100000000))
        rc = err_set(e, ERR_VALUE, "%s: best.epoch %lld is not an epoch", path, (long long)v);
    if (!rc) *epoch = (int)v;
    return rc;
}

int run_plot(const char *run_dir, const char *out, RunPlotSummary *s, Err *e) {
    char p_log[4200], p_cfg[4200], p_best[4200], p_out[4200];
    path_join(p_log, sizeof p_log, run_dir, "log.csv");
    path_join(p_cfg, sizeof p_cfg, run_dir, "config.yaml");
    path_join(p_best, sizeof p_best, run_dir, "best.safetensors");
    if (out) snprintf(p_out, sizeof p_out, "%s", out);
    else path_join(p_out, sizeof p_out, run_dir, RUN_PLOT_FILE);

    RunLogData d = {0};
    if (run_log_read(p_log, &d, e)) return e->code;
    if (!d.n_steps) {
        run_log_data_free(&d);
        return err_set(e, ERR_VALUE, "%s: no step rows yet (fine-tuning has not run a step): nothing to plot", p_log);
    }
    // what the config says: the selection rule and the bits (a run directory without a
    // config.yaml - a copied log - plots without them)
    CfgNode *cfg = NULL;
    const char *select = NULL;
    int wb = 0, ab = 0;
    if (access(p_cfg, F_OK) == 0) {
        if (cfg_load(p_cfg, &cfg, e)) {
            run_log_data_free(&d);
            return e->code;
        }
        if (cfg_get_str(cfg_path(cfg, "train"), "select_epoch", &select, e) < 0 ||
            cfg_get_int(cfg_path(cfg, "quant"), "weight_bits", &wb, e) < 0 ||
            cfg_get_int(cfg_path(cfg, "quant"), "act_bits", &ab, e) < 0) {
            cfg_free(cfg);
            run_log_data_free(&d);
            return e->code;
        }
    }
    PlotCurvesOpts o = {0};
    o.best_epoch = PLOT_CURVES_NO_BEST;
    int rc = 0;
    if ((!select || strcmp(select, "last") != 0) && access(p_best, F_OK) == 0) {
        rc = read_best_epoch(p_best, &o.best_epoch, e);
        o.best_note = select;
    }
    if (!rc) {
        // the title: the directory's own name
        char name[256];
        size_t n = strlen(run_dir);
        while (n > 1 && run_dir[n - 1] == '/') n--;
        size_t b = n;
        while (b > 0 && run_dir[b - 1] != '/') b--;
        snprintf(name, sizeof name, "%.*s", (int)(n - b), run_dir + b);
        char sub[200] = "", *q = sub;
        if (wb && ab) q += snprintf(q, sizeof sub, "W%dA%d, ", wb, ab);
        int epochs = d.n_epochs ? d.epochs[d.n_epochs - 1].epoch + 1 : 0;
        snprintf(q, sizeof sub - (size_t)(q - sub), "%d epoch%s of %d steps%s%s", epochs, epochs == 1 ? "" : "s",
                 d.steps_per_epoch, select ? ", select_epoch " : "", select ? select : "");
        o.title = name;
        o.subtitle = sub;
        rc = plot_curves_png(&d, &o, p_out, NULL, e);
    }
    if (!rc && s) {
        s->n_steps = d.n_steps;
        s->n_vals = d.n_vals;
        s->n_epochs = d.n_epochs;
        s->best_epoch = o.best_epoch;
        s->torn_last = d.torn_last;
        snprintf(s->path, sizeof s->path, "%s", p_out);
    }
    run_log_data_free(&d);
    cfg_free(cfg);
    return rc;
}
