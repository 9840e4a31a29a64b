/* run_calibrate.c: calibrating a run: load the teacher its config names, qalora/calibrate.h's
   naive PTQ, the run directory's files (see run_calibrate.h). */
#include "run/run_calibrate.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "run/run_wire.h"
#include "sample/sampler.h"
#include "util/dist.h"
#include "util/clock.h"
#include "util/path.h"

// mkdir -p. 0 or ERR_IO; *created = 1 when the last component was created by this call.
static int make_dirs(const char *path, int *created, Err *e) {
    char buf[RC_PATH_MAX];
    *created = 0;
    if (snprintf(buf, sizeof buf, "%s", path) >= (int)sizeof buf)
        return err_set(e, ERR_VALUE, "run.out: path too long");
    for (char *p = buf + 1; *p; p++) {
        if (*p != '/') continue;
        *p = '\0';
        if (mkdir(buf, 0777) != 0 && errno != EEXIST)
            return err_set(e, ERR_IO, "run.out: cannot create directory '%s': %s", buf, strerror(errno));
        *p = '/';
    }
    if (mkdir(buf, 0777) == 0) *created = 1;
    else if (errno != EEXIST)
        return err_set(e, ERR_IO, "run.out: cannot create directory '%s': %s", buf, strerror(errno));
    struct stat st;
    if (stat(buf, &st) != 0 || !S_ISDIR(st.st_mode))
        return err_set(e, ERR_IO, "run.out: '%s' is not a directory", buf);
    return 0;
}

// given: a model to calibrate on (borrowed), or NULL to load rc->model.
static int calibrate(const RunConfig *rc, Ldm *given, const CalibOpts *o, CalibSummary *s, Err *e) {
    CalibSummary local;
    if (!s) s = &local;
    memset(s, 0, sizeof *s);
    double t0 = clock_seconds();
    char p_cfg[RC_PATH_MAX + 32], p_calib[RC_PATH_MAX + 32], p_state[RC_PATH_MAX + 32];
    path_join(p_cfg, sizeof p_cfg, rc->run.out, "config.yaml");
    path_join(p_calib, sizeof p_calib, rc->run.out, "calib.safetensors");
    path_join(p_state, sizeof p_state, rc->run.out, "state.safetensors");
    char p_calib_new[RC_PATH_MAX + 48], p_state_new[RC_PATH_MAX + 48];
    snprintf(p_calib_new, sizeof p_calib_new, "%s.new", p_calib);
    snprintf(p_state_new, sizeof p_state_new, "%s.new", p_state);
    if (!(o && o->force) && access(p_state, F_OK) == 0)
        return err_set(e, ERR_VALUE, "run directory '%s' already holds state.safetensors (a calibrated or fine-tuned "
                       "student); use --force to replace it", rc->run.out);
    QModelConfig qc;
    if (run_qmodel_config(&qc, rc, e)) return e->code;

    Ldm *m = given;
    Ctx ctx = {0};
    int ctx_ok = 0, q_ok = 0, created = 0;
    QModel q;
    CalibRecord rec = {0};
    int64_t *used = NULL;
    StWriter w = {0};
    int wrote_calib = 0, wrote_state = 0;
    LdmLoadOpts lo = {rc->model.ema == RC_EMA_ON ? LDM_EMA_ON : (rc->model.ema == RC_EMA_OFF ? LDM_EMA_OFF : LDM_EMA_AUTO),
                      LDM_PART_UNET | LDM_PART_COND_STAGE};
    int code = given ? 0 : ldm_load(&m, rc->model.ldm_config, rc->model.ckpt, &lo, e);
    if (code) goto fail;
    snprintf(s->warning, sizeof s->warning, "%s", m->warning);
    s->using_ema = m->using_ema;
    if (rc->model.uncond_label >= 0 && rc->model.uncond_label != ldm_uncond_label(m)) {
        code = err_set(e, ERR_VALUE, "model.uncond_label: %d other than the last class index (%d) is not implemented "
                       "yet", rc->model.uncond_label, ldm_uncond_label(m));
        goto fail;
    }
    if ((code = ctx_init(&ctx, (size_t)rc->run.arena_mb << 20, e))) goto fail;
    ctx_ok = 1;

    // 1. teacher trajectories
    double t1 = clock_seconds();
    // MPI ranks would see a signal at different batches: they calibrate to the end
    CalibProgress p = {o ? o->on_progress : NULL, o ? o->user : NULL, o && dist_size() == 1 ? o->stop : NULL};
    if ((code = calib_record(&ctx, m, &rc->calib, &p, &rec, e))) goto fail;
    s->sec_record = clock_seconds() - t1;
    s->steps = sampler_real_steps(m, rc->calib.steps);
    s->n_recorded = rec.n;

    // 2. the student: naive PTQ weights, activation ranges from one forward
    t1 = clock_seconds();
    int k = rc->calib.n_inputs;
    used = malloc((size_t)(k > 0 ? k : 1) * sizeof *used);
    if (!used) {
        code = err_set(e, ERR_NOMEM, "out of memory");
        goto fail;
    }
    if ((code = calib_student_fit(&q, &ctx, m, &qc, &rc->calib, &rec, used, &p, e))) goto fail;
    q_ok = 1;
    s->sec_calib = clock_seconds() - t1;
    s->n_used = k;
    qmodel_counts(&q, &s->trainable, &s->special, &s->fp);
    s->w_bits = qc.sel.w_bits;
    s->a_bits = qc.sel.a_bits;
    s->special_bits = qc.sel.special_bits;
    s->rank = qc.rank;
    s->entries = q.cfg.talsq ? q.train_sched.n : 1;

    // 3. the run directory
    if (dist_rank() != 0) goto written;  // MPI: every rank fitted the same student, rank 0 writes it
    if ((code = make_dirs(rc->run.out, &created, e))) goto fail;
    // new files under .new names first, renamed into place only when all are written: a
    // failed --force leaves the run directory as it was (it once unlinked a replaced calib)
    if ((code = calib_record_write(&rec, used, k, p_calib_new, e))) goto fail;
    wrote_calib = 1;
    w.checksum = 1;
    if ((code = qmodel_write_state(&q, &w, "q.", e)) || (code = st_writer_meta(&w, "effdm.kind", "calibrated", e)) ||
        (code = st_writer_meta(&w, "effdm.format", "1", e)) ||
        (code = st_writer_meta(&w, "effdm.source", rc->model.ckpt, e)) || (code = st_write(&w, p_state_new, e)))
        goto fail;
    wrote_state = 1;
    if (rename(p_calib_new, p_calib) != 0 || rename(p_state_new, p_state) != 0) {
        code = err_set(e, ERR_IO, "%s: cannot rename the new calibration into place: %s", rc->run.out, strerror(errno));
        goto fail;
    }
    wrote_calib = wrote_state = 0;
    // a fine-tuned run's other files belong to the replaced student
    static const char *const stale[] = {"state.prev.safetensors", "state.json", "best.safetensors", "log.csv"};
    for (size_t i = 0; i < sizeof stale / sizeof stale[0]; i++) {
        char p[RC_PATH_MAX + 40];
        path_join(p, sizeof p, rc->run.out, stale[i]);
        unlink(p);
    }
    if ((code = run_config_write(rc, p_cfg, e))) goto fail;
written:
    s->sec_total = clock_seconds() - t0;
    goto done;
fail:
    if (wrote_calib) unlink(p_calib_new);
    if (wrote_state) unlink(p_state_new);
    if (created) rmdir(rc->run.out);
done:
    st_writer_free(&w);
    free(used);
    calib_record_free(&rec);
    if (q_ok) qmodel_free(&q);
    if (ctx_ok) ctx_free(&ctx);
    if (!given) ldm_free(m);
    return code;
}

int run_calibrate(const RunConfig *rc, const CalibOpts *o, CalibSummary *s, Err *e) {
    return calibrate(rc, NULL, o, s, e);
}

int run_calibrate_with(const RunConfig *rc, Ldm *m, const CalibOpts *o, CalibSummary *s, Err *e) {
    return calibrate(rc, m, o, s, e);
}
