/* run_dir.h: which run directory a `finetune` command works on, with which config, and in
   what state it is (docs/DESIGN.md "Formats": config.yaml, calib.safetensors, state.safetensors,
   best.safetensors, log.csv, samples/).

       RunConfig rc; RunDirStatus st;
       if (run_dir_resolve(resume_dir_or_NULL, &given_or_NULL, &rc, &st, &e)) return e.code;
       if (st == RUN_DIR_EMPTY) ... calibrate into rc.run.out ...
       run_trainer_open(&tr, &rc, rc.run.out, &e);

   --config C (resume_dir NULL): the run directory is C's run.out. No state.safetensors:
   RUN_DIR_EMPTY (calibration comes first). A calibrated state: its config.yaml must agree
   with C on every key resuming needs (run_config_compare; ERR_VALUE naming the key),
   RUN_DIR_CALIBRATED. A run in progress: ERR_ARG ("continue it with --resume").
   --resume DIR [--config C]: DIR/config.yaml is the run's config; a given C must agree with
   it on those keys and then replaces it (other keys - validation, checkpoint and sample
   intervals, sample.*, run.* - may change; run.out becomes DIR). No state: ERR_IO.
   In both cases a config that differs from config.yaml is written there (atomically), and
   stale *.tmp files of a killed writer are removed.
*/
#ifndef EFFDM_RUN_DIR_H
#define EFFDM_RUN_DIR_H

#include "run/run_config.h"
#include "util/err.h"

typedef enum {
    RUN_DIR_EMPTY,        // no state.safetensors: calibrate first
    RUN_DIR_CALIBRATED,   // a calibrated student, fine-tuning not started
    RUN_DIR_RUNNING,      // a fine-tuning run in progress (or finished)
} RunDirStatus;

// See top. given may be NULL only with resume_dir. 0 or an ERR_ code.
int run_dir_resolve(const char *resume_dir, const RunConfig *given, RunConfig *out, RunDirStatus *status, Err *e);
// Status of dir from its state.safetensors alone. 0 or ERR_FORMAT (a state file that does not open).
int run_dir_status(const char *dir, RunDirStatus *status, Err *e);
// Removes dir/*.tmp (left by a writer that was killed between write and rename).
void run_dir_clean_tmp(const char *dir);

#endif
