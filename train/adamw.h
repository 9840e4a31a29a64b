/* adamw.h: AdamW over one flat gradient buffer, with parameter groups and a linear
   learning-rate decay, exactly as torch.optim.AdamW (foreach=False, amsgrad=False) with
   torch.optim.lr_scheduler.LambdaLR(lambda s: max(0, (total - s) / total)).

   Every trainable tensor is a slot: its data (anywhere), its gradient at `off` in the
   flat gradient buffer, and its moments at the same `off` in the flat m / v buffers, so
   the state to checkpoint (or to all-reduce, for data-parallel training) is three
   arrays. Two slots may share one data array (the reference's Δ_w, used by the base
   weight and by the quantizer, gets one update per slot).

       AdamW o; adamw_init(&o, n_floats_total, n_groups, &e);
       adamw_group(&o, 0, lr_lora, 0.9f, 0.999f, 1e-8f, 0.01f);
       adamw_add_slot(&o, 0, tensor.data, tensor_numel, &off);   // gradient lives at o.grad + off
       ... backward fills o.grad ...
       adamw_step(&o);              // one update of every slot, then the schedule advances
       adamw_zero_grad(&o);
*/
#ifndef EFFDM_ADAMW_H
#define EFFDM_ADAMW_H

#include <stddef.h>
#include <stdint.h>

#include "util/err.h"

typedef struct {
    double lr;            // base learning rate (before the schedule)
    double beta1, beta2, eps, weight_decay;  // doubles, as torch's Python-float hyper-parameters
} AdamWGroup;

typedef struct {
    float *data;          // the parameter values (not owned)
    size_t off;           // offset of this slot in grad / m / v
    size_t n;
    int group;
} AdamWSlot;

typedef struct {
    float *grad, *m, *v;  // flat buffers of `capacity` floats (owned)
    size_t capacity, used;
    AdamWGroup *groups;
    int n_groups;
    AdamWSlot *slots;
    int n_slots, cap_slots;
    int64_t step;         // optimizer steps taken (PyTorch's per-parameter `step`, shared)
    int64_t total_steps;  // schedule length: lr factor = max(0, (total - step) / total); <= 0: constant lr
} AdamW;

// Allocates flat buffers for `capacity` floats (zeroed) and n_groups groups. 0 or ERR_NOMEM.
int adamw_init(AdamW *o, size_t capacity, int n_groups, Err *e);
void adamw_free(AdamW *o);
// Sets the hyper-parameters of group g.
void adamw_group(AdamW *o, int g, double lr, double beta1, double beta2, double eps, double weight_decay);
// Registers n floats at data as a slot of group g; *off receives its offset in the flat
// buffers (its gradient is o->grad + *off). 0 or ERR_NOMEM when capacity is exceeded.
int adamw_add_slot(AdamW *o, int g, float *data, size_t n, size_t *off, Err *e);
// Learning-rate factor of the schedule at the current step.
double adamw_lr_factor(const AdamW *o);
// One AdamW update of every slot in registration order, then step += 1.
void adamw_step(AdamW *o);
// Zeroes the flat gradient buffer.
void adamw_zero_grad(AdamW *o);

#endif
