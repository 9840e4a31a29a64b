/* ddim.c: CompVis DDIMSampler.make_schedule (make_ddim_timesteps, make_ddim_sampling_parameters)
   and the update of p_sample_ddim (ldm/models/diffusion/ddim.py, a506df5). */
#include "sample/ddim.h"

// Element loops shorter than this run on one thread: waking OpenMP costs more than they take.
#define SAMPLE_OMP_MIN_WORK 32768

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util/par.h"

int ddim_timesteps(int T, int S, int *out, int cap) {
    if (S < 1 || S > T) return -1;
    int c = T / S;  // num_ddpm_timesteps // num_ddim_timesteps
    int n = 0;
    for (int t = 0; t < T; t += c) {
        if (t + 1 >= T) return -1;  // steps_out = ddim_timesteps + 1 must index alphas_cumprod
        if (out && n < cap) out[n] = t + 1;
        n++;
    }
    return n;
}

int ddim_check_steps(int T, int S, int *count, Err *e) {
    int n = ddim_timesteps(T, S, NULL, 0);
    if (n >= 1) {
        if (count) *count = n;
        return 0;
    }
    if (S < 1 || S > T)
        return err_set(e, ERR_VALUE, "steps %d: expected 1 to %d DDIM steps for %d DDPM timesteps", S, T / 2, T);
    int lo = S - 1, hi = S + 1;
    while (lo >= 1 && ddim_timesteps(T, lo, NULL, 0) < 1) lo--;
    while (hi <= T && ddim_timesteps(T, hi, NULL, 0) < 1) hi++;
    int c = T / S, last = (T - 1) / c * c;
    char alt[64];
    if (lo >= 1 && hi <= T) snprintf(alt, sizeof alt, "counts that work are %d and %d", lo, hi);
    else snprintf(alt, sizeof alt, "count that works is %d", lo >= 1 ? lo : hi);
    return err_set(e, ERR_VALUE, "steps %d: CompVis' 'uniform' DDIM timesteps range(0, %d, %d) + 1 end at %d, past the "
                   "last of %d DDPM timesteps (upstream raises IndexError); the nearest %s",
                   S, T, c, last + 1, T, alt);
}

void ddim_schedule_free(DdimSchedule *s) {
    free(s->timesteps);
    free(s->alphas);
    free(s->alphas_prev);
    free(s->sigmas);
    free(s->sqrt_one_minus_alphas);
    memset(s, 0, sizeof *s);
}

int ddim_schedule_init(DdimSchedule *s, const float *acp, int T, int S, double eta, Err *e) {
    memset(s, 0, sizeof *s);
    int n;
    if (ddim_check_steps(T, S, &n, e)) return e->code;
    // eta > 1 makes 1 - alpha_prev - sigma^2 negative under dir_xt's square root at some step:
    // CompVis gives NaN latents there, so such an eta is an input error, not a sampler mode
    if (!(eta >= 0 && eta <= 1)) return err_set(e, ERR_VALUE, "DDIM eta: expected 0..1, found %g", eta);
    s->n = n;
    s->timesteps = malloc((size_t)n * sizeof(int));
    s->alphas = malloc((size_t)n * sizeof(float));
    s->alphas_prev = malloc((size_t)n * sizeof(float));
    s->sigmas = malloc((size_t)n * sizeof(float));
    s->sqrt_one_minus_alphas = malloc((size_t)n * sizeof(float));
    if (!s->timesteps || !s->alphas || !s->alphas_prev || !s->sigmas || !s->sqrt_one_minus_alphas) {
        ddim_schedule_free(s);
        return err_set(e, ERR_NOMEM, "DDIM schedule: out of memory");
    }
    ddim_timesteps(T, S, s->timesteps, n);
    for (int i = 0; i < n; i++) {
        float a = acp[s->timesteps[i]];
        float ap = i == 0 ? acp[0] : acp[s->timesteps[i - 1]];
        s->alphas[i] = a;
        s->alphas_prev[i] = ap;
        // (1 - alphas_prev) is float64 numpy, (1 - alphas) a float32 tensor, the rest promotes to float64
        float one_minus_a = 1.0f - a;
        double sig = eta * sqrt((1.0 - (double)ap) / (double)one_minus_a * (1.0 - (double)a / (double)ap));
        s->sigmas[i] = (float)sig;
        s->sqrt_one_minus_alphas[i] = sqrtf(one_minus_a);  // np.sqrt(1. - ddim_alphas) on float32
    }
    return 0;
}

void ddim_update(const DdimSchedule *s, int index, const float *x, const float *e, const float *noise, float *x_prev,
                 float *pred_x0, size_t n) {
    // torch.full((b, 1, 1, 1), value) -> float32 scalars; every expression below is float32 as upstream
    const float a_t = s->alphas[index], a_prev = s->alphas_prev[index], sigma = s->sigmas[index];
    const float sq1m = s->sqrt_one_minus_alphas[index];
    const float sqrt_at = sqrtf(a_t), sqrt_aprev = sqrtf(a_prev);
    const float dir_coef = sqrtf((1.0f - a_prev) - sigma * sigma);
    PAR_FOR(schedule(static), n >= SAMPLE_OMP_MIN_WORK,
    for (size_t i = 0; i < n; i++) {
        float p = (x[i] - sq1m * e[i]) / sqrt_at;
        float dir = dir_coef * e[i];
        float xp = sqrt_aprev * p + dir;
        if (noise) xp += sigma * noise[i];
        if (pred_x0) pred_x0[i] = p;
        x_prev[i] = xp;
    });
}
