/* ldm_schedule.h: the diffusion noise schedule of a CompVis DDPM / LatentDiffusion, in
   float64 as upstream computes it (ldm/modules/diffusionmodules/util.py make_beta_schedule,
   ldm/models/diffusion/ddpm.py DDPM.register_schedule, a506df5), to be rounded to float32
   where upstream registers its float32 buffers.

       double betas[1000], acp[1000];
       if (ldm_make_beta_schedule(LDM_BETA_LINEAR, 1000, 0.0015, 0.0195, 8e-3, betas, &e)) ...;
       ldm_alphas_cumprod(betas, 1000, acp);     // then (float)acp[i] == the 'alphas_cumprod' buffer
*/
#ifndef EFFDM_LDM_SCHEDULE_H
#define EFFDM_LDM_SCHEDULE_H

#include "models/ldm_config.h"

// make_beta_schedule(schedule, T, linear_start, linear_end, cosine_s) into betas[0..T):
//   linear:      torch.linspace(ls ** 0.5, le ** 0.5, T, float64) ** 2
//   cosine:      1 - a[1:] / a[:-1] with a = cos((arange(T + 1) / T + s) / (1 + s) * pi / 2) ** 2 (a /= a[0]),
//                clipped to [0, 0.999]
//   sqrt_linear: torch.linspace(ls, le, T)
//   sqrt:        torch.linspace(ls, le, T) ** 0.5
// 0, or ERR_VALUE when T < 1 or a value is not finite.
int ldm_make_beta_schedule(LdmBetaSchedule s, int T, double linear_start, double linear_end, double cosine_s,
                           double *betas, Err *e);
// np.cumprod(1 - betas) (sequential product in float64) into acp[0..T).
void ldm_alphas_cumprod(const double *betas, int T, double *acp);
// torch.linspace(start, end, n, dtype=float64) element i (torch's CPU kernel: the first half
// counts up from start, the second half down from end).
double ldm_linspace_at(double start, double end, int n, int i);

#endif
