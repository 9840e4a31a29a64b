/* calibrate.h: naive PTQ of a run (EFFICIENTDM.md "Calibration data"): record the teacher's
   UNet inputs along its DDIM trajectories, build the student with 'max' weight ranges,
   fit the activation ranges in one forward of the fake-quantized network, and write the
   run directory a fine-tuning run starts from.

       CalibOpts o = {.force = 0, .on_progress = bar, .user = &p};
       CalibSummary s;
       if (calibrate_run(&run_config, &o, &s, &e)) return e.code;   // writes run_config.run.out/

   Recording (calib.*): calib.n_samples trajectories, calib.batch at a time; trajectory j
   has class rng_below(n_classes - 1) from the stream CALIB_STREAM_LABELS of calib.seed,
   x_T and its eta noise from its own stream (sample/generate.h sample_initial_noise:
   rng_seed(calib.seed, j)); DDIM calib.steps, eta calib.eta, guidance calib.scale with
   the unconditional label n_classes - 1. Every UNet input is recorded as the UNet sees it:
   with guidance the unconditional half (label n_classes - 1) then the conditional half of
   each step. calib.n_inputs of them, drawn without replacement from CALIB_STREAM_PICK,
   are the one activation-calibration batch. With calib.act_ranges per_step each TALSQ entry
   i is then refitted in one more forward (entry i active) on up to calib.n_inputs recorded
   inputs of the recorded timesteps nearest the entry's training timestep, drawn from the
   same stream (special layers keep their one range).

   Run directory (each file written atomically; on an error those this call wrote are removed):
     config.yaml         the resolved run config (run_config_write)
     calib.safetensors   x F32 (N, C, H, W), t F32 (N) DDPM timesteps, y I64 (N) labels
                         (class-conditional models), used I64 (n_inputs) indices of the
                         activation-calibration inputs, traj I64 (N) trajectory, step I64 (N)
                         sampling step (0 = first, highest t); metadata effdm.kind = "calib"
     state.safetensors   the student (qmodel_write_state, prefix "q."); metadata
                         effdm.kind = "calibrated", effdm.format = "1", effdm.source
   An existing state.safetensors (a calibrated or fine-tuned run) is only replaced with force.

   Limitations: model.uncond_label other than auto is not implemented (ERR_VALUE); x0 / v
   models are calibrated on their raw output path like eps models.
*/
#ifndef EFFDM_CALIBRATE_H
#define EFFDM_CALIBRATE_H

#include <stdint.h>

#include "models/ldm.h"
#include "qalora/qmodel.h"
#include "run/run_config.h"

// RNG streams of calib.seed (the trajectories use streams 0 .. n_samples - 1).
#define CALIB_STREAM_LABELS ((UINT64_C(1) << 62) + 1)
#define CALIB_STREAM_PICK ((UINT64_C(1) << 62) + 2)
#define CALIB_STREAM_LORA ((UINT64_C(1) << 62) + 3)

enum { CALIB_PHASE_RECORD, CALIB_PHASE_ACTS };

typedef struct {
    int n, cap;
    int C, H, W;
    float *x;      // (n, C, H, W) UNet inputs x_t
    float *t;      // (n) DDPM timesteps
    int64_t *y;    // (n) labels, NULL for unconditional models
    int64_t *traj; // (n) trajectory index
    int64_t *step; // (n) sampling step (0 = first)
} CalibRecord;

typedef struct {
    int force;     // replace an existing state.safetensors
    // Progress: phase CALIB_PHASE_RECORD counts sampler steps (batches x steps), phase
    // CALIB_PHASE_ACTS the quantized layers reached by the calibration forward; done = 0
    // starts a phase, done = total ends it. May be NULL.
    void (*on_progress)(int phase, long done, long total, void *user);
    void *user;
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

// Records the UNet inputs of cc's teacher trajectories on m into rec (see top). 0 or an ERR_ code.
int calib_record(Ctx *c, Ldm *m, const RcCalib *cc, const CalibOpts *o, CalibRecord *rec, Err *e);
// Accepts a zeroed record.
void calib_record_free(CalibRecord *rec);
// k distinct indices of [0, n) drawn with r (partial Fisher-Yates), in draw order. 0 or ERR_VALUE/ERR_NOMEM.
int calib_pick(Rng *r, int n, int k, int64_t *idx, Err *e);
// Writes the record and the used indices to path as calib.safetensors (see top). 0 or an ERR_ code.
int calib_record_write(const CalibRecord *rec, const int64_t *used, int n_used, const char *path, Err *e);
// The whole naive PTQ of run config rc into rc->run.out (see top). s may be NULL. 0 or an ERR_ code.
int calibrate_run(const RunConfig *rc, const CalibOpts *o, CalibSummary *s, Err *e);
// The same on a model the caller built (borrowed; rc->model's paths are only recorded):
// benchmarks of randomly initialised architectures (ldm_new_random). 0 or an ERR_ code.
int calibrate_run_with(const RunConfig *rc, Ldm *m, const CalibOpts *o, CalibSummary *s, Err *e);

#endif
