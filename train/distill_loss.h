/* distill_loss.h: the distillation loss of one step (docs/METHOD.md "Distillation loop" and
   "Measured on the shipped teacher"), on the tape.

   The student's output q and the teacher's p are batches laid out as the reference's guided
   call torch.cat([unconditional_conditioning, c]): rows [0, B) the unconditional branch
   (ε_u), rows [B, 2B) the conditional one (ε_c). The guided output is
   ε_g = ε_u + s (ε_c - ε_u), float32 as torch. Per train.loss_branches:
       guided:  L = D(q_g, p_g)                              (the reference)
       both:    L = D(q_c, p_c) + D(q_u, p_u)
       all:     L = D(q_c, p_c) + D(q_u, p_u) + D(q_g, p_g)
   with D = Σ (a - b)^2 (train.loss_reduction sum, the reference) or its mean over the
   elements of one term (mean). A single-branch batch (an unconditional model, or guidance
   scale 1 with the guided loss, where the reference makes one conditional call) is
   `single`: L = D(q, p). Only q gets gradients.
*/
#ifndef EFFDM_DISTILL_LOSS_H
#define EFFDM_DISTILL_LOSS_H

#include "autograd/ops.h"
#include "sample/ddim.h"
#include "train/train_config.h"

typedef struct {
    RcLossBranches branches;
    RcReduction reduction;
    float scale;     // guidance scale s
    int single;      // 1: q and p hold one branch of B rows (see top)
} DistillLoss;

// The step weight of DDIM schedule position index (train.step_weighting ddim): an ε error δ
// at that step moves the next sample x_{t-1} by c·δ with
//   c = sqrt(1 - ᾱ_prev - σ²) - sqrt(ᾱ_prev) sqrt(1 - ᾱ)/sqrt(ᾱ)
// (DDIMSampler's update), so the weight is c² over the mean of c² across the schedule's
// positions (mean weight 1). On the teacher's 20 steps it runs from ~0.25 (t = 51) to ~3.5
// (t = 951); the final step (t = 1, whose update barely depends on ε) gets ~0.003.
double distill_ddim_weight(const DdimSchedule *s, int index);
// ε_g into out[0..n) from p = [ε_u | ε_c] (2n floats): out = ε_u + s (ε_c - ε_u).
void distill_guided(float *out, const float *p, size_t n, float scale);
// The loss (shape (1)) of student q against teacher p (same shape: (2B, ...) or, single,
// (B, ...)). NULL with c->err set on failure.
Tensor *distill_loss(Ctx *c, const DistillLoss *L, Tensor *q, Tensor *p);

#endif
