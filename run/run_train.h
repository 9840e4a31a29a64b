/* run_train.h: "fine-tune this run": the teacher its config names, loaded with what the
   trainer needs, and the trainer (train/trainer.h) opened on the run directory with the
   config's TrainConfig and student (run/run_wire.h).

       RunConfig rc; RunDirStatus st;
       if (run_dir_resolve(resume_dir, &given, &rc, &st, &e)) return e.code;   // run/run_dir.h
       if (st == RUN_DIR_EMPTY && run_calibrate(&rc, &co, &cal, &e)) return e.code;
       Trainer *tr;
       if (run_trainer_open(&tr, &rc, rc.run.out, &e)) return e.code;
       trainer_run(tr, &hooks, &summary, &e); trainer_free(tr);
*/
#ifndef EFFDM_RUN_TRAIN_H
#define EFFDM_RUN_TRAIN_H

#include "models/ldm.h"
#include "run/run_config.h"
#include "train/trainer.h"
#include "util/err.h"

// Loads rc's teacher (model.*: the UNet, the class embedder, the first stage when
// train.sample_every > 0) and opens the trainer on run_dir (trainer_open). 0 or an ERR_ code.
int run_trainer_open(Trainer **tr, const RunConfig *rc, const char *run_dir, Err *e);
// The same on a model the caller built (ownership passes to the trainer, also on failure);
// rc->model's paths are not read. For benchmarks of random-init architectures.
int run_trainer_open_with(Trainer **tr, const RunConfig *rc, Ldm *m, const char *run_dir, Err *e);

#endif
