/* run_train.c: opening a run's trainer on the teacher its config names (see run_train.h). */
#include "run/run_train.h"

#include "run/run_wire.h"

static LdmEmaMode ema_mode(RcEma e) { return e == RC_EMA_ON ? LDM_EMA_ON : e == RC_EMA_OFF ? LDM_EMA_OFF : LDM_EMA_AUTO; }

int run_trainer_open(Trainer **out, const RunConfig *rc, const char *run_dir, Err *e) {
    *out = NULL;
    LdmLoadOpts lo = {.ema = ema_mode(rc->model.ema),
                      .parts = LDM_PART_UNET | LDM_PART_COND_STAGE | (rc->train.sample_every > 0 ? LDM_PART_FIRST_STAGE : 0)};
    Ldm *m;
    if (ldm_load(&m, rc->model.ldm_config, rc->model.ckpt, &lo, e)) return e->code;
    return run_trainer_open_with(out, rc, m, run_dir, e);
}

int run_trainer_open_with(Trainer **out, const RunConfig *rc, Ldm *m, const char *run_dir, Err *e) {
    *out = NULL;
    QModelConfig qc;
    if (run_qmodel_config(&qc, rc, e)) {
        ldm_free(m);
        return e->code;
    }
    TrainConfig tc;
    run_train_config(&tc, rc);
    return trainer_open(out, &tc, &qc, m, run_dir, e);
}
