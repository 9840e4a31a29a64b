/* run_calibrate.h: "calibrate this run": the naive PTQ of qalora/calibrate.h on the teacher a
   run config names, written as the run directory a fine-tuning run starts from.

       CalibOpts o = {.force = 0, .on_progress = bar, .user = &p};
       CalibSummary s;
       if (run_calibrate(&run_config, &o, &s, &e)) return e.code;   // writes run_config.run.out/

   Run directory (each file written atomically; on an error those this call wrote are removed,
   and run.out itself when this call created it):
     config.yaml         the resolved run config (run_config_write)
     calib.safetensors   the recorded inputs (qalora/calibrate.h calib_record_write)
     state.safetensors   the student (qmodel_write_state, prefix "q."); metadata
                         effdm.kind = "calibrated", effdm.format = "1", effdm.source
   An existing state.safetensors (a calibrated or fine-tuned run) is only replaced with force.

   Limitations: model.uncond_label other than auto is not implemented (ERR_VALUE).
*/
#ifndef EFFDM_RUN_CALIBRATE_H
#define EFFDM_RUN_CALIBRATE_H

#include "models/ldm.h"
#include "qalora/calibrate.h"
#include "run/run_config.h"

typedef struct {
    int force;     // replace an existing state.safetensors
    // Progress as qalora/calibrate.h CalibProgress says. May be NULL.
    void (*on_progress)(int phase, long done, long total, void *user);
    void *user;
    volatile sig_atomic_t *stop;  // may be NULL: a signal flag (CalibProgress.stop)
} CalibOpts;

typedef struct {
    int trainable, special, fp;      // layer counts
    int w_bits, a_bits, special_bits, rank, entries;
    int steps;                       // real DDIM steps of a trajectory
    int n_recorded, n_used;
    int using_ema;
    double sec_record, sec_calib, sec_total;
    char warning[768];               // the teacher loader's notes ("" when none)
} CalibSummary;

// The whole naive PTQ of run config rc into rc->run.out (see top). o and s may be NULL.
// 0 or an ERR_ code.
int run_calibrate(const RunConfig *rc, const CalibOpts *o, CalibSummary *s, Err *e);
// The same on a model the caller built (borrowed; rc->model's paths are only recorded):
// benchmarks of randomly initialised architectures (ldm_new_random). 0 or an ERR_ code.
int run_calibrate_with(const RunConfig *rc, Ldm *m, const CalibOpts *o, CalibSummary *s, Err *e);

#endif
