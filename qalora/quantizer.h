/* quantizer.h: the fake quantizers of EfficientDM, their initialisation from data, their
   integer encoding, and the fake-quant ops of the tape (OP_FAKE_QUANT).

   One interface, several kinds: a Quantizer is a kind, a bit width and a set of entries
   (one (Δ, z) pair each, plus the kind's own learnable values if it has any). The
   functions below check their arguments, cut x into slices (the channels of a
   channel-wise quantizer, fixed chunks of a layer-wise one), thread over them, and run the
   kind's kernels through the kind table (qkind.h: one row of operations per kind, one
   file per kind). Nothing here or in the layers switches on the kind. Kinds:
   QUANT_UNIFORM (qkind_uniform.c), QUANT_EASYQUANT (qkind_easyquant.c: outlier-kept weight
   ranges), QUANT_NUPES (qkind_nupes.c: a power-warped uniform grid, one learnable exponent
   per entry).

   QUANT_UNIFORM (EfficientDM quant_layer.py UniformAffineQuantizer, asymmetric):
       q(x) = (clamp(round(x/Δ) + z, 0, 2^b - 1) - z) · Δ
   round is round-half-to-even (torch.round, rintf). z is not rounded inside q: the
   activation zero points are trained as real numbers. Gradients as the reference's
   round_ste + relu-written clip give them (derivation in fake_quant.c):
       d/dx = 1 inside the clamp range, 0 outside (straight-through round)
       d/dΔ = round(x/Δ) - x/Δ inside, clamp(round(x/Δ) + z) - z outside
       d/dz = 0 inside, -Δ outside
   where "inside" means 0 <= round(x/Δ) + z <= 2^b - 1 (both ends pass the gradient).

   Entries: channel-wise (entry c serves slice c along dim 0 of x: the output channel of a
   weight) or layer-wise, where the quantizer holds a table of entries of which one is
   active per call (TALSQ: one entry per training timestep; a static quantizer has one).

       float d[16], z[16];
       Quantizer q;
       quantizer_setup(&q, QUANT_UNIFORM, 4, 1, 16, d, z, NULL, NULL);  // 16 channels, frozen
       quantizer_fit(&q, w, w_n, QUANT_INIT_MAX, -1, &e);                // naive PTQ ranges
       Tensor *wq = t_fake_quant(c, w_tensor, &q, 0);                   // on the tape

   Limitations: bits 2..8 (integers fit a byte); channel-wise means dim 0 only.
*/
#ifndef EFFDM_QUANTIZER_H
#define EFFDM_QUANTIZER_H

#include <stddef.h>
#include <stdint.h>

// Below this many elements the fake-quant loops (and the LoRA weight path of qlayer.c) run on
// one thread: waking OpenMP threads costs more than they save there (the rule and value of
// GEMM_OMP_MIN_WORK in autograd/ops/gemm_util.h). Results do not depend on it (fixed chunks).
#define QUANT_OMP_MIN_WORK 32768

#include "autograd/ops.h"

#define QUANT_MIN_BITS 2
#define QUANT_MAX_BITS 8
// 'mse' init: candidate ranges [min, max] * (1 - shrink i), i = 0 .. steps - 1, scored by
// mean(|x - q(x)|^p) (LAPQ's L_p norm); the reference's search is 80 / 0.01 / 2.4 (the
// defaults, QKindParams.mse_*: quant.mse_candidates / mse_shrink / mse_norm).
#define QUANT_MSE_STEPS 80
#define QUANT_MSE_SHRINK 0.01
#define QUANT_MSE_P 2.4f
#define QUANT_MSE_MAX_STEPS 1000
// 'max' init: a range narrower than this gets this Δ (the reference's warning floor).
#define QUANT_MIN_DELTA 1e-8

// One value per row of the kind table (qkind.c checks that the two stay in step).
typedef enum {
    QUANT_UNIFORM,     // uniform affine, asymmetric (qkind_uniform.c)
    QUANT_EASYQUANT,   // uniform with each channel's largest weights kept in float16 (qkind_easyquant.c)
    QUANT_NUPES,       // uniform in a power-warped domain, a learnable exponent per entry (qkind_nupes.c)
    QUANT_KIND_COUNT
} QuantKind;

typedef enum {
    QUANT_INIT_MAX,  // x_min = min(x, 0), x_max = max(x, 0), Δ = (x_max - x_min)/(2^b - 1), z = round(-x_min/Δ)
    QUANT_INIT_MSE,  // best of QUANT_MSE_STEPS shrunk [min(x), max(x)] ranges (no clipping at 0)
} QuantInit;

// Settings some kinds read (the layer copies them from the run config; zero: the kind's defaults
// do not apply, see each field). Uniform reads none.
typedef struct {
    double outlier_fraction;  // easyquant: share of each channel's weights kept unquantized (0.005)
    int fit_steps;            // easyquant: gradient steps of its range fit (100)
    double fit_lr;            // easyquant: their Adam learning rate, relative to the initial Δ (0.01)
    // The 'mse' range search of every kind that uses it (zero: the reference's 80 / 0.01 / 2.4):
    int mse_steps;            // candidates, 1..QUANT_MSE_MAX_STEPS
    double mse_shrink;        // range shrink per candidate; (mse_steps - 1) mse_shrink < 1
    double mse_p;             // the score's norm, > 0
} QKindParams;

typedef struct Quantizer {
    QuantKind kind;    // a row of the kind table (qkind.h)
    int bits;          // QUANT_MIN_BITS..QUANT_MAX_BITS: integers in [0, 2^bits - 1]
    int channel_wise;  // 1: entry c serves slice c along dim 0 of x (n = x.shape[0]); 0: one entry per call
    int n;             // number of entries
    Tensor delta;      // (n) step sizes; grad != NULL when Δ is trained
    Tensor zero;       // (n) zero points (real; integers after fitting); grad != NULL when trained
    Tensor param;      // (n * P) the kind's own learnable values, P = its n_param per entry (entry k's
                       // at k*P); data NULL when the kind has none (uniform)
    QKindParams kp;    // the kind's settings
    // The sparse side table of a kind that keeps some values unquantized (easyquant's outliers):
    // n_side positions per entry (entry k's at k*n_side, ascending, inside the entry's slice) and
    // the values decode returns there (float16-representable: the export stores them as F16).
    // Fitted with the ranges; 0 / NULL when the kind keeps none.
    int n_side;
    int32_t *side_idx;  // (n * n_side)
    float *side_val;    // (n * n_side)
} Quantizer;

// Points q at caller-owned arrays of n floats (grads may be NULL: frozen); no kind parameters
// (quantizer_setup_param adds them). Returns q.
Quantizer *quantizer_setup(Quantizer *q, QuantKind kind, int bits, int channel_wise, int n, float *delta,
                           float *zero, float *ddelta, float *dzero);
// Points q->param at caller-owned n * P floats (P = the kind's n_param; dparam may be NULL).
void quantizer_setup_param(Quantizer *q, float *param, float *dparam);
// Points q's side table at caller-owned n * n_side positions and values (n_side from
// quantizer_side_count; 0: none).
void quantizer_setup_side(Quantizer *q, int n_side, int32_t *idx, float *val);
// Side positions per entry the kind keeps for slices of slice_len values (0: none).
int quantizer_side_count(const Quantizer *q, size_t slice_len);
// The values fake(x) gives at the side positions (q->n * q->n_side floats, entry-major): what the
// export stores for x (channel-wise x of n values). Scratch of one slice; 0 or ERR_NOMEM.
int quantizer_side_values(const Quantizer *q, float *val, const float *x, size_t n);
// Largest integer level, 2^bits - 1.
int quantizer_qmax(const Quantizer *q);
// Name of a kind ("uniform"); "?" for a value outside the table.
const char *quant_kind_name(QuantKind k);

/* ---- initialisation from data ------------------------------------------------------- */
// Fits entries to x (n floats). Channel-wise: every channel c to its slice x[c*len ..
// (c+1)*len), len = n / q->n (entry ignored). Layer-wise: one (Δ, z) (and the kind's
// parameters) from all of x, written into `entry`, or into every entry when entry < 0 (a
// fresh TALSQ table).
// Returns 0, or ERR_VALUE (e says why) when n is not a multiple of the channel count, entry
// is out of range, x holds a non-finite value, or the kind is for weights only and q is
// layer-wise (ERR_NOMEM: a kind's fit scratch). Degenerate data (a constant slice, where
// every 'mse' candidate has Δ = 0) gets the 'max' fit, whose Δ is at least QUANT_MIN_DELTA.
int quantizer_fit(Quantizer *q, const float *x, size_t n, QuantInit how, int entry, Err *e);
// One uniform range from data, for a single slice (qkind_uniform.c's kernels behind quantizer_fit).
void quant_uniform_fit_max(const float *x, size_t n, int bits, float *delta, float *zero);
void quant_uniform_fit_mse(const float *x, size_t n, int bits, const QKindParams *kp, float *delta, float *zero);

/* ---- fake quantization (forward / backward on raw arrays) ---------------------------- */
// y = q(x) for n floats (y may equal x). Layer-wise quantizers use `entry`.
void quantizer_fake(const Quantizer *q, float *y, const float *x, size_t n, int entry);
// Adds the gradients of sum(q(x) * dy) into dx (n floats), ddelta and dzero (q->n floats,
// indexed as the entries); pass NULL for a gradient nobody needs. The per-entry sums run
// in double over fixed chunks, added in order: the result does not depend on threads.
void quantizer_fake_backward(const Quantizer *q, float *dx, float *ddelta, float *dzero, const float *dy,
                             const float *x, size_t n, int entry);
// The same, also adding the gradient of the kind's own parameters into dparam (q->n * P
// floats, indexed as q->param; NULL when nobody needs it).
void quantizer_fake_backward_all(const Quantizer *q, float *dx, float *ddelta, float *dzero, float *dparam,
                                 const float *dy, const float *x, size_t n, int entry);
// y = uniform q(x) over one slice with one (Δ, z) (serial; qkind_uniform.c's fake-quant kernel).
void quant_uniform_fake(float *y, const float *x, size_t n, float delta, float zero, int qmax);

/* ---- integers --------------------------------------------------------------------- */
// out[i] = the integer level of x[i] in [0, 2^b - 1], so that decoding it gives q(x[i]) for
// integer zero points (round activation zero points first, quantizer_round_zero). Uniform:
// clamp(round(round(x/Δ) + z), 0, 2^b - 1); NaN encodes as 0.
void quantizer_encode(const Quantizer *q, uint8_t *out, const float *x, size_t n, int entry);
// y[i] = the value of level in[i] (uniform: (in[i] - z) · Δ).
void quantizer_decode(const Quantizer *q, float *y, const uint8_t *in, size_t n, int entry);
// Adds the gradients of sum(decode(in) * dy) with the levels fixed into ddelta, dzero,
// dparam (indexed as the entries; NULL: not needed), summed in double per entry or fixed
// chunk, in order (uniform: d/dΔ = Σ dy (in - z)).
void quantizer_decode_backward(const Quantizer *q, float *ddelta, float *dzero, float *dparam, const float *dy,
                               const uint8_t *in, size_t n, int entry);
// Rounds every zero point to the nearest integer (half to even): what an integer kernel
// and the export use for the trained real-valued activation zero points.
void quantizer_round_zero(Quantizer *q);

/* ---- tape ops (OP_FAKE_QUANT) -------------------------------------------------------- */
// q(x) as a new per-step tensor of x's shape. Channel-wise: q->n == x.shape[0]; layer-wise:
// entry in [0, q->n) is the active table entry, the only one that receives a gradient.
// Backward adds into x, q->delta and q->zero where they require a gradient.
// NULL with c->err set (ERR_SHAPE / ERR_VALUE) on a mismatch.
Tensor *t_fake_quant(Ctx *c, Tensor *x, Quantizer *q, int entry);

#endif
