#include "train/schedule.h"

#include <math.h>

static double max1(int64_t v) { return v > 1 ? (double)v : 1.0; }

double lr_schedule_factor(RcSchedule kind, int64_t warmup, int64_t total, int64_t s) {
    if (s < warmup) return (double)s / max1(warmup);
    double f;
    switch (kind) {
    case RC_SCHED_LINEAR:
        f = (double)(total - s) / max1(total - warmup);
        break;
    case RC_SCHED_COSINE: {
        double p = (double)(s - warmup) / max1(total - warmup);
        if (p > 1) p = 1;  // past the end: stay at 0 (transformers' cosine would rise again)
        f = 0.5 * (1.0 + cos(M_PI * p));
        break;
    }
    default:
        f = 1.0;
        break;
    }
    return f > 0 ? f : 0.0;
}
