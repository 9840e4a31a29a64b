/* sampler.h: DDIM and PLMS sampling of a LatentDiffusion model (models/ldm.h) with
   classifier-free guidance, as CompVis ldm/models/diffusion/ddim.py DDIMSampler.ddim_sampling
   and plms.py PLMSSampler.plms_sampling (a506df5) run them.

       SamplerOpts o = {.kind = SAMPLER_DDIM, .steps = 50, .eta = 0, .scale = 3.0f};
       // x: N latents x_T (N, C, H, W) in, z_0 out; y: labels; rng[i]: image i's noise stream
       if (sampler_run(&ctx, m, &o, x, N, y, rng, &e)) return e.code;

   Guidance (class-conditional models, scale != 1): one UNet call on the batch doubled as
   upstream's torch.cat([unconditional_conditioning, c]) - the unconditional half first, with the
   label ldm_uncond_label(m) - then e = e_u + scale (e_c - e_u) (times m->guidance_gain when a
   quantized export set one for the step). scale == 1 makes one plain
   conditional call (upstream skips guidance then); unconditional models ignore scale.
   Parameterization: eps models are used as they are. x0 and v outputs are turned into eps
   (x0: (x / sqrt(a_t) - x0) / sqrt(1 / a_t - 1), as DDPM._predict_eps_from_xstart; v:
   sqrt(a_t) v + sqrt(1 - a_t) x, as the later Stability predict_eps_from_z_and_v) - the a506df5
   DDIMSampler feeds the raw output to the update whatever the parameterization.
   Noise (eta > 0): image i draws N(0, 1) for its (C, H, W) from rng[i] at every step, so an
   image depends on its own stream only, not on the batch it is drawn in.
   Grad mode is off during a run; the arena is released back after every step.
*/
#ifndef EFFDM_SAMPLER_H
#define EFFDM_SAMPLER_H

#include "models/ldm.h"
#include "util/rng.h"

typedef enum { SAMPLER_DDIM, SAMPLER_PLMS, SAMPLER_COUNT } SamplerKind;

typedef struct {
    SamplerKind kind;
    int steps;       // requested S; the run has ddim_timesteps(T, S) steps (S = 30 -> 31)
    float eta;       // DDIM noise; PLMS needs 0
    float scale;     // classifier-free guidance scale
    // Called before every UNet evaluation with the sampling step (0 = first, highest timestep)
    // and its DDPM timestep; PLMS' extra first-step evaluation at t_next reports step 1 (its
    // timestep's step). For models whose layers keep per-step tables (TALSQ). May be NULL.
    void (*on_eval)(int step, int total, int timestep, void *user);
    // Called after each finished step (progress). May be NULL.
    void (*on_step)(int step, int total, void *user);
    void *user;
    // Called after on_eval with the latents x (N, C, H, W) the UNet evaluation is about to
    // see (guidance doubles them: unconditional half, then conditional), for recording
    // calibration inputs. May be NULL. (Added by h/qmodel for `effdm calibrate`.)
    void (*on_input)(int step, int timestep, const float *x, int N, void *user);
    // Every step's (guided) eps times this before the update (0 or 1: unchanged). Not in
    // CompVis: a diagnosis knob - 1.01 changes 1000-sample FIDs by 2 to 27 points on the test
    // teachers (docs/RESULTS_TEACHERS.md), far more than quantization does.
    float eps_scale;
} SamplerOpts;

// Number of steps a run with `steps` requested takes on m, or -1 when steps is out of range.
int sampler_real_steps(const Ldm *m, int steps);
// Name of a sampler ("ddim", "plms"), and the names in kind order (the CLI's and the run
// config's choices come from here).
const char *sampler_name(SamplerKind k);
extern const char *const SAMPLER_NAMES[SAMPLER_COUNT];
// 1 when kind k samples deterministically only (eta must be 0: PLMS).
int sampler_needs_eta_zero(SamplerKind k);

// Guided eps for x (N, C, H, W) at DDPM timestep t for labels y (NULL for unconditional
// models), converted to eps from the model's parameterization. NULL on failure (c->err).
Tensor *sampler_eps(Ctx *c, Ldm *m, Tensor *x, int t, const int *y, float scale);

// Runs the sampler on one batch in place: x (N * C * H * W floats, latent shape of m) holds x_T
// on entry and the final latents on return. y[0..N) labels (class-conditional models) or NULL;
// rng[0..N) per-image noise streams (used when eta > 0; may be NULL for eta 0).
// 0 or an ERR_ code (e->msg says why).
int sampler_run(Ctx *c, Ldm *m, const SamplerOpts *o, float *x, int N, const int *y, Rng *rng, Err *e);

#endif
