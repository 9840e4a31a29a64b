/* run_export.c: exporting a run: its config, the teacher it names, the student of a state file,
   the guidance gain its config asks for, and qalora/export.h's writer (see run_export.h). */
#include "run/run_export.h"

#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/fileio.h"
#include "models/ldm_config.h"
#include "qalora/guidance_gain.h"
#include "run/run_config.h"
#include "run/run_wire.h"
#include "util/path.h"

int run_export_state_path(char *dst, size_t cap, const char *run_dir, const char *epoch, Err *e) {
    if (!strcmp(epoch, "last")) path_join(dst, cap, run_dir, "state.safetensors");
    else if (!strcmp(epoch, "best")) path_join(dst, cap, run_dir, "best.safetensors");
    else return err_set(e, ERR_ARG, "--epoch: expected 'best' or 'last', found '%s'", epoch);
    return 0;
}

// A gain fit's latent error at the point nearest gain 1 (err1) and at its best point measured
// (the fitted gain, a parabola's vertex, is not measured); the points and their range.
static void fit_errors(const GuidanceFit *f, float *err1, float *best, int *points, float *lo, float *hi) {
    int one = 0, min = 0;
    *lo = *hi = f->grid[0];
    for (int k = 1; k < f->n_grid; k++) {
        if (fabsf(f->grid[k] - 1.0f) < fabsf(f->grid[one] - 1.0f)) one = k;
        if (f->err[k] < f->err[min]) min = k;
        if (f->grid[k] < *lo) *lo = f->grid[k];
        if (f->grid[k] > *hi) *hi = f->grid[k];
    }
    *err1 = f->err[one];
    *best = f->err[min];
    *points = f->n_grid;
}

// What both export formats load: the run's config and YAML text, the teacher, the student of
// the epoch's state file over it.
typedef struct {
    RunConfig *rc;
    LdmConfig *lc;
    WeightFile *tf, *sf;
    Ldm *m;
    QModel q;
    int q_ok;
    char *yaml;                  // NUL-terminated
} ExportRun;

static void export_run_free(ExportRun *x) {
    if (x->q_ok) qmodel_free(&x->q);
    ldm_free(x->m);
    weights_close(x->tf);
    weights_close(x->sf);
    free(x->yaml);
    free(x->rc);
    free(x->lc);
    memset(x, 0, sizeof *x);
}

static int export_run_load(ExportRun *x, const char *run_dir, const char *epoch, const char *path, Err *e) {
    memset(x, 0, sizeof *x);
    // the output first: minutes of work must not end in "cannot create"
    char probe[RC_PATH_MAX + 48];
    snprintf(probe, sizeof probe, "%s.tmp", path);
    FILE *pf = fopen(probe, "wb");
    if (!pf) return err_set(e, ERR_IO, "--out %s: cannot create %s: %s", path, probe, strerror(errno));
    fclose(pf);
    remove(probe);
    char p_cfg[RC_PATH_MAX + 32], p_state[RC_PATH_MAX + 32];
    path_join(p_cfg, sizeof p_cfg, run_dir, "config.yaml");
    if (run_export_state_path(p_state, sizeof p_state, run_dir, epoch, e)) return e->code;
    x->rc = malloc(sizeof *x->rc);
    x->lc = malloc(sizeof *x->lc);
    if (!x->rc || !x->lc) return err_set(e, ERR_NOMEM, "out of memory");
    RunConfig *rc = x->rc;
    if (run_config_load(p_cfg, rc, e)) return e->code;
    if (access(p_state, F_OK) != 0)
        return err_set(e, ERR_IO, "%s: no such file (%s)", p_state,
                       !strcmp(epoch, "best") ? "best.safetensors is written by fine-tuning with train.select_epoch "
                                                "best_val or best_sampled" : "calibrate the run first");
    QModelConfig qc;
    if (run_qmodel_config(&qc, rc, e)) return e->code;
    unsigned char *yaml = NULL;
    size_t yaml_len = 0;
    if (file_read_all(rc->model.ldm_config, &yaml, &yaml_len, e)) return e->code;
    x->yaml = realloc(yaml, yaml_len + 1);  // NUL-terminated for the metadata
    if (!x->yaml) {
        free(yaml);
        return err_set(e, ERR_NOMEM, "out of memory");
    }
    x->yaml[yaml_len] = '\0';
    if (ldm_config_load(x->lc, rc->model.ldm_config, e)) return e->code;
    if (weights_open(&x->tf, rc->model.ckpt, e)) return e->code;
    LdmLoadOpts lo = {rc->model.ema == RC_EMA_ON ? LDM_EMA_ON : (rc->model.ema == RC_EMA_OFF ? LDM_EMA_OFF : LDM_EMA_AUTO),
                      LDM_PARTS_ALL};
    if (ldm_load_from(&x->m, x->lc, x->tf, &lo, e)) return e->code;
    Rng r;
    rng_seed(&r, 0, 0);  // LoRA A is read from the state
    if (qmodel_init(&x->q, x->m->unet, &qc, x->m->T, &r, e)) return e->code;
    x->q_ok = 1;
    if (weights_open(&x->sf, p_state, e) || qmodel_read_state(&x->q, x->sf, "q.", e)) return e->code;
    return 0;
}

// 1 when the run's config fits a guidance gain at export (class-conditional, guided training).
static int fits_guidance_gain(const ExportRun *x) {
    return x->rc->train.guidance_gain == RC_GAIN_FIT && ldm_is_class_conditional(x->m) && x->rc->train.scale != 1.0;
}

int run_export(const char *run_dir, const ExportOpts *o, const char *path, ExportSummary *s, Err *e) {
    const char *epoch = o && o->epoch ? o->epoch : "last";
    ExportRun x;
    float *gain = NULL;
    int code = export_run_load(&x, run_dir, epoch, path, e);
    if (code) goto done;
    RunConfig *rc = x.rc;
    QModel *q = &x.q;
    Ldm *m = x.m;
    // quant.fp_layers f16: qc makes the FP layers F16 (exact); o->fp16_layers forces it on an f32 run
    ExportInfo info = {rc->model.ckpt, rc->model.ldm_config, x.yaml, run_dir, epoch, m->using_ema, o && o->fp16_layers};
    GuidanceFitOpts go = {rc->train.steps, rc->train.eta, rc->train.scale, rc->train.guidance_fit_samples, 16,
                          (uint64_t)rc->train.seed + 1, o ? o->on_progress : NULL, o ? o->user : NULL};
    GuidanceFit fit = {0};
    GuidanceFit efit = {0};
    int fit_g = fits_guidance_gain(&x);
    int fit_e = rc->train.eps_gain == RC_GAIN_FIT;
    if (fit_g || fit_e) {
        info.n_gain = q->train_sched.n;
        gain = malloc(2 * (size_t)info.n_gain * sizeof(float));
        if (!gain) {
            code = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if ((fit_g || fit_e) && (code = gain_fit(q, m, &go, fit_g ? &fit : NULL, fit_e ? &efit : NULL, e))) goto done;
    for (int k = 0; k < info.n_gain; k++) {
        gain[k] = fit.gain;
        gain[info.n_gain + k] = efit.gain;
    }
    if (fit_g) info.guidance_gain = gain;
    if (fit_e) info.eps_gain = gain + info.n_gain;  // on top of the guidance gain just fitted
    code = export_write(q, m, x.tf, &info, path, s, e);
    if (!code && s && info.guidance_gain) {
        fit_errors(&fit, &s->gain_err1, &s->gain_err, &s->gain_points, &s->gain_lo, &s->gain_hi);
        s->gain_samples = go.n_samples;
    }
    if (!code && s && info.eps_gain) {
        fit_errors(&efit, &s->eps_err1, &s->eps_err, &s->eps_points, &s->eps_lo, &s->eps_hi);
        s->gain_samples = go.n_samples;
    }
done:
    export_run_free(&x);
    free(gain);
    return code;
}

int run_export_format(const char *name, ExportFormat *f, Err *e) {
    static const char *const names[] = {"effdm", "compvis-fp32", "compvis-fp16"};
    for (int i = 0; i < 3; i++)
        if (!strcmp(name, names[i])) {
            *f = (ExportFormat)i;
            return 0;
        }
    return err_set(e, ERR_ARG, "--format: expected effdm, compvis-fp32 or compvis-fp16, found '%s'", name);
}

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && !strcmp(s + n - k, suffix);
}

int run_export_compvis(const char *run_dir, const ExportOpts *o, const char *path, CompvisSummary *s, Err *e) {
    const char *epoch = o && o->epoch ? o->epoch : "last";
    if (ends_with(path, ".ckpt"))
        return err_set(e, ERR_UNSUPPORTED, "--out %s: effdm writes no torch .ckpt (it has no torch zip/pickle writer): "
                       "give a .safetensors name (PyTorch reads it with safetensors.torch.load_file)", path);
    if (!ends_with(path, ".safetensors"))
        return err_set(e, ERR_ARG, "--out %s: a CompVis export is a .safetensors file: expected a name ending in "
                       ".safetensors", path);
    if (o && o->fp16_layers)
        return err_set(e, ERR_ARG, "--fp16-layers applies to the effdm format only (compvis-fp16 writes every "
                       "network weight as F16)");
    ExportRun x;
    int code = export_run_load(&x, run_dir, epoch, path, e);
    if (!code) {
        CompvisInfo info = {x.rc->model.ckpt, x.rc->model.ldm_config, x.yaml, run_dir, epoch,
                            o && o->format == EXPORT_COMPVIS_FP16, fits_guidance_gain(&x),
                            x.rc->train.eps_gain == RC_GAIN_FIT};
        code = export_compvis_write(&x.q, x.m, x.tf, &info, path, s, e);
    }
    export_run_free(&x);
    return code;
}
