/* calibrate.h: naive PTQ (docs/METHOD.md "Calibration data"): record the teacher's UNet
   inputs along its DDIM trajectories, build the student with 'max' weight ranges and fit
   the activation ranges in one forward of the fake-quantized network. Writing a run
   directory from this is the run layer's (run/run_calibrate.h: "calibrate this run").

       RcCalib cc = {.steps = 250, .eta = 1, .scale = 1.5, .n_samples = 16, .batch = 16,
                     .n_inputs = 32, .seed = 7};                 // a run: its calib.* keys
       CalibRecord rec;  QModel q;  int64_t used[32];
       if (calib_record(&ctx, ldm, &cc, NULL, &rec, &e)) return e.code;
       if (calib_student_fit(&q, &ctx, ldm, &qc, &cc, &rec, used, NULL, &e)) ...;
       calib_record_write(&rec, used, cc.n_inputs, "calib.safetensors", &e);

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

   calib.safetensors (calib_record_write; the trainer reads its unused inputs for validation,
   train/calib_inputs.h): x F32 (N, C, H, W), t F32 (N) DDPM timesteps, y I64 (N) labels
   (class-conditional models), used I64 (n_inputs) indices of the activation-calibration
   inputs, traj I64 (N) trajectory, step I64 (N) sampling step (0 = first, highest t);
   metadata effdm.kind = "calib".

   Limitations: x0 / v models are calibrated on their raw output path like eps models.
*/
#ifndef EFFDM_CALIBRATE_H
#define EFFDM_CALIBRATE_H

#include <signal.h>
#include <stdint.h>

#include "models/ldm.h"
#include "qalora/qmodel.h"

// RNG streams of calib.seed (the trajectories use streams 0 .. n_samples - 1).
#define CALIB_STREAM_LABELS ((UINT64_C(1) << 62) + 1)
#define CALIB_STREAM_PICK ((UINT64_C(1) << 62) + 2)
#define CALIB_STREAM_LORA ((UINT64_C(1) << 62) + 3)

enum { CALIB_PHASE_RECORD, CALIB_PHASE_ACTS };

typedef enum { RC_ACTR_SHARED, RC_ACTR_PER_STEP } RcActRanges;

// The calib.* keys of a run config, as plain data: qalora/ owns what it is told, the run layer
// (run/run_config.h) composes it into RunConfig and its key table addresses these fields, which
// is why the struct keeps the run config's Rc name (docs/DESIGN.md: qalora never includes run/).
typedef struct {
    int steps;
    double eta, scale;
    int n_samples, batch, n_inputs;
    int seed;
    RcActRanges act_ranges;
} RcCalib;

// Progress: phase CALIB_PHASE_RECORD counts sampler steps (batches x steps), phase
// CALIB_PHASE_ACTS the quantized layers reached by the calibration forward; done = 0
// starts a phase, done = total ends it.
typedef struct {
    void (*on_progress)(int phase, long done, long total, void *user);  // may be NULL
    void *user;
    // may be NULL; non-zero: stop between trajectory batches with ERR_INTERRUPTED (nothing
    // recorded is kept: a calibration is redone whole)
    volatile sig_atomic_t *stop;
} CalibProgress;

typedef struct {
    int n, cap;
    int C, H, W;
    float *x;      // (n, C, H, W) UNet inputs x_t
    float *t;      // (n) DDPM timesteps
    int64_t *y;    // (n) labels, NULL for unconditional models
    int64_t *traj; // (n) trajectory index
    int64_t *step; // (n) sampling step (0 = first)
} CalibRecord;

// Records the UNet inputs of cc's teacher trajectories on m into rec (see top). 0 or an ERR_ code.
int calib_record(Ctx *c, Ldm *m, const RcCalib *cc, const CalibProgress *p, CalibRecord *rec, Err *e);
// Accepts a zeroed record.
void calib_record_free(CalibRecord *rec);
// k distinct indices of [0, n) drawn with r (partial Fisher-Yates), in draw order. 0 or ERR_VALUE/ERR_NOMEM.
int calib_pick(Rng *r, int n, int k, int64_t *idx, Err *e);
// Writes the record and the used indices to path as calib.safetensors (see top). 0 or an ERR_ code.
int calib_record_write(const CalibRecord *rec, const int64_t *used, int n_used, const char *path, Err *e);
// The student of the naive PTQ on recorded inputs (see top): qmodel_init over m's UNet per qc
// (LoRA A drawn from stream CALIB_STREAM_LORA of cc->seed), cc->n_inputs of rec's inputs drawn
// into used[0..n_inputs) (stream CALIB_STREAM_PICK), one activation-calibration forward on
// them and, with cc->act_ranges per_step, one refit per TALSQ entry. p may be NULL. On
// success q is initialised (the caller qmodel_frees it); on failure it is freed. 0 or an ERR_ code.
int calib_student_fit(QModel *q, Ctx *ctx, Ldm *m, const QModelConfig *qc, const RcCalib *cc,
                      const CalibRecord *rec, int64_t *used, const CalibProgress *p, Err *e);

#endif
