/* run_wire.h: a RunConfig as the plain structs the layers below it take. qalora/ and train/
   never include run/ (docs/DESIGN.md "Data flows one way": ... -> qalora -> train -> run -> cli):
   each owns the struct that says what it needs (qalora/qmodel.h QModelConfig, ...), and this
   file is the one place that knows both sides, so a new run-config key that a method needs is
   a field there plus one line here. (The calib.*, train.* and sample.* groups need no mapping:
   RunConfig holds qalora's RcCalib and train's RcTrain, RcSample themselves.)

       QModelConfig qc;
       if (run_qmodel_config(&qc, &run_config, &e)) return e.code;   // ERR_VALUE naming the key
       qmodel_init(&q, ldm->unet, &qc, ldm->T, &rng, &e);
*/
#ifndef EFFDM_RUN_WIRE_H
#define EFFDM_RUN_WIRE_H

#include "qalora/qmodel.h"
#include "run/run_config.h"
#include "train/train_config.h"
#include "util/err.h"

// The student of run config rc: its quant.* keys (plus train.steps for the TALSQ entries).
// cfg->sel.overrides points into cfg itself (copy it with qmodel_init, not by assignment).
// 0, or ERR_VALUE naming the key for what QModelConfig cannot hold (more overrides than
// QMODEL_MAX_OVERRIDES, a kind outside the table).
int run_qmodel_config(QModelConfig *cfg, const RunConfig *rc, Err *e);
// What the trainer reads of rc (train.*, sample.*, model.uncond_label, run.arena_mb,
// calib.seed, the teacher's config path for messages).
void run_train_config(TrainConfig *tc, const RunConfig *rc);

#endif
