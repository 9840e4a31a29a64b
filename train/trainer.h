/* trainer.h: EfficientDM's data-free distillation (docs/METHOD.md "Distillation loop"):
   the quantized student (qalora/qmodel.h) learns the FP teacher's ε along the teacher's
   own DDIM trajectories, one AdamW step per trajectory step, with exact resume.

       Trainer *tr;   // a run: run/run_train.h run_trainer_open(&tr, &run_config, dir, &e)
       if (trainer_open(&tr, &tc, &qc, ldm, "runs/x", &e)) return e.code;  // the dir holds a calibrated state
       TrainerHooks h = {.on_step = show, .stop = &stop_flag};
       int rc = trainer_run(tr, &h, &summary, &e);       // ERR_INTERRUPTED after a stop (saved)
       trainer_free(tr);

   One epoch:
     1. labels y[0..B) uniform over the real classes (every label but the unconditional one),
        then x_T ~ N(0, I) (B, C, H, W), both from the run's RNG (train.seed), in that order;
     2. for each of the S = train.steps DDIM steps (t from high to low, eta train.eta):
        - teacher: the FP UNet (student detached, grad mode off, nothing recorded; its
          intermediates are freed by ctx scopes) on [x_t | x_t] with labels [∅ | y];
        - student: the same inputs with TALSQ entry of t, grad mode on;
        - loss (train/distill_loss.h) times the step weight (train.step_weighting equalize:
          1 / running mean of this step index's raw loss over the previous epochs; ddim:
          that times distill_ddim_weight, how far an ε error moves x_{t-1});
        - backward into the optimizer's flat gradient block (only the trainable tensors
          have gradient buffers), one AdamW step (train/adamw.h);
        - x_{t-1} = DDIM update with the TEACHER's guided ε, eta noise from the run's RNG.
     3. epoch end: validation every train.val_every epochs (and after the last one),
        sample grid every train.sample_every epochs, checkpoint every train.checkpoint_every
        epochs (and after the last one).
   Before the first step a validation of the starting (naive PTQ) model is logged as epoch
   -1, so train.select_epoch best_val can keep the starting point when training only hurts.

   AdamW groups, per trainable layer (the reference's make_optimizer): LoRA A and B at
   mean(Δ_w of the layer) / lr_lora_divisor, computed ONCE when fine-tuning starts and saved
   with the run; Δ_w at lr_w_delta - with delta_w_update reference, two slots sharing its
   data, one per gradient path (quantizer path, then base path), each with its own moments,
   as the reference's two parameters on one storage; with single, one slot of the summed
   gradient -; the TALSQ tables Δ_a, z_a at lr_act; the quantizer kinds' own values (nupes'
   exponents, weight and activation) at lr_exponent. Every rate times the schedule factor
   (train/schedule.h) over epochs x S steps.

   Run directory (docs/DESIGN.md "Formats"; everything written atomically, tmp + rename):
     config.yaml        the resolved run config
     calib.safetensors  recorded teacher UNet inputs (written by calibration)
     state.safetensors  the run state (train/run_state.h): student, AdamW, position, RNG, ...
     best.safetensors   train.select_epoch best_val: the student state of the best validation
     log.csv            per step and per validation (train/run_log.h)
     samples/epoch_NNN.png  sample grids of the student (NNN = epoch + 1, 3 digits)

   Stopping: when *hooks->stop becomes non-zero (a signal handler sets it; it only sets
   it), the current optimizer step finishes, the state is saved mid-epoch (x_t, step index,
   labels, RNG are part of it) and trainer_run returns ERR_INTERRUPTED. A NaN/Inf loss or
   gradient stops training with ERR_NAN naming epoch and step, after saving the state of
   the start of that step (the last good one).
   Resume is exact: the same run resumed from any checkpoint produces bit-identical losses
   and tensors as an uninterrupted one with the same thread count.

   Limitations: eps-parameterized models only (x0 / v: ERR_UNSUPPORTED); the sample grids
   use the model's own unconditional label (ldm_uncond_label), not model.uncond_label.
*/
#ifndef EFFDM_TRAINER_H
#define EFFDM_TRAINER_H

#include <signal.h>
#include <stdint.h>

#include "models/ldm.h"
#include "qalora/qmodel.h"
#include "train/train_config.h"
#include "util/err.h"

typedef struct Trainer Trainer;

// One finished optimizer step.
typedef struct {
    int epoch, step;            // 0-based; step within the epoch
    int epochs, steps;          // run length: epochs, steps per epoch
    int64_t global_step;        // optimizer steps done so far (this one included)
    int64_t total_steps;        // epochs x steps
    float loss;                 // the raw loss (before step weighting)
    double lr;                  // the activation tables' learning rate after the schedule
    double seconds;             // wall time of the step
    // its split: teacher forward, student forward + loss, backward, AdamW + DDIM update
    double split[4];
} TrainerStep;

// Memory of an opened run, in bytes (bench/finetune).
typedef struct {
    size_t teacher;             // FP UNet parameters + class embedding
    size_t student;             // QALoRA state: LoRA, Δ/z, TALSQ tables, W_int, special weights (qmodel_bytes)
    size_t optimizer;           // AdamW gradient block and moments
    size_t activations;         // arena in use when the last step's backward started (tape + saved values)
    size_t arena_peak;          // high-water mark of the step arena since open
    size_t grad_peak;           // high-water mark of the gradients of intermediates alive at once (tape.h)
    size_t grad_extent;         // memory the gradient pool touched for them (its blocks and headers)
    int recompute;              // 1: the student's weights are rebuilt in backward (run.recompute_weights)
    size_t step_weights;        // the step's weights, their summed gradient and scratch (4 floats per weight; 0 when rebuilt)
    // the last step's teacher forward (no grad, ctx scopes): its arena high-water mark above
    // the step's start, what it kept (its output), and the tape nodes it left (0 expected)
    size_t teacher_peak, teacher_kept, teacher_nodes;
} TrainerMemory;

// The sampled validation (train.val_samples; train/sample_check.c): final latents of the
// student against the teacher's, same noise. NaN when off.
typedef struct {
    double mse;   // mean squared difference of the latents (closeness image by image)
    double fd;    // Fréchet distance of the two latent sets (closeness of the distributions)
    double real;  // the teacher's denoising error on the student's samples over that on its own (1: as
                  // plausible to the teacher as its own samples; higher: less plausible)
} SampleCheck;

// How far real may move further from 1 than the starting model's before finetune warns and
// best_sampled refuses an epoch.
#define SAMPLED_REAL_TOL 0.02

// One validation (epoch -1: the starting model).
typedef struct {
    int epoch;
    double val_error;           // mean squared ε error, student vs teacher, per element
    SampleCheck sampled;        // the sampled validation (train.val_samples; NaN when off)
    int best_epoch;             // best so far (incl. this one)
    double best_val;
    double seconds;
} TrainerVal;

typedef struct {
    void (*on_step)(const TrainerStep *s, void *user);
    void (*on_val)(const TrainerVal *v, void *user);
    // Notes for the user: "checkpoint ...", "samples ...". May be NULL.
    void (*on_note)(const char *msg, void *user);
    // After each checkpoint is written (rank 0: the run directory, its log.csv flushed). May be NULL.
    void (*on_checkpoint)(const char *run_dir, void *user);
    void *user;
    // Non-zero: finish the current step, checkpoint, return ERR_INTERRUPTED (may be NULL).
    volatile sig_atomic_t *stop;
} TrainerHooks;

typedef struct {
    int start_epoch, start_step;  // where this call started
    int epoch, step;              // where it ended (epoch == epochs: finished)
    int epochs, steps;
    int64_t steps_run;            // optimizer steps run by this call
    double seconds;               // wall time of those steps (validation, samples, checkpoints excluded)
    double total_seconds;         // the same over the whole run, resumes included
    float final_loss;             // loss of the last step run (NaN when none)
    int has_best;                 // a validation has been run
    int best_epoch;
    double best_val;
} TrainerSummary;

// Opens the run directory `run_dir` for fine-tuning the teacher m (ownership passes to the
// trainer, also on failure) under tc (which the caller has checked against the run's
// config.yaml): builds the student per `student` (borrowed for this call) and restores it from
// run_dir/state.safetensors - a calibrated state (fine-tuning starts: the LoRA learning rates
// are computed now) or a run state (resume at its position) - and reads the validation inputs
// from calib.safetensors. m needs its first stage when tc->train.sample_every > 0. 0, or
// ERR_IO (no state: calibrate first), the readers' errors, ERR_UNSUPPORTED (x0 / v models),
// ERR_VALUE (a config the model cannot serve, naming the key).
int trainer_open(Trainer **tr, const TrainConfig *tc, const QModelConfig *student, Ldm *m, const char *run_dir,
                 Err *e);
// Runs from the current position to the end of train.epochs (see top). 0 when finished,
// ERR_INTERRUPTED after a stop (state saved), ERR_NAN (state of the last good step saved),
// or another ERR_ code (I/O, memory). sum (may be NULL) is filled in every case.
int trainer_run(Trainer *tr, const TrainerHooks *hooks, TrainerSummary *sum, Err *e);
// Frees everything; accepts NULL.
void trainer_free(Trainer *tr);
// Runs n optimizer steps (trainer_step, the loop's own step) from the current position with
// no validation, sample grid, checkpoint or log row (benchmarks); an epoch end starts the
// next epoch at once. Only hooks->on_step is used (hooks may be NULL). 0 or the step's error.
int trainer_bench_steps(Trainer *tr, int n, const TrainerHooks *hooks, Err *e);
// Profiles (autograd/profile.h) the steps from now on: the teacher's forward into `teacher`,
// the student's forward and backward (and validations, sample grids) into `student`; the
// two may be the same profile, and NULL stops profiling that part. Borrowed.
void trainer_set_profile(Trainer *tr, struct Profile *teacher, struct Profile *student);
// Memory held by the run (see TrainerMemory).
void trainer_memory(const Trainer *tr, TrainerMemory *mem);

// Position of the next step (epoch, step; step == steps: the epoch's end work is pending).
void trainer_position(const Trainer *tr, int *epoch, int *step);
// Optimizer steps per epoch (the training trajectory's DDIM steps: 31 for train.steps 30).
int trainer_steps_per_epoch(const Trainer *tr);
// 1 when the opened state was a run in progress (not a freshly calibrated student).
int trainer_resumed(const Trainer *tr);
// MPI ranks of the run that wrote the opened state (0: not a run in progress).
int trainer_saved_ranks(const Trainer *tr);
// The FP32 GEMM kernel (gemm_kernel_name) the opened run in progress was computed with, as
// its state.json recorded it; NULL when not a run in progress or not recorded.
const char *trainer_saved_fp_gemm(const Trainer *tr);
// 1 when trainer_run's error came from a step's exchange, so every MPI rank returned it
// (print it once); 0 when only this rank saw it.
int trainer_failure_shared(const Trainer *tr);
// Why the opened run state is state.prev.safetensors (state.safetensors was unreadable or
// failed its checksum), or NULL when state.safetensors itself was loaded.
const char *trainer_open_note(const Trainer *tr);

// The teacher and the student (for tests and tools); owned by tr.
Ldm *trainer_ldm(Trainer *tr);
QModel *trainer_qmodel(Trainer *tr);
// The learning rate of the LoRA group of trainable layer i (q->q order, trainable only), or
// -1 when out of range.
double trainer_lora_lr(const Trainer *tr, int i);

#endif
