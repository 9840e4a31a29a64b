/* qlayer.h: EfficientDM's quantized layer over a model's conv2d / linear (the reference's
   QuantModule_intnlora for trainable layers, QuantModule for the special ones).

   Trainable layer (QALoRA + TALSQ):
       W_base = (W_int - z_w) · Δ_w                  W_int: naive-PTQ levels (fixed), z_w fixed
                                                     (the weight kind's decode of W_int)
       W_eff  = q_w(W_base + B·A)                    channel-wise, w_bits, step Δ_w again
       out    = conv2d / linear(q_a[entry](x), W_eff, bias)
   - LoRA: linear A (r, in), B (out, r); conv k x k: A (r, Cin, kh, kw), B (Cout, r, 1, 1),
     so ΔW[o, i, u, v] = Σ_r B[o, r] A[r, i, u, v] (A as a conv with the layer's stride and
     padding followed by B as a 1x1 conv is the same map). A: Kaiming-uniform (a = √5,
     bound 1/√fan_in, fan_in = in or Cin·kh·kw), B: zeros, so a new layer computes
     exactly the naive PTQ model.
   - Δ_w is used twice. Its data is ONE array, seen by two Tensors with SEPARATE gradient
     buffers: `wq.delta` (quantizer path, q_w's step) and `w_delta_base` (base path,
     W_base). The reference applies one AdamW update per path; summing both gradients
     gives the single-update variant.
   - q_a is a table of n_entries (Δ_a, z_a) pairs (TALSQ), one per training timestep;
     the entry used is *entry, an int owned by whoever drives the model (sampler,
     trainer), so that all layers switch together. Only that entry gets gradient.
   Special layer: special bits (8) for both; W fake-quantized from the FP weights once
   (naive PTQ ranges), one static (Δ_a, z_a), no LoRA, nothing trained.
   q_w and q_a are of the kinds the config gives (QLayerConfig.w_kind / a_kind, recorded in
   wq.kind / aq.kind; uniform by default): the layer reaches them only through quantizer.h,
   which runs the kind's row of the table (qkind.h). A weight kind with a side table
   (easyquant's outliers: Cout x m positions and values, fitted with the ranges on the FP
   weights) gets it allocated here; its values are W_base's at those positions (W_base is
   decode(W_int)). Kinds for weights only are refused for activations (ERR_VALUE). A kind's own
   learnable values (n_param per entry: nupes' exponent) sit at the end of the blocks below and
   train like Δ; the weight kind's are used by both paths (W_base = decode(W_int) and q_w), whose
   gradients add into their one buffer.

   Storage. Trainable state lives in caller-provided blocks (the trainer's flat parameter
   and gradient blocks) or in blocks the layer allocates itself (pass NULL):
       params: [A (r·K) | B (Cout·r) | Δ_w (Cout) | Δ_a (S) | z_a (S) | P_w (Cout·Pw) | P_a (S·Pa)]
       grads:  [dA | dB | dΔ_w quantizer path (Cout) | dΔ_w base path (Cout) | dΔ_a | dz_a | dP_w | dP_a]
   with K = Cin·kh·kw (conv) or in (linear), S = n_entries, Pw / Pa the weight / activation
   kind's n_param (0 for uniform, easyquant; 1 for nupes); qlayer_sizes gives the counts
   (0 for special layers). W_int, z_w and all special-layer state are owned by the layer.

   Calibration (activation ranges, docs/METHOD.md "Calibration data"): with calib =
   QCALIB_FIT the next forward fits q_a to the input the layer really receives (a_init,
   'mse' by default) and writes the result into every table entry, then quantizes with it,
   as the reference's first forward does; run one forward of the whole model in that mode
   (layers before already quantized). QCALIB_FIT_ENTRY refits only the current entry of a
   trainable layer (after a QCALIB_FIT forward), for per-timestep initial ranges.
   calib_hook, when set, sees every input first (for a driver that gathers statistics over
   several batches). A forward before any
   calibration fails with ERR_VALUE naming the layer.

   A QLayer must not move in memory once initialised: its tensors are tape inputs and the
   attached ModelLayer points at it.

       QLayer q;
       QLayerConfig qc; qlayer_config_defaults(&qc);              // W4A4, r 32, 100 entries
       if (qlayer_init(&q, layer, &qc, NULL, NULL, &rng, &e)) goto fail;
       q.entry = &model_entry;  qlayer_attach(&q);                 // layer_forward now runs q
       q.calib = QCALIB_FIT;  unet_forward(...);  q.calib = QCALIB_OFF;
       ...
       qlayer_free(&q);                                            // also detaches
*/
#ifndef EFFDM_QLAYER_H
#define EFFDM_QLAYER_H

#include <stdint.h>

#include "models/layer.h"
#include "qalora/quantizer.h"
#include "util/rng.h"

// QCALIB_FIT_ENTRY: fit only the current TALSQ entry (*entry) of a trainable layer's table;
// special layers and one-entry tables keep their ranges (calib.act_ranges per_step).
typedef enum { QCALIB_OFF, QCALIB_FIT, QCALIB_FIT_ENTRY } QCalibMode;

// easyquant's defaults (run config quant.easyquant_*): 0.5% of each channel kept in float16,
// 100 Adam steps of the range fit at 1% of the initial Δ.
#define QLAYER_EQ_OUTLIER_FRACTION 0.005
#define QLAYER_EQ_STEPS 100
#define QLAYER_EQ_LR 0.01

typedef struct {
    int w_bits, a_bits;   // 2..8 (special layers: the special bit width, 8)
    int rank;             // LoRA rank (32; the reference does not clip it); 0: no LoRA
    int n_entries;        // TALSQ table size = number of training timesteps (100)
    QuantInit w_init;     // weight ranges: QUANT_INIT_MAX (naive PTQ, default) or QUANT_INIT_MSE
    QuantInit a_init;     // activation ranges at calibration: QUANT_INIT_MSE (default)
    QuantKind w_kind;     // quantizer kind of the weights (qkind.h): QUANT_UNIFORM (default)
    QuantKind a_kind;     // quantizer kind of the activations: QUANT_UNIFORM (default)
    QKindParams kp;       // the weight kind's settings (easyquant: QLAYER_EQ_* by default)
    int special;          // 1: special layer (see top)
    int rotate_block;     // block-Hadamard rotation of the input channels (rotate.h): the largest
                          // block allowed, 0 (default) or 1: none
    int a_token;          // 1: dynamic per-token activation ranges (token_quant.h; trainable layers,
                          // uniform activations only); 0 (default): one static range per entry
} QLayerConfig;

typedef struct QLayer {
    ModelLayer *layer;    // the wrapped layer (FP weight and bias; stride, pad)
    int special;
    int rank, n_entries;
    int cout;             // output channels / features
    size_t k;             // weight row length: Cin·kh·kw or in
    QuantInit a_init;
    int rot;              // Hadamard block of the input channels (rotate.h), 0: not rotated. Every
                          // quantity below is in the rotated basis: W_int, LoRA and w_fq of W Hᵀ

    uint8_t *w_int;       // trainable: (Cout, K) naive-PTQ levels in [0, 2^w_bits - 1]
    Tensor w_fq;          // special: the fake-quantized weight, weight-shaped, frozen
    Quantizer wq;         // channel-wise, of the weight kind: delta = Δ_w (grad: quantizer path), zero = z_w (frozen)
    Tensor w_delta_base;  // trainable: Δ_w's data again, grad: base path
    Tensor lora_a;        // trainable, rank > 0: (r, Cin, kh, kw) or (r, in)
    Tensor lora_b;        // trainable, rank > 0: (Cout, r, 1, 1) or (out, r)
    Quantizer aq;         // layer-wise, of the activation kind: n_entries (trainable) or 1 (special) entries
    int a_token;          // trainable: 1 = per-token ranges (token_quant.h): aq.delta holds the ratio α, aq.zero 0

    int recompute;        // trainable: 1 = the weight path runs as one op (qlayer_weight_recompute)
    float *step_w;        // trainable, inside a training step: W_eff computed once for the step's
    Tensor w_step;        // slots (qlayer_use_step_weight), and its leaf on the tape
    const int *entry;     // current TALSQ entry (driver-owned); NULL: entry 0
    int act_ready;        // 1 once aq holds calibrated (or loaded) values
    QCalibMode calib;
    void (*calib_hook)(void *user, struct QLayer *q, const Tensor *x);
    void *calib_user;

    float *params, *grads;          // the trainable state (see top)
    float *own_params, *own_grads;  // set when the layer allocated them
    float *fixed;                   // z_w, special Δ/z and the fake-quantized weight
    int32_t *side_idx;              // the weight quantizer's side table (wq.n_side per channel), or NULL
    float *side_val;
} QLayer;

// W4A4, rank 32, 100 entries, 'max' weights, 'mse' activations, uniform quantizers, trainable.
void qlayer_config_defaults(QLayerConfig *cfg);
// Floats of trainable state and of gradients the layer needs in the caller's blocks.
// 0, or ERR_SHAPE / ERR_VALUE for a layer or config it cannot wrap.
int qlayer_sizes(const ModelLayer *l, const QLayerConfig *cfg, size_t *n_params, size_t *n_grads, Err *e);
// Wraps l (not attached yet): fits the weight ranges on l's FP weights (cfg->w_init), stores
// W_int, initialises LoRA (A from rng), leaves the activation quantizer uncalibrated.
// params / grads: blocks of qlayer_sizes floats, or NULL to allocate them. 0 or an ERR_ code.
int qlayer_init(QLayer *q, ModelLayer *l, const QLayerConfig *cfg, float *params, float *grads, Rng *rng,
                Err *e);
// Detaches and releases what the layer allocated; accepts a zeroed or half-built QLayer.
void qlayer_free(QLayer *q);
// layer_forward(l) runs qlayer_forward from now on / runs the FP op again.
void qlayer_attach(QLayer *q);
void qlayer_detach(QLayer *q);

// The layer's output for x (see top); NULL with c->err set on failure.
Tensor *qlayer_forward(Ctx *c, QLayer *q, Tensor *x);
// W_eff = q_w(W_base + B·A) (trainable) or the fake-quantized weight (special), weight-shaped.
Tensor *qlayer_weight(Ctx *c, QLayer *q);
// W_base + B·A before q_w (trainable layers), recorded as OP_LORA_WEIGHT: gradients to
// w_delta_base, lora_a, lora_b. Exposed for tests.
Tensor *qlayer_weight_prequant(Ctx *c, QLayer *q);
// The weight path once per step for all of a step's gradient slots (train/distill_step.c):
// pre = W_base + B·A and eff = q_w(pre), through qlayer_weight's kernels (the weight's count each;
// eff may be pre).
void qlayer_weight_step(const QLayer *q, float *pre, float *eff);
// Its backward for deff = d loss / d W_eff summed over the slots: the fake-quant's then the LoRA
// weight's backward, as qlayer_weight's two ops, added into the layer's trainable gradients
// (bound: no allocation from c). pre: qlayer_weight_step's; dpre: scratch of the weight's count.
void qlayer_weight_step_backward(Ctx *c, QLayer *q, const float *deff, const float *pre, float *dpre);
// From now on qlayer_forward takes eff as the weight, a leaf whose gradient is added into grad
// (eff NULL: the weight path again).
void qlayer_use_step_weight(QLayer *q, float *eff, float *grad);
// qlayer_weight of a trainable layer as one op (OP_QWEIGHT) whose two weight-sized values need
// not stay from the forward to the backward: W_base + B·A is scratch, and W_eff is a transient
// tensor (tape.h) that the layer drops after its conv / linear and the tape rebuilds before that
// op's backward. The same kernels in the same order as qlayer_weight, so the same bits, forward
// and backward; it trades one more weight pass per layer and step for the memory of two weights
// per layer (q->recompute selects it in qlayer_forward; with no gradient pool it saves nothing).
Tensor *qlayer_weight_recompute(Ctx *c, QLayer *q);

// The trainable tensors of a trainable layer in gradient-block order (lora_a, lora_b when
// rank > 0, then wq.delta, w_delta_base, aq.delta, aq.zero), for the optimizer's slots;
// wq.delta and w_delta_base share their data. Returns the count (0 for special layers).
#define QLAYER_MAX_SLOTS 8
int qlayer_trainable(QLayer *q, Tensor *out[QLAYER_MAX_SLOTS]);
// Points every gradient at `grads` (qlayer_sizes floats, same layout; e.g. the
// optimizer's flat buffer at the first slot's offset) and zeroes it; frees the layer's own.
void qlayer_bind_grads(QLayer *q, float *grads);
// Which gradients a binding zeroes: all; none (the caller overwrites the block); or only the
// activation quantizer's (Δ_a, z_a, its kind's values): what a backward writes when the layer
// runs on a shared step weight (qlayer_use_step_weight), whose weight-path gradients come later.
typedef enum { QGRAD_ZERO_ALL, QGRAD_ZERO_NONE, QGRAD_ZERO_ACT } QGradZero;
void qlayer_bind_grads_ex(QLayer *q, float *grads, QGradZero zero);
// 1 when t is one of q's activation quantizer tensors (the QGRAD_ZERO_ACT set).
int qlayer_is_act_tensor(const QLayer *q, const Tensor *t);

// A special layer's fake-quantized weight again from the FP weight (in the layer's basis) and
// the weight quantizer's current ranges (after they were restored from a state). 0 or ERR_NOMEM.
int qlayer_special_refit(QLayer *q);

// Sets every activation table entry to (delta, zero) and marks the layer calibrated.
void qlayer_set_act(QLayer *q, float delta, float zero);

/* ---- merge / export ------------------------------------------------------------- */
// The deployed integer weight: levels[Cout·K] = the weight kind's levels of W_in (uniform:
// clamp(round(W_in/Δ_w) + z_w, 0, 2^b - 1)) with W_in = W_base + B·A (trainable) or the FP
// weight (special), so that decoding them (uniform: (level - z_w)·Δ_w) is W_eff exactly.
// 0 or ERR_NOMEM.
int qlayer_merge(const QLayer *q, uint8_t *levels, Err *e);
// The same, and the side values of W_in (wq.n_side per channel, channel-major; NULL: not
// needed): what the export stores for a kind with a side table. 0 or ERR_NOMEM.
int qlayer_merge_side(const QLayer *q, uint8_t *levels, float *side_val, Err *e);
// W_eff exactly as the student's forward computes it (qlayer_weight, without a tape): for a
// trainable layer q_w(decode(W_int) + B·A) through the same kernels, for a special layer its
// fake-quantized weight; into w (the weight's element count, C order). In the rotated basis
// when q->rot (see qlayer_weight_unrotate).
void qlayer_effective_weight(const QLayer *q, float *w);
// w (the layer's weight shape) from the rotated basis back to the layer's own: W_eff H, the
// weight a dequantized (CompVis) export writes, so that it acts on x unrotated. No-op at rot 0.
void qlayer_weight_unrotate(const QLayer *q, float *w);
// The activation table for export: delta[i] = Δ_a[i], zero[i] = round(z_a[i]) (half to
// even) for the aq.n entries; the exported model's fake-quant reference uses these.
void qlayer_export_act(const QLayer *q, float *delta, float *zero);

#endif
