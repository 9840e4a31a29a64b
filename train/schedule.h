/* schedule.h: the learning-rate factor of a fine-tuning run at optimizer step s (0-based:
   the factor the (s+1)-th update uses), as the lambdas of HuggingFace transformers'
   get_{linear,cosine,constant}_schedule_with_warmup under torch LambdaLR:

       s < warmup:  s / max(1, warmup)                                       (every schedule)
       linear:      max(0, (total - s) / max(1, total - warmup))
       cosine:      p = (s - warmup) / max(1, total - warmup);  max(0, (1 + cos(pi p)) / 2)
       constant:    1

   With warmup 0, linear is exactly the EfficientDM reference's
   LambdaLR(lambda s: max(0, (total - s) / total)). Computed in double, as Python does;
   every group's learning rate is its base rate times this factor.

       double f = lr_schedule_factor(RC_SCHED_LINEAR, 0, epochs * steps, opt.step);
*/
#ifndef EFFDM_SCHEDULE_H
#define EFFDM_SCHEDULE_H

#include <stdint.h>

#include "train/train_config.h"

// Factor in [0, 1] at step s of a run of `total` optimizer steps with `warmup` warm-up steps.
double lr_schedule_factor(RcSchedule kind, int64_t warmup, int64_t total, int64_t s);

#endif
