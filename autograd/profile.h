/* profile.h: where a forward/backward spends its time, per op kind and per model block
   (effdm finetune --profile, effdm sample --profile, bench/finetune).

       Profile p; prof_init(&p);
       ctx.prof = &p;                       // off again: ctx.prof = NULL
       ... forwards, tape_backward ...
       char buf[8192]; prof_format(&p, wall_seconds, buf, sizeof buf); fputs(buf, stdout);

   Every public op (ops.h, and qalora's fake-quant ops) times its forward between
   prof_begin and prof_end; tape_backward times each node's backward. Only the outermost op
   is timed (t_conv2d calling t_conv2d_ex counts once). Each time is also added to the
   block open when the op ran (a backward node to the block its forward ran in): models
   open blocks with prof_block_begin / prof_block_end ("input_blocks.3"); time outside any
   block goes to block 0, "(outside blocks)". So the per-kind and per-block totals are two
   partitions of one total. FLOPs are counted for the GEMM ops (conv2d, linear, matmul,
   attention): forward as in bench/ops, backward twice the forward of the nodes that ran,
   per op kind and per block (so a pruned model's saving shows where it was made).
   Cost when off: one pointer test per op and per backward node.
   Limitations: single-threaded callers only (ops are called from one thread; OpenMP runs
   inside them); at most PROF_MAX_BLOCKS distinct block names (more go to block 0).
*/
#ifndef EFFDM_PROFILE_H
#define EFFDM_PROFILE_H

#include <stddef.h>
#include <time.h>

#include "autograd/ops.h"

#define PROF_MAX_BLOCKS 96
#define PROF_NAME_MAX 32

typedef struct Profile {
    double sec[2][OP_COUNT];       // [0] forward, [1] backward, seconds per op kind
    long count[2][OP_COUNT];       // calls (forward) / nodes run (backward)
    double flops[2][OP_COUNT];     // GEMM ops only
    int n_blocks;                  // block 0 is "(outside blocks)"
    char block_name[PROF_MAX_BLOCKS][PROF_NAME_MAX];
    double block_sec[PROF_MAX_BLOCKS][2];
    double block_flops[PROF_MAX_BLOCKS][2];  // GEMM FLOPs per block: the model's cost per part
    long block_count[PROF_MAX_BLOCKS][2];
    int cur_block;                 // block open now
    int depth;                     // ops in progress (only depth 0 -> 1 is timed)
} Profile;

typedef struct {
    double t0;                     // < 0: not timed (profiler off, or a nested op)
    TapeNode *last;                // tape head before the op, to find the node it recorded
} ProfMark;

// Zeroes p and names block 0.
void prof_init(Profile *p);
// Monotonic seconds.
static inline double prof_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
// Slow path of prof_begin.
ProfMark prof_begin_on(Ctx *c);
// Start of an op's forward: returns a mark for prof_end.
static inline ProfMark prof_begin(Ctx *c) {
    if (!c->prof) return (ProfMark){-1.0, NULL};
    return prof_begin_on(c);
}
// Slow path of prof_end.
void prof_end_on(Ctx *c, ProfMark m, int op, double flops);
// End of the op's forward: adds the time (and flops, 0 for non-GEMM ops) to op kind `op`
// and the open block; tags the node the op recorded, if any, for its backward. Inline, so
// a caller's flops expression is only evaluated when profiling.
static inline void prof_end(Ctx *c, ProfMark m, int op, double flops) {
    if (c->prof) prof_end_on(c, m, op, flops);
}
// The body of every op's public entry point (the one place ops are timed): runs `call`, the
// op's forward returning a Tensor *, as op kind `op` and returns its result. `flops` may use
// `out` (NULL when the op failed) and is evaluated only when profiling.
//     Tensor *t_sum(Ctx *c, Tensor *x) { PROF_OP(c, OP_SUM, sum_op(c, x), 0.0); }
#define PROF_OP(c, op, call, flops)                                    \
    do {                                                               \
        ProfMark prof_mark_ = prof_begin(c);                           \
        Tensor *out = (call);                                          \
        if ((c)->prof) prof_end_on((c), prof_mark_, (op), (flops));    \
        return out;                                                    \
    } while (0)
// Adds one backward node's time (tape_backward calls it).
void prof_add_backward(Profile *p, const TapeNode *nd, double sec);
// Opens block "name.index" (index < 0: "name"); returns the block that was open, for
// prof_block_end. No effect (returns 0) when c->prof is NULL.
int prof_block_begin(Ctx *c, const char *name, int index);
// Closes the block opened last: `prev` is what prof_block_begin returned.
static inline void prof_block_end(Ctx *c, int prev) {
    if (c->prof) c->prof->cur_block = prev;
}
// Total seconds of all timed ops (forward + backward).
double prof_total(const Profile *p);
// Text report: per op kind (fwd / bwd seconds, calls, % of total, GFLOP/s of GEMM ops),
// then per block (seconds, op calls, %), then the total and, when wall > 0, the time
// outside ops (optimizer, samplers, I/O...). Truncated to cap. Returns the length wanted.
int prof_format(const Profile *p, double wall, char *buf, size_t cap);

#endif
