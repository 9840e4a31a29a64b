/* train_config.h: what the trainer is told, as plain data.

       TrainConfig tc = {.train = ..., .sample = ..., .uncond_label = -1, .arena_mb = 1024};
       trainer_open(&tr, &tc, &student_qmodel_config, ldm, "runs/x", &e);   // train/trainer.h

   A run fills it from its run config (run/run_wire.h run_train_config). The trainer sits below
   the run layer (docs/DESIGN.md "Data flows one way": qalora -> train -> run -> cli), so the
   structs it reads live here and run/run_config.h composes them into RunConfig - not the other
   way round. RcTrain, RcOptimizer and RcSample are the run config's train.*, train.optimizer.*
   and sample.* groups field for field (every key, its default and its meaning:
   run/run_config.h); they keep the run config's Rc names because its key table
   (run/run_config_keys.c) addresses their fields by offset inside RunConfig. The rest of
   TrainConfig is the few keys of other groups the loop reads.
*/
#ifndef EFFDM_TRAIN_CONFIG_H
#define EFFDM_TRAIN_CONFIG_H

// run.recompute_weights auto: on from this many bytes of FP32 UNet weights
#define TRAIN_RECOMPUTE_AUTO_BYTES ((size_t)256 << 20)

#include <stdint.h>

#include "sample/sampler.h"  // SamplerKind: sample.sampler names a row of the sampler table

typedef enum { RC_RECIPE_REFERENCE, RC_RECIPE_EFFDM, RC_RECIPE_COUNT } RcRecipe;
typedef enum { RC_BRANCHES_GUIDED, RC_BRANCHES_BOTH, RC_BRANCHES_ALL } RcLossBranches;
typedef enum { RC_REDUCE_SUM, RC_REDUCE_MEAN } RcReduction;
typedef enum { RC_STEPW_NONE, RC_STEPW_EQUALIZE, RC_STEPW_DDIM } RcStepWeighting;
typedef enum { RC_SELECT_LAST, RC_SELECT_BEST_VAL, RC_SELECT_BEST_SAMPLED } RcSelect;
typedef enum { RC_SCHED_LINEAR, RC_SCHED_COSINE, RC_SCHED_CONSTANT } RcSchedule;
typedef enum { RC_DW_REFERENCE, RC_DW_SINGLE } RcDeltaWUpdate;
typedef enum { RC_TRAJ_TEACHER, RC_TRAJ_STUDENT } RcTrajectory;
typedef enum { RC_GAIN_OFF, RC_GAIN_FIT } RcGuidanceGain;
typedef enum { RC_SELECTION_UNIFORM, RC_SELECTION_ADAPTIVE } RcSelection;

typedef struct {
    double lr_lora_divisor, lr_w_delta, lr_act, lr_exponent;
    double beta1, beta2, eps, weight_decay;
    RcSchedule schedule;
    int warmup_steps;
    RcDeltaWUpdate delta_w_update;
} RcOptimizer;

typedef struct {
    RcRecipe recipe;
    int epochs, batch, steps;
    int grad_slots;             // gradient slots per step (0: one per trajectory): distill_step.c
    double eta, scale;
    RcLossBranches loss_branches;
    RcTrajectory trajectory;
    RcSelection sample_selection;  // train/sample_select.c
    int selection_pool, selection_refresh;
    double selection_band_lo, selection_band_hi;
    RcGuidanceGain guidance_gain;
    RcGuidanceGain eps_gain;  // off / fit (qalora/guidance_gain.h gain_fit)
    int guidance_fit_samples;
    RcReduction loss_reduction;
    RcStepWeighting step_weighting;
    RcSelect select_epoch;
    int val_every, val_inputs, val_samples, checkpoint_every, sample_every;
    int seed;
    RcOptimizer optimizer;
} RcTrain;

typedef struct {
    SamplerKind sampler;  // the sampler table's kinds (sample/sampler.h)
    int steps;
    double eta, scale;
    int grid_rows, grid_cols;
    int seed;
} RcSample;

typedef struct {
    RcTrain train;               // the train.* keys
    RcSample sample;             // the sample.* keys: the grids drawn while fine-tuning
    int uncond_label;            // model.uncond_label; -1: the model's own (ldm_uncond_label)
    int arena_mb;                // run.arena_mb: the per-step arena, MiB
    int recompute_weights;       // run.recompute_weights: 1 on, 0 off, -1 auto (TRAIN_RECOMPUTE_AUTO_BYTES)
    uint64_t init_seed;          // calib.seed: LoRA A's first draw (the state file then overwrites it)
    char model_name[1024];       // the teacher's config path, named in messages
} TrainConfig;

#endif
