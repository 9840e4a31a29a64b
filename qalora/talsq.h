/* talsq.h: the timestep side of TALSQ (temporal activation LSQ): which table entry serves
   which sampling timestep.

   Each trainable layer's activation quantizer holds one (Δ, z) per TRAINING timestep (the
   quantizer's table, quantizer.h); entry i belongs to the i-th training timestep in
   ascending order. The training timesteps are CompVis' uniform DDIM discretisation
   (ldm/modules/diffusionmodules/util.py make_ddim_timesteps('uniform')):
       c = T / S (integer division); t = range(0, T, c) + 1
   so S = 100 of T = 1000 gives 1, 11, ..., 991, and S = 30 gives 31 steps (c = 33): the
   count is that of the range, not S (talsq_ddim_uniform returns it).
   A sampler with another step count uses, for each of its timesteps, the entry of the
   nearest training timestep (ties: the smaller one). For strides of the training schedule
   (100 -> 20) that is every 5th entry, as the reference's downsample_talsq_ckpt.py takes.

       TalsqSchedule tr;  talsq_ddim_uniform(&tr, 1000, 100, &e);        // training: 100 entries
       TalsqSchedule sa;  talsq_ddim_uniform(&sa, 1000, 20, &e);         // sampling: 20 steps
       int entries[TALSQ_MAX_ENTRIES]; talsq_map(&tr, &sa, entries);     // 0, 5, 10, ..., 95
       // the sampler walks i = sa.n - 1 .. 0 and sets the model's current entry to entries[i]
*/
#ifndef EFFDM_TALSQ_H
#define EFFDM_TALSQ_H

#include "util/err.h"

#define TALSQ_MAX_ENTRIES 1000

typedef struct {
    int n;                               // number of timesteps
    int timesteps[TALSQ_MAX_ENTRIES];    // ascending
} TalsqSchedule;

// CompVis 'uniform' DDIM timesteps of `steps` steps over T training timesteps (see top).
// 0, or ERR_VALUE when steps is not in 1..T or the count exceeds TALSQ_MAX_ENTRIES.
int talsq_ddim_uniform(TalsqSchedule *s, int T, int steps, Err *e);
// Schedule from explicit ascending timesteps (a run's saved table). 0 or ERR_VALUE
// (not ascending, n outside 1..TALSQ_MAX_ENTRIES).
int talsq_from_timesteps(TalsqSchedule *s, const int *t, int n, Err *e);
// Entry of the training timestep nearest to t (ties: the smaller timestep).
int talsq_entry(const TalsqSchedule *train, int t);
// entries[i] = talsq_entry(train, sample->timesteps[i]) for every sampling timestep.
void talsq_map(const TalsqSchedule *train, const TalsqSchedule *sample, int *entries);

#endif
