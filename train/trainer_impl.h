/* trainer_impl.h: the Trainer's state, shared by the files of train/ that implement it
   (trainer.c: setup and loop; distill_step.c: one optimizer step; run_state.c: checkpoint
   I/O; validate.c: validation error; train_samples.c: sample grids). Not a public header. */
#ifndef EFFDM_TRAINER_IMPL_H
#define EFFDM_TRAINER_IMPL_H

#include <stdint.h>

#include "autograd/tape.h"
#include "sample/ddim.h"
#include "train/adamw.h"
#include "train/distill_loss.h"
#include "train/run_log.h"
#include "train/trainer.h"
#include "util/rng.h"

#define TRAINER_PATH_MAX 4096
// AdamW groups per trainable layer: LoRA, Δ_w, the TALSQ tables, the quantizer kinds' own values
#define TRAINER_GROUPS 4

// What one slot runs on (distill_step.c slot_run): the trainer's model, student and context
// (primary), or a slot worker's (slot_workers.c).
typedef struct {
    Ctx *c;
    Ldm *m;
    QModel *q;
    float *xin, *tin;           // (2 per_slot, C, H, W), (2 per_slot): the slot's UNet batch
    int *yin;                   // (2 per_slot)
    int n_dw;                   // delta_w_update single: dw_from[i]->grad = dw_to[i]->grad
    Tensor **dw_from, **dw_to;
    int primary;                // 1: the trainer's own (split times, memory marks, profiles)
} SlotEnv;

// A thread's own student over the trainer's weights (slot_workers.c): a UNet clone with its own
// layer array, a QModel restored from the trainer's and given its trainable values every step.
typedef struct {
    Ldm *m;
    QModel q;
    int q_ready;
    Ctx ctx;
    int ctx_ready;
    SlotEnv env;
    int n_sync;                 // trainable tensors: the trainer's values copied here every step
    float **sync_dst;
    const float **sync_src;
    size_t *sync_n;
} SlotWorker;

struct Trainer {
    TrainConfig cfg;            // what the run asked for (train/train_config.h)
    char dir[TRAINER_PATH_MAX];
    Ldm *m;
    QModel q;
    int q_ready;                // q was initialised (qmodel_free needed)
    AdamW opt;
    Ctx ctx;
    int ctx_ready;
    DdimSchedule ddim;          // the training trajectory's schedule (train.steps, train.eta)
    DistillLoss loss;

    // shapes
    int S;                      // steps per epoch (ddim.n)
    int B;                      // trajectories per epoch (train.batch)
    int C, H, W;
    size_t per;                 // C * H * W
    int cond;                   // class-conditional model
    int pair;                   // 1: the UNet batch is [∅ | c] (2B rows); 0: B rows (single branch)
    int uncond_label;
    int n_real;                 // labels drawn: [0, n_real + 1) without uncond_label

    // the step's slots: one per trajectory, each rank computes its share (util/dist.h), the
    // gradients are summed in slot order (distill_step.c)
    int rank, world;            // this process among the MPI ranks (0 of 1: one process)
    int n_slots, per_slot;      // gradient slots per step (train.grad_slots), trajectories in each
    size_t rec;                 // floats per slot record: gradient, guided ε, loss, status
    float *slots;               // (n_slots, rec)
    int n_dw;                   // delta_w_update single: tensors whose gradient is another's
    Tensor **dw_from, **dw_to;  // [n_dw] dw_from->grad = dw_to->grad after every binding
    int stop_all;               // the last step's exchange saw a stop request on some rank
    volatile sig_atomic_t *stop_flag;  // this process's stop request (TrainerHooks.stop), or NULL

    // optimizer groups: per trainable layer 3 groups (LoRA, Δ_w, activations)
    int n_tl;                   // trainable layers
    double *lr_lora;            // [n_tl], computed once when fine-tuning starts
    double *base_lr;            // [TRAINER_GROUPS n_tl]

    // position and run state (saved in state.safetensors)
    int epoch, step;            // next step; step == S: epoch-end work pending
    int drawn;                  // the epoch's labels and x_T are drawn (x holds x_t of `step`)
    Rng rng;
    float *x;                   // (B, C, H, W) the trajectory's current x_t
    int *labels;                // (B)
    int sel_round;              // train.sample_selection adaptive: the pool round of sel (-1: none yet)
    int n_sel;                  // candidates kept in that round's band
    int *sel;                   // [train.selection_pool] their indices (sample_select.c); NULL when uniform
    double *stepw_mean;         // [S] running mean of each step index's raw loss over epochs
    int64_t *stepw_count;       // [S]
    int has_best, best_epoch;
    double best_val;            // best_val: the ε error; best_sampled: the sampled score (trainer.c)
    double val_start[3];        // the starting model's sampled mse, fd, real (NaN: not measured)
    int init_val_done;          // the starting model's validation (epoch -1) is logged
    double seconds;             // training seconds over the whole run
    float last_loss;
    int resumed;                // the opened state was a run in progress
    int saved_ranks;            // effdm.ranks of the opened state (1 when not recorded)
    char saved_fp_gemm[16];     // state.json's fp_gemm: the FP32 GEMM kernel of the run so far ("": not recorded)
    int failure_shared;         // the last error came from a step's exchange: every rank has it
    char open_note[800];        // run_state_load fell back to state.prev.safetensors: why (else empty)
    int ran;                    // trainer_run was called before (the log holds this run's rows)

    // per-step buffers (allocated once, before the loop)
    float *noise;               // (B, C, H, W)
    float *xin;                 // (2 per_slot, C, H, W): one slot's UNet batch, [x_t | x_t] or x_t
    float *tin;                 // (2 per_slot) timesteps
    int *yin;                   // (2 per_slot) [∅ | y] or y
    float *eps_g;               // (B, C, H, W) guided ε that drives the trajectory

    // validation inputs (held-out calibration inputs)
    int n_val;
    float *val_x;               // (n_val, C, H, W)
    float *val_t;               // (n_val)
    int *val_y;                 // (n_val) or NULL (unconditional)
    float *chk_teacher;         // (val_samples, C, H, W) the teacher's final latents of the sampled validation
    double chk_teacher_real;    // the teacher's denoising error on them (sample_check.c)

    RunLog log;

    // the last step's split (seconds): teacher forward, student forward + loss, backward,
    // AdamW + trajectory update; and the arena in use when the backward started
    double split[4];
    SlotEnv env;                // the trainer's own slot environment
    SlotWorker *workers;        // threads - 1 of them when slots run on threads (slot_workers.c)
    int n_workers;
    int workers_decided;        // trainer_workers_ready ran its decision
    Err *slot_err;              // [slots of this rank] each slot's error on the threads path
    size_t step_arena_peak;
    int recompute;                // the student's weight paths are rebuilt in backward (run.recompute_weights)
    // recompute off: the weight path runs once per step for all slots (distill_step.c); a slot
    // record then ends with the slot's d W_eff of every trainable layer, at rec_dw
    int shared_w;
    size_t n_sw, rec_dw;
    float *sw_pre, *sw_eff;       // [n_sw] W_base + B·A and W_eff of the step, layer order
    float *sw_dsum, *sw_dpre;     // [n_sw] d W_eff summed over the slots; the backward's scratch
    size_t *sw_off;               // [q.n_q] each trainable layer's offset in them
    // shared_w: the gradient block's ranges a slot writes (the activation quantizers'); the rest
    // of a slot record's block (the weight paths') is never written and stays 0 from allocation
    size_t n_act, *act_off, *act_len;
    size_t teacher_peak, teacher_kept;  // arena bytes of the last teacher forward: high-water, kept after it
    size_t teacher_nodes;               // tape nodes after it (0: no gradient bookkeeping)
    struct Profile *prof_teacher, *prof_student;  // trainer_set_profile (may be NULL)
};

/* trainer.c */
// The student's trainable tensors in the optimizer's order (calloc'ed, *n of them), or NULL.
QTrainable *trainer_trainable_list(QModel *q, int *n);
// delta_w_update single: each base-path Δ_w tensor of ts (from) and the quantizer path's Δ_w
// before it (to), whose gradient buffer it takes. Fills from / to; returns the pair count.
int trainer_dw_pairs(const QTrainable *ts, int n, Tensor **from, Tensor **to);

/* distill_step.c */
// Floats after the gradient and ε of a slot record: loss, status (0 or an ERR_ code), stop.
#define SLOT_TAIL 3
// Points the student's trainable gradients into grads (q->n_grads floats), zeroed.
void trainer_bind_grads(Trainer *tr, float *grads);
void trainer_bind_grads_ex(Trainer *tr, float *grads, QGradZero zero);
// Draws the epoch's labels and x_T from the run's RNG (adaptive selection: from the kept pool,
// scoring a new pool first when the epoch starts a round). 0 or an ERR_ code.
int trainer_begin_epoch(Trainer *tr, Err *e);
// One optimizer step at tr->step of tr->epoch (see trainer.h); advances x_t and the RNG.
// *loss receives the raw loss. 0, ERR_NAN (nothing updated: the state is that of the start
// of the step), or the op's error (c->err).
int trainer_step(Trainer *tr, float *loss, double *lr, Err *e);
// Current schedule factor (train/schedule.h) at the optimizer's step count.
double trainer_lr_factor(const Trainer *tr);

/* slot_workers.c */
// Points env's student's trainable gradients into grads, zeroed (trainer_bind_grads for env).
void slot_env_bind_grads(SlotEnv *env, float *grads, QGradZero zero);
// Decides once whether a step's `slots` (this rank's) run on threads, and builds the workers if
// so: 2 or more threads and slots, no profiler, a UNet whose latents have at most 16 x 16
// positions (each worker holds a student and an arena of its own). 0 or an ERR_ code.
int trainer_workers_ready(Trainer *tr, int slots, Err *e);
// Copies the trainer's trainable values (the optimizer's) into every worker's student.
void trainer_workers_sync(Trainer *tr);
void trainer_workers_free(Trainer *tr);

/* sample_select.c */
// Scores pool round `round` (teacher vs student final latents) and keeps its band in tr->sel.
int trainer_select_refresh(Trainer *tr, int round, Err *e);
// The band [lo, hi) of pool ranks kept (at least one).
void trainer_select_band(const RcTrain *T, int *lo, int *hi);
// The epoch's labels and x_T: train.batch draws from tr->sel with the run's RNG.
void trainer_select_draw(Trainer *tr);

/* run_state.c */
// Writes state.safetensors (and nothing else) atomically. 0 or ERR_IO / ERR_NOMEM.
int run_state_save(Trainer *tr, Err *e);
// Writes best.safetensors (the student state and the best record). 0 or an ERR_ code.
int run_state_save_best(Trainer *tr, Err *e);
// Reads state.safetensors into tr (the student; with train.* tensors the run position,
// optimizer, RNG...; sets tr->resumed). The AdamW slots must be registered. 0 or an ERR_ code.
int run_state_load(Trainer *tr, Err *e);

/* validate.c */
// Reads the held-out validation inputs from calib.safetensors (train.val_inputs of them).
int trainer_load_val(Trainer *tr, Err *e);
// Mean squared ε error of the student vs the teacher over the validation inputs.
// ERR_INTERRUPTED when the stop flag rose in between (nothing changed). 0 or an ERR_ code.
int trainer_validate(Trainer *tr, volatile sig_atomic_t *stop, double *err_out, Err *e);

/* sample_check.c */
// The class label of image i of a class-balanced set: i modulo the real classes, the
// unconditional label skipped (0 for unconditional models).
int trainer_real_label(const Trainer *tr, int i);
// Final latents of n class-balanced images (trainer_real_label) sampled with so (its on_eval
// and user are set here) from streams (seed, i), by the student (1: its TALSQ entry per step)
// or the FP teacher (0), into z (n, C, H, W); the student is left enabled. ERR_INTERRUPTED
// when *stop rose (stop may be NULL). 0 or an ERR_ code.
int trainer_sample_latents(Trainer *tr, int student, const SamplerOpts *so, uint64_t seed, int n, float *z,
                           volatile sig_atomic_t *stop, Err *e);
// The sampled validation (train.val_samples images, sample.* protocol; the teacher's sampled
// once and kept): the measures of TrainerVal (trainer.h). ERR_INTERRUPTED when stopped.
int trainer_sample_check(Trainer *tr, volatile sig_atomic_t *stop, SampleCheck *out, Err *e);

/* train_samples.c */
// SamplerOpts.on_eval for sampling the student (user = the Trainer): the TALSQ entry of the
// timestep about to be evaluated.
void trainer_sampler_on_eval(int step, int total, int timestep, void *user);
// samples/epoch_NNN.png of the student (sample.* keys). 0 or an ERR_ code.
int trainer_sample_grid(Trainer *tr, int epoch, volatile sig_atomic_t *stop, char *path, size_t path_size, Err *e);

#endif
