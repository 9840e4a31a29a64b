/* ddim.h: the DDIM schedule and update of CompVis ldm/models/diffusion/ddim.py DDIMSampler
   (a506df5) with ldm/modules/diffusionmodules/util.py make_ddim_timesteps ('uniform') and
   make_ddim_sampling_parameters. PLMS (plms.h) uses the same schedule and update.

       DdimSchedule s;
       if (ddim_schedule_init(&s, m->alphas_cumprod, m->T, 50, 0.0, &e)) return e.code;
       // s.n == 50 here; --steps 30 gives 31 (range(0, 1000, 33) has 31 entries)
       for (int i = 0; i < s.n; i++) {
           int index = s.n - 1 - i, t = s.timesteps[index];       // sampling runs t from high to low
           ... e = eps(x, t) ...
           ddim_update(&s, index, x, e, NULL, x, NULL, n);        // in place is fine
       }
       ddim_schedule_free(&s);

   Precision follows upstream: alphas / alphas_prev are the float32 alphas_cumprod buffer values;
   sigmas are computed in float64 from them (numpy / torch float64 promotion) and rounded to
   float32 by torch.full; sqrt(1 - a) and the update itself are float32.
*/
#ifndef EFFDM_DDIM_H
#define EFFDM_DDIM_H

#include <stddef.h>

#include "util/err.h"

typedef struct {
    int n;                         // number of sampling steps (len(ddim_timesteps))
    int *timesteps;                // ascending: range(0, T, T // S) + 1
    float *alphas;                 // alphas_cumprod[timesteps]
    float *alphas_prev;            // [alphas_cumprod[0]] + alphas_cumprod[timesteps[:-1]]
    float *sigmas;                 // eta * sqrt((1 - a_prev) / (1 - a) * (1 - a / a_prev))
    float *sqrt_one_minus_alphas;  // sqrt(1 - alphas) in float32
} DdimSchedule;

// make_ddim_timesteps('uniform', S, T): c = T // S, range(0, T, c) + 1 into out[0..cap).
// Returns the count (ceil(T / c): S = 30, T = 1000 gives 31), or -1 when S < 1, S > T, or the
// last timestep T' + 1 would index past alphas_cumprod (e.g. S = T: CompVis raises IndexError).
int ddim_timesteps(int T, int S, int *out, int cap);
// ddim_timesteps' count for S, or ERR_VALUE with a message that explains the failure and names
// the nearest step counts that work (S = 3 of T = 1000: range(0, 1000, 333) + 1 ends at 1000).
int ddim_check_steps(int T, int S, int *count, Err *e);
// Builds the schedule for S requested steps over alphas_cumprod[0..T). 0 or ERR_VALUE / ERR_NOMEM.
int ddim_schedule_init(DdimSchedule *s, const float *alphas_cumprod, int T, int S, double eta, Err *e);
// Accepts a zeroed schedule.
void ddim_schedule_free(DdimSchedule *s);

// DDIMSampler.p_sample_ddim after the model call, on n floats, at schedule position index:
//   pred_x0 = (x - sqrt(1 - a_t) e) / sqrt(a_t)
//   x_prev  = sqrt(a_prev) pred_x0 + sqrt(1 - a_prev - sigma_t^2) e + sigma_t noise
// noise may be NULL when sigma_t == 0 (eta 0); pred_x0 may be NULL. x_prev may alias x.
void ddim_update(const DdimSchedule *s, int index, const float *x, const float *e, const float *noise, float *x_prev,
                 float *pred_x0, size_t n);

#endif
