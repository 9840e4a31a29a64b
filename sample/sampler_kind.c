/* sampler_kind.c: the sampler table and its steps: DDIMSampler.p_sample_ddim and
   PLMSSampler.p_sample_plms after the model call (ldm/models/diffusion/{ddim,plms}.py,
   a506df5). */
#include "sample/sampler_kind.h"

#include <string.h>

#include "sample/plms.h"

// DDIM: x_prev from e_t, with each image's own noise when sigma_t != 0. work: the noise.
static int ddim_step(SamplerState *st, int i, int index, const float *et) {
    (void)i;
    int noisy = st->s->sigmas[index] != 0.0f;
    if (noisy)
        for (int j = 0; j < st->N; j++) rng_normal_fill(&st->rng[j], st->work + (size_t)j * st->per, st->per);
    ddim_update(st->s, index, st->x, et, noisy ? st->work : NULL, st->x, NULL, st->n);
    return 0;
}

// PLMS (eta 0): e' from e_t and the previous e's (plms.h), x_prev = ddim_update(x, e').
// work: [x' of the first step | old[0..3) | e'].
static int plms_step(SamplerState *st, int i, int index, const float *et) {
    size_t n = st->n;
    float *xtmp = st->work, *eprime = st->work + 4 * n;
    if (st->n_old == 0) {
        if (st->old[0] == NULL)
            for (int k = 0; k < 3; k++) st->old[k] = st->work + (size_t)(k + 1) * n;
        // time_range[min(i + 1, len - 1)]: the next (lower) timestep, or t itself on the last step
        int next = index > 0 ? index - 1 : 0;
        ddim_update(st->s, index, st->x, et, NULL, xtmp, NULL, n);
        const float *en = st->eval(st, xtmp, i + 1 < st->s->n ? i + 1 : i, next);
        if (!en) return ERR_INTERNAL;
        plms_first(eprime, et, en, n);
    } else {
        plms_combine(eprime, et, (const float *const *)st->old, st->n_old, n);
    }
    ddim_update(st->s, index, st->x, eprime, NULL, st->x, NULL, n);
    // old_eps.append(e_t); if len(old_eps) >= 4: old_eps.pop(0)
    if (st->n_old == 3) {
        float *oldest = st->old[0];
        st->old[0] = st->old[1];
        st->old[1] = st->old[2];
        st->old[2] = oldest;
        st->n_old = 2;
    }
    memcpy(st->old[st->n_old++], et, n * sizeof(float));
    return 0;
}

const SamplerKindDef SAMPLER_KINDS[SAMPLER_COUNT] = {
    [SAMPLER_DDIM] = {.name = "ddim", .eta_zero = 0, .work_latents = 1, .step = ddim_step},
    // PLMSSampler.make_schedule: 'ddim_eta must be 0 for PLMS'
    [SAMPLER_PLMS] = {.name = "plms", .eta_zero = 1, .work_latents = 5, .step = plms_step},
};

const char *const SAMPLER_NAMES[SAMPLER_COUNT] = {[SAMPLER_DDIM] = "ddim", [SAMPLER_PLMS] = "plms"};

const char *sampler_name(SamplerKind k) { return k >= 0 && k < SAMPLER_COUNT ? SAMPLER_KINDS[k].name : "?"; }

int sampler_needs_eta_zero(SamplerKind k) { return k >= 0 && k < SAMPLER_COUNT && SAMPLER_KINDS[k].eta_zero; }
