/* sampler_kind.h: the sampler table. A sampler kind is a name (shared by `effdm sample
   --sampler` and the run config's sample.sampler), its constraints, the latent-sized work
   buffers it keeps across steps and one step function; sampler_run (sampler.c) owns the loop
   (schedule, guided eps, hooks, the finite check) and calls the kind's step. A new sampler is
   one step function and one table row. Internal to sample/. */
#ifndef EFFDM_SAMPLER_KIND_H
#define EFFDM_SAMPLER_KIND_H

#include <stddef.h>

#include "sample/ddim.h"
#include "sample/sampler.h"
#include "util/err.h"
#include "util/rng.h"

// What a step sees. x: N latents (n floats, per per image), updated in place to x_{t-1}.
typedef struct SamplerState {
    const DdimSchedule *s;
    float *x;
    int N;
    size_t n, per;
    Rng *rng;          // per-image noise streams (eta > 0)
    float *work;       // work_latents * n floats, the kind's own, kept across steps
    int n_old;         // PLMS: how many previous eps are kept
    float *old[3];     // PLMS: previous eps, oldest first (buffers inside work)
    // Another guided eps at latents xe, for sampling step `step` at schedule index `index`
    // (PLMS' first step evaluates the next timestep). NULL on failure (the error is in the ctx).
    const float *(*eval)(struct SamplerState *st, const float *xe, int step, int index);
    void *eval_user;
} SamplerState;

typedef struct {
    const char *name;
    int eta_zero;      // the sampler is deterministic: eta must be 0 (upstream refuses otherwise)
    int work_latents;  // latent-sized buffers in SamplerState.work
    // Step i of a run (index: the schedule index, highest timestep first) given the guided
    // eps at x. 0 or an ERR_ code (the error is in the ctx for a failed eval).
    int (*step)(SamplerState *st, int i, int index, const float *et);
} SamplerKindDef;

extern const SamplerKindDef SAMPLER_KINDS[SAMPLER_COUNT];

#endif
