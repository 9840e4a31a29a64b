/* qmodel.h: the quantized student over a loaded UNet - every layer chosen by select.h
   wrapped in a QLayer, one flat block of trainable parameters, the TALSQ entry all layers
   read, and the switch between the FP teacher and the student.

   The teacher and the student share ONE UNet: the FP weights, norms and embeddings are
   the same frozen tensors; qmodel_enable(q, 1) attaches the QLayers (layer_forward runs
   the fake-quantized path), qmodel_enable(q, 0) detaches them (the FP teacher). So a
   distillation step is: enable(0) -> teacher forward (no grad) -> enable(1) -> student
   forward + backward.

       QModel q;
       QModelConfig qc; qmodel_config_defaults(&qc);   // a run fills it from its config (run/run_wire.h)
       if (qmodel_init(&q, unet, &qc, T, &rng, &e)) goto fail;         // selection, W_int, LoRA init
       if (qmodel_calibrate_ldm(&q, &ctx, ldm, x, t, y, &e)) ...;     // activation ranges (naive PTQ)
       qmodel_enable(&q, 1);
       qmodel_set_timestep(&q, t);          // picks the TALSQ entry of the nearest training timestep
       Tensor *eps = ldm_apply_model(&ctx, ldm, x, tvec, y);
       qmodel_free(&q);                     // detaches, frees

   Trainable parameters (per trainable layer, in layer order): LoRA A, B, Δ_w, Δ_a table,
   z_a table, all in q->params (q->n_params floats, each layer's block laid out as
   qlayer.h "Storage" says). Gradients: q->grads (q->n_grads floats; per layer the
   qlayer.h gradient layout, which adds the base-path Δ_w gradient), owned by q until
   qmodel_bind_grads points them into a block of the trainer. qmodel_trainable lists every
   trainable tensor with its parameter group and its offset in that gradient block, in
   block order, so an optimizer can give each its AdamW slots.

   The layers left FP are the teacher's; with cfg.fp_f16 (run config quant.fp_layers: f16)
   the student runs their weights rounded to float16 (fplayer.h: a frozen copy, attached
   and detached with the QLayers), so that the export stores them as F16 exactly.

   Everything else that defines the student (W_int, z_w, special-layer ranges, calibrated
   activation tables, the selection, bits, quantizer kinds, rank, training timesteps, the FP layers'
   precision) is saved and restored by qmodel_write_state / qmodel_read_state; the FP UNet
   itself is not (it is the teacher, loaded from its checkpoint), nor are the float16
   copies (they follow from it).

   QModelConfig is plain data and the student's whole specification: qalora/ never sees a
   run config (the run layer above it maps one onto this struct, run/run_wire.h), so the
   method can be built, tested and benchmarked without one, and the folders depend one way.

   Limitations: fp_name_contains must keep every layer select.h keeps FP ("skip", "op");
   extra names are supported. The attention products (QK^T, softmax·V) stay FP, as in the
   reference (no option: the run config's quantize_attention_matmuls was removed).
*/
#ifndef EFFDM_QMODEL_H
#define EFFDM_QMODEL_H

#include <stddef.h>
#include <stdint.h>

#include "io/safetensors.h"
#include "io/weights.h"
#include "models/ldm.h"
#include "models/unet/unet.h"
#include "qalora/fplayer.h"
#include "qalora/qlayer.h"
#include "qalora/select.h"
#include "qalora/talsq.h"
#include "util/rng.h"

#define QMODEL_MAX_OVERRIDES 64
#define QMODEL_PATTERN_MAX 256
#define QMODEL_MAX_FP_NAMES 16
#define QMODEL_FP_NAME_MAX 32

typedef struct {
    QSelConfig sel;             // bit widths, special layers, overrides (sel.overrides: caller's array, copied by init)
    int rank;                   // LoRA rank (32)
    int train_steps;            // training DDIM steps S: TALSQ table entries (100 reference; 30 -> 31 entries)
    int talsq;                  // 0: one activation (Δ, z) per layer (table of 1 entry)
    QuantInit w_init, a_init;   // 'max' / 'mse'
    QKindParams kp;             // the weight kinds' settings (quant.easyquant_*)
    int fp_f16;                 // 1: the FP conv/linear layers run float16-rounded weights (fplayer.h)
    int rotate_block;           // block-Hadamard rotation of every quantized layer's input (rotate.h): the
                                // largest block; 0: none (quant.rotate)
    int a_token;                // 1: dynamic per-token activation ranges in the trainable layers
                                // (token_quant.h, quant.act_granularity: token)
    // Conv2d/Linear layers whose leaf name contains one of these stay FP ({"skip", "op"}).
    char fp_names[QMODEL_MAX_FP_NAMES][QMODEL_FP_NAME_MAX];
    int n_fp_names;
    // Storage for overrides a caller copies in (run_qmodel_config does; sel.overrides points here then).
    QSelOverride override_store[QMODEL_MAX_OVERRIDES];
    char pattern_store[QMODEL_MAX_OVERRIDES][QMODEL_PATTERN_MAX];
} QModelConfig;

typedef struct {
    UNet *unet;
    QModelConfig cfg;           // self-contained copy (cfg.sel.overrides -> cfg.override_store)
    int n_all;                  // every conv/linear of the UNet
    ModelLayer **all;           // registration order (unet_layers)
    QSelChoice *choice;         // [n_all]
    int n_q;                    // quantized layers (trainable + special)
    QLayer *q;                  // [n_q], in registration order
    TalsqSchedule train_sched;  // training timesteps (entry i <-> train_sched.timesteps[i])
    int entry;                  // current TALSQ entry, read by every QLayer
    int enabled;
    float *params;              // flat trainable block (n_params floats)
    size_t n_params;
    float *grads;               // flat gradient block, same layout (n_params + base-path Δ_w grads)
    size_t n_grads;
    // --- added with qmodel.c (additive) ---
    int *q_index;               // [n_all]: index into q[] of each layer, -1 for FP layers
    size_t *param_off;          // [n_q]: offset of each layer's block in params (trainable layers)
    size_t *grad_off;           // [n_q]: offset of each layer's block in grads
    float *own_grads;           // grads when q owns them (NULL after qmodel_bind_grads)
    int32_t *state_sel;         // (n_all, 3) role, w_bits, a_bits: written by qmodel_write_state
    int32_t state_cfg[4];       // rank, n_entries, talsq, n_all
    int32_t *state_ts;          // (train_sched.n) training timesteps
    int n_fp16;                 // FP conv/linear layers run with float16-rounded weights (cfg.fp_f16)
    FpLayer *fp16;              // [n_fp16], registration order; attached with the QLayers
    int32_t state_fp_bits;      // 16 or 32: the FP layers' weight precision, written to the state
} QModel;

// Parameter groups of the trainable tensors (docs/METHOD.md "Distillation loop", 3).
typedef enum {
    QMODEL_GROUP_LORA,          // LoRA A, B: lr = qmodel_lora_lr(layer)
    QMODEL_GROUP_W_DELTA_Q,     // Δ_w, quantizer-path gradient
    QMODEL_GROUP_W_DELTA_BASE,  // Δ_w again (same data), base-path gradient
    QMODEL_GROUP_ACT,           // TALSQ tables Δ_a, z_a
    QMODEL_GROUP_KIND,          // the quantizer kinds' own values (nupes' exponents), weight and activation
    QMODEL_GROUP_COUNT
} QModelGroup;

typedef struct {
    Tensor *t;                  // the tensor (data in q->params; grad in the gradient block)
    QModelGroup group;
    int layer;                  // index into q->q
    size_t grad_off;            // offset of t->grad in the gradient block
    char name[160];             // "q.<layer name>.lora_a" (state tensor name with prefix "q.")
} QTrainable;

// The reference defaults: W4A4, special 8-bit first 3 + last 1, rank 32, 100 entries, max / mse init,
// FP layers in float32.
void qmodel_config_defaults(QModelConfig *cfg);
// Wraps the UNet's layers per cfg. Weights are fitted now (w_init); activations are
// uncalibrated until qmodel_calibrate_acts (or qmodel_read_state). T: the model's DDPM
// timesteps (for the TALSQ schedule). The QModel must not move afterwards (layers point at
// q->entry). 0 or an ERR_ code (ERR_VALUE naming an override or an unsupported fp name).
int qmodel_init(QModel *q, UNet *unet, const QModelConfig *cfg, int T, Rng *rng, Err *e);
// Detaches every layer and frees; accepts a zeroed QModel.
void qmodel_free(QModel *q);
// 1: layer_forward runs the quantized path (student); 0: the FP path (teacher).
void qmodel_enable(QModel *q, int on);
// Every trainable layer's weight path as one op rebuilt in backward (on = 1) or as two ops whose
// values stay on the tape (0, the default): qlayer_weight_recompute. Same results either way.
void qmodel_set_recompute(QModel *q, int on);
// Floats of every trainable layer's weight, in layer order: the size of the step weight blocks.
size_t qmodel_step_weight_size(const QModel *q);
// Every trainable layer takes its part of eff (layer order) as its weight, with its gradient
// added into the same part of grad (qlayer_use_step_weight); eff NULL: the weight paths again.
void qmodel_use_step_weights(QModel *q, float *eff, float *grad);
// Selects the TALSQ entry of the training timestep nearest to DDPM timestep t.
void qmodel_set_timestep(QModel *q, int t);
// Number of trainable / special / FP layers (FP: conv/linear layers left unquantized, incl. conv1d).
void qmodel_counts(const QModel *q, int *trainable, int *special, int *fp);
// Bytes the student holds beyond the FP UNet: trainable block and its gradients, W_int,
// z_w, special layers' fixed ranges and fake-quantized weights.
size_t qmodel_bytes(const QModel *q);
// The QLayer wrapping the layer named `name`, or NULL.
QLayer *qmodel_find(QModel *q, const char *name);

/* ---- training interface ----------------------------------------------------------- */
// Every trainable tensor in gradient-block order (per trainable layer: lora_a, lora_b,
// Δ_w quantizer path, Δ_w base path, Δ_a, z_a). out may be NULL to count; otherwise it
// holds at least that many. Returns the count.
int qmodel_trainable(QModel *q, QTrainable *out);
// LoRA learning rate of q->q[layer]: mean(Δ_w of that layer) / divisor (docs/METHOD.md
// "scale-aware LoRA optimization"), from the CURRENT Δ_w: call it when fine-tuning starts.
double qmodel_lora_lr(const QModel *q, int layer, double divisor);
// Points every trainable gradient into grads (q->n_grads floats, the same layout) and zeroes
// it; q's own gradient block is freed. grads must outlive q (or be rebound).
void qmodel_bind_grads(QModel *q, float *grads);
// The same, zeroing as `zero` says (qlayer.h QGradZero).
void qmodel_bind_grads_ex(QModel *q, float *grads, QGradZero zero);
// The gradient block's ranges of activation quantizer tensors (the QGRAD_ZERO_ACT set), adjacent
// ones merged, in block order: their count, and when off and len are not NULL the ranges.
size_t qmodel_act_grad_ranges(QModel *q, size_t *off, size_t *len);
// Zeroes the gradient block.
void qmodel_zero_grads(QModel *q);

/* ---- calibration ------------------------------------------------------------------ */
// One forward of the student: fills the model's input itself and returns its output (or
// NULL with c->err set).
typedef Tensor *(*QModelForwardFn)(Ctx *c, void *user);
// docs/METHOD.md "Calibration data": runs ONE forward of the fake-quantized network with
// every quantized layer in QCALIB_FIT, so each layer's activation range is fitted (a_init)
// on the input it really receives from the already quantized layers before it. Grad mode
// is off; the arena is released back afterwards; the student stays enabled as it was.
// 0 or an ERR_ code (e names the layer).
int qmodel_calibrate_acts(QModel *q, Ctx *c, QModelForwardFn fwd, void *user, Err *e);
// The same on n recorded UNet inputs of ldm's UNet (which q wraps): x (n, C, H, W) floats,
// t[0..n) timesteps, y[0..n) labels (NULL for unconditional models), as one batch.
int qmodel_calibrate_ldm(QModel *q, Ctx *c, Ldm *ldm, const float *x, const float *t, const int *y, int n, Err *e);
// After qmodel_calibrate_ldm: refits TALSQ entry `entry` of every trainable layer on these
// inputs (one forward with that entry active, layers before already quantized with it);
// special layers and one-entry tables keep their ranges. 0 or an ERR_ code.
int qmodel_calibrate_ldm_entry(QModel *q, Ctx *c, Ldm *ldm, const float *x, const float *t, const int *y, int n,
                               int entry, Err *e);

/* ---- state I/O -------------------------------------------------------------------- */
// The metadata key (after the prefix) of the layers' quantizer kinds in a state.
#define QMODEL_KINDS_META "sel.quantizers"
// Adds to w every tensor that defines the student beyond the FP UNet, named prefix + ...:
//   sel.layers   I32 (n_all, 3)  role (0 fp, 1 trainable, 2 special), w_bits, a_bits per layer
//   sel.config   I32 (4)         rank, TALSQ entries, talsq on/off, n_all
//   sel.fp_bits  I32 (1)         16 or 32: the FP layers' weights (absent in states written
//                                before quant.fp_layers existed: those are 32)
//   sel.rotate   I32 (1)         quant.rotate, only when > 0 (absent: no rotation)
//   sel.act_token I32 (1)        1 with quant.act_granularity: token (absent: per tensor)
//   talsq.timesteps I32 (S)      training timesteps (entry i <-> timestep i)
//   <layer>.w_int   U8 weight-shaped (trainable)   <layer>.w_delta, .w_zero F32 (Cout)
//   <layer>.lora_a, .lora_b F32 (trainable, rank > 0)
//   <layer>.a_delta, .a_zero F32 (S trainable, 1 special)
//   <layer>.w_side_idx I32, .w_side_val F32 (Cout, m)   the weight kind's side table, when it
//                                keeps one (easyquant: positions in the channel, W_base's values)
// and the metadata prefix + "sel.quantizers": the quantizer kinds of every quantized layer,
// JSON {"<layer>": ["<weight kind>", "<activation kind>"], ...} (qkind.h names; absent in
// states written before kinds existed: all uniform).
// The data stays q's: keep q unchanged until st_write. 0 or an ERR_ code.
int qmodel_write_state(const QModel *q, StWriter *w, const char *prefix, Err *e);
// Restores what qmodel_write_state saved into a QModel built (qmodel_init) from the same
// config over the same UNet. The selection, bits, quantizer kinds, rank, timesteps, FP-layer
// precision and rotation must match: ERR_VALUE naming the layer or key otherwise (a kind this build does
// not know too); a missing tensor is ERR_KEY, a wrong shape ERR_SHAPE (both naming the
// tensor). Marks every layer calibrated. 0 or an ERR_ code.
int qmodel_read_state(QModel *q, WeightFile *f, const char *prefix, Err *e);

#endif
