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

// A gain fit's latent error at the grid point nearest gain 1 (err1) and at its best grid point.
static void fit_errors(const GuidanceFit *f, float *err1, float *best) {
    int one = 0, lo = 0;
    for (int k = 1; k < f->n_grid; k++) {
        if (fabsf(f->grid[k] - 1.0f) < fabsf(f->grid[one] - 1.0f)) one = k;
        if (f->err[k] < f->err[lo]) lo = k;
    }
    *err1 = f->err[one];
    *best = f->err[lo];
}

int run_export(const char *run_dir, const ExportOpts *o, const char *path, ExportSummary *s, Err *e) {
    const char *epoch = o && o->epoch ? o->epoch : "last";
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
    RunConfig *rc = malloc(sizeof *rc);
    LdmConfig *lc = malloc(sizeof *lc);
    WeightFile *tf = NULL, *sf = NULL;
    Ldm *m = NULL;
    QModel q;
    int q_ok = 0, code = 0;
    float *gain = NULL;
    unsigned char *yaml = NULL;
    size_t yaml_len = 0;
    if (!rc || !lc) {
        code = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    if ((code = run_config_load(p_cfg, rc, e))) goto done;
    if (access(p_state, F_OK) != 0) {
        code = err_set(e, ERR_IO, "%s: no such file (%s)", p_state,
                       !strcmp(epoch, "best") ? "best.safetensors is written by fine-tuning with train.select_epoch "
                                                "best_val or best_sampled" : "calibrate the run first");
        goto done;
    }
    QModelConfig qc;
    if ((code = run_qmodel_config(&qc, rc, e))) goto done;
    if ((code = file_read_all(rc->model.ldm_config, &yaml, &yaml_len, e))) goto done;
    char *text = realloc(yaml, yaml_len + 1);  // NUL-terminated for the metadata
    if (!text) {
        code = err_set(e, ERR_NOMEM, "out of memory");
        goto done;
    }
    yaml = (unsigned char *)text;
    text[yaml_len] = '\0';
    if ((code = ldm_config_load(lc, rc->model.ldm_config, e))) goto done;
    if ((code = weights_open(&tf, rc->model.ckpt, e))) goto done;
    LdmLoadOpts lo = {rc->model.ema == RC_EMA_ON ? LDM_EMA_ON : (rc->model.ema == RC_EMA_OFF ? LDM_EMA_OFF : LDM_EMA_AUTO),
                      LDM_PARTS_ALL};
    if ((code = ldm_load_from(&m, lc, tf, &lo, e))) goto done;
    Rng r;
    rng_seed(&r, 0, 0);  // LoRA A is read from the state
    if ((code = qmodel_init(&q, m->unet, &qc, m->T, &r, e))) goto done;
    q_ok = 1;
    if ((code = weights_open(&sf, p_state, e)) || (code = qmodel_read_state(&q, sf, "q.", e))) goto done;
    // quant.fp_layers f16: qc makes the FP layers F16 (exact); o->fp16_layers forces it on an f32 run
    ExportInfo info = {rc->model.ckpt, rc->model.ldm_config, text, run_dir, epoch, m->using_ema, o && o->fp16_layers};
    GuidanceFitOpts go = {rc->train.steps, rc->train.eta, rc->train.scale, rc->train.guidance_fit_samples, 16,
                          (uint64_t)rc->train.seed + 1, o ? o->on_progress : NULL, o ? o->user : NULL};
    GuidanceFit fit = {0};
    GuidanceFit efit = {0};
    int fit_g = rc->train.guidance_gain == RC_GAIN_FIT && ldm_is_class_conditional(m) && rc->train.scale != 1.0;
    int fit_e = rc->train.eps_gain == RC_GAIN_FIT;
    if (fit_g || fit_e) {
        info.n_gain = q.train_sched.n;
        gain = malloc(2 * (size_t)info.n_gain * sizeof(float));
        if (!gain) {
            code = err_set(e, ERR_NOMEM, "out of memory");
            goto done;
        }
    }
    if ((fit_g || fit_e) && (code = gain_fit(&q, m, &go, fit_g ? &fit : NULL, fit_e ? &efit : NULL, e))) goto done;
    for (int k = 0; k < info.n_gain; k++) {
        gain[k] = fit.gain;
        gain[info.n_gain + k] = efit.gain;
    }
    if (fit_g) info.guidance_gain = gain;
    if (fit_e) info.eps_gain = gain + info.n_gain;  // on top of the guidance gain just fitted
    code = export_write(&q, m, tf, &info, path, s, e);
    if (!code && s && info.guidance_gain) {
        fit_errors(&fit, &s->gain_err1, &s->gain_err);
        s->gain_samples = go.n_samples;
    }
    if (!code && s && info.eps_gain) {
        fit_errors(&efit, &s->eps_err1, &s->eps_err);
        s->gain_samples = go.n_samples;
    }
done:
    if (q_ok) qmodel_free(&q);
    ldm_free(m);
    weights_close(tf);
    weights_close(sf);
    free(yaml);
    free(gain);
    free(rc);
    free(lc);
    return code;
}
