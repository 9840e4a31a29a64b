/* plms.h: the eps combination of CompVis ldm/models/diffusion/plms.py PLMSSampler.p_sample_plms
   (a506df5). The schedule and the x update are DDIM's (ddim.h) with eta = 0.

   Step i of a run, with old = the model outputs e_t of the previous steps (newest last, at most 3):
   - no old (first step): pseudo improved Euler: x' = ddim_update(x, e_t); e_next = model(x', t_next);
     e' = (e_t + e_next) / 2, where t_next is the next step's timestep (the same t on a 1-step run);
   - 1 old: e' = (3 e_t - old[-1]) / 2
   - 2 old: e' = (23 e_t - 16 old[-1] + 5 old[-2]) / 12
   - 3 old: e' = (55 e_t - 59 old[-1] + 37 old[-2] - 9 old[-3]) / 24
   then x_prev = ddim_update(x, e'), and e_t (not e') joins old.
*/
#ifndef EFFDM_PLMS_H
#define EFFDM_PLMS_H

#include <stddef.h>

// e' for n_old = 1, 2 or 3 (old[n_old - 1] is the newest), float32 in upstream's operation order.
void plms_combine(float *e_prime, const float *e_t, const float *const *old, int n_old, size_t n);
// e' = (e_t + e_next) / 2 (the first step).
void plms_first(float *e_prime, const float *e_t, const float *e_next, size_t n);

#endif
