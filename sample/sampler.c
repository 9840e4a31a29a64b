/* sampler.c: the sampling loops of CompVis DDIMSampler.ddim_sampling / p_sample_ddim and
   PLMSSampler.plms_sampling / p_sample_plms (ldm/models/diffusion/{ddim,plms}.py, a506df5). */
#include "sample/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sample/ddim.h"
#include "sample/plms.h"

int sampler_real_steps(const Ldm *m, int steps) { return ddim_timesteps(m->T, steps, NULL, 0); }

const char *sampler_name(SamplerKind k) { return k == SAMPLER_PLMS ? "plms" : "ddim"; }

// Model output -> eps for the x0 / v parameterizations (see sampler.h), float32.
static void to_eps(const Ldm *m, int t, const float *x, float *out, size_t n) {
    double a = (double)m->alphas_cumprod[t];
    if (m->cfg.parameterization == LDM_PARAM_X0) {
        const float sr = (float)sqrt(1.0 / a), srm1 = (float)sqrt(1.0 / a - 1.0);
        for (size_t i = 0; i < n; i++) out[i] = (sr * x[i] - out[i]) / srm1;
    } else if (m->cfg.parameterization == LDM_PARAM_V) {
        const float sa = (float)sqrt(a), s1m = (float)sqrt(1.0 - a);
        for (size_t i = 0; i < n; i++) out[i] = sa * out[i] + s1m * x[i];
    }
}

Tensor *sampler_eps(Ctx *c, Ldm *m, Tensor *x, int t, const int *y, float scale) {
    if (!x) return NULL;
    int N = x->shape[0];
    CtxScope s = ctx_scope_begin(c);
    int guided = ldm_is_class_conditional(m) && scale != 1.0f;
    int B = guided ? 2 * N : N;
    float *ts = ctx_alloc(c, (size_t)B * sizeof(float));
    int *yin = ldm_is_class_conditional(m) ? ctx_alloc(c, (size_t)B * sizeof(int)) : NULL;
    if (!ts || (ldm_is_class_conditional(m) && !yin)) return NULL;
    for (int i = 0; i < B; i++) ts[i] = (float)t;
    Tensor *out;
    if (!guided) {
        if (yin) memcpy(yin, y, (size_t)N * sizeof(int));
        out = ldm_apply_model(c, m, x, ts, yin);
    } else {
        // x_in = cat([x] * 2); c_in = cat([unconditional_conditioning, c]); e_u, e_c = out.chunk(2)
        for (int i = 0; i < N; i++) {
            yin[i] = ldm_uncond_label(m);
            yin[N + i] = y[i];
        }
        Tensor *xs[2] = {x, x};
        Tensor *both = ldm_apply_model(c, m, t_concat(c, xs, 2, 0), ts, yin);
        out = both ? tensor_new(c, 4, x->shape) : NULL;
        if (out) {
            const float *eu = both->data, *ec = both->data + x->n;
            const float g = m->guidance_gain > 0 ? scale * m->guidance_gain : scale;
            for (size_t i = 0; i < x->n; i++) out->data[i] = eu[i] + g * (ec[i] - eu[i]);
        }
    }
    if (out && m->cfg.parameterization != LDM_PARAM_EPS) to_eps(m, t, x->data, out->data, out->n);
    if (out && m->eps_gain > 0 && m->eps_gain != 1.0f)
        for (size_t i = 0; i < out->n; i++) out->data[i] *= m->eps_gain;
    return ctx_scope_end(c, s, out);
}

// Fills noise (N images of per floats) from each image's own stream.
static void draw_noise(Rng *rng, float *noise, int N, size_t per) {
    for (int j = 0; j < N; j++) rng_normal_fill(&rng[j], noise + (size_t)j * per, per);
}

int sampler_run(Ctx *c, Ldm *m, const SamplerOpts *o, float *x, int N, const int *y, Rng *rng, Err *e) {
    if (o->kind == SAMPLER_PLMS && o->eta != 0.0f)  // PLMSSampler.make_schedule: 'ddim_eta must be 0 for PLMS'
        return err_set(e, ERR_VALUE, "PLMS sampling needs eta 0, found %g", (double)o->eta);
    if (ldm_is_class_conditional(m) && !y) return err_set(e, ERR_VALUE, "class-conditional sampling needs labels");
    if (o->eta > 0 && !rng) return err_set(e, ERR_INTERNAL, "sampler_run: eta > 0 needs noise streams");
    DdimSchedule s;
    if (ddim_schedule_init(&s, m->alphas_cumprod, m->T, o->steps, o->eta, e)) return e->code;
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    const int shape[4] = {N, C, H, W};
    size_t per = (size_t)C * H * W, n = per * (size_t)N;
    int plms = o->kind == SAMPLER_PLMS;
    float *work = malloc((plms ? 5 : 1) * n * sizeof(float));
    if (!work) {
        ddim_schedule_free(&s);
        return err_set(e, ERR_NOMEM, "sampler: out of memory for %d latents", N);
    }
    float *noise = work;                                  // DDIM
    float *old[3] = {work + n, work + 2 * n, work + 3 * n};  // PLMS old_eps, oldest first
    float *eprime = work + 4 * n, *xtmp = work;           // PLMS (no noise: eta is 0)
    int n_old = 0;
    int prev_grad = ctx_set_grad(c, 0);
    size_t mark0 = arena_mark(&c->arena);
    int rc = 0, total = s.n;
    for (int i = 0; i < total && !rc; i++) {
        int index = total - i - 1, t = s.timesteps[index];  // time_range = np.flip(ddim_timesteps)
        size_t mark = arena_mark(&c->arena);
        if (o->on_eval) o->on_eval(i, total, t, o->user);
        if (o->on_input) o->on_input(i, t, x, N, o->user);
        Tensor *et = sampler_eps(c, m, tensor_from(c, x, 4, shape), t, y, o->scale);
        if (!et) {
            rc = c->err.code ? c->err.code : ERR_INTERNAL;
            break;
        }
        if (o->eps_scale > 0 && o->eps_scale != 1.0f)
            for (size_t k = 0; k < n; k++) et->data[k] *= o->eps_scale;
        if (!plms) {
            int noisy = s.sigmas[index] != 0.0f;
            if (noisy) draw_noise(rng, noise, N, per);
            ddim_update(&s, index, x, et->data, noisy ? noise : NULL, x, NULL, n);
        } else {
            if (n_old == 0) {
                // time_range[min(i + 1, len - 1)]: the next (lower) timestep, or t itself on the last step
                int next = index > 0 ? index - 1 : 0;
                ddim_update(&s, index, x, et->data, NULL, xtmp, NULL, n);
                if (o->on_eval) o->on_eval(i + 1 < total ? i + 1 : i, total, s.timesteps[next], o->user);
                if (o->on_input) o->on_input(i + 1 < total ? i + 1 : i, s.timesteps[next], xtmp, N, o->user);
                Tensor *en = sampler_eps(c, m, tensor_from(c, xtmp, 4, shape), s.timesteps[next], y, o->scale);
                if (!en) {
                    rc = c->err.code ? c->err.code : ERR_INTERNAL;
                    break;
                }
                if (o->eps_scale > 0 && o->eps_scale != 1.0f)
                    for (size_t k = 0; k < n; k++) en->data[k] *= o->eps_scale;
                plms_first(eprime, et->data, en->data, n);
            } else {
                plms_combine(eprime, et->data, (const float *const *)old, n_old, n);
            }
            ddim_update(&s, index, x, eprime, NULL, x, NULL, n);
            // old_eps.append(e_t); if len(old_eps) >= 4: old_eps.pop(0)
            if (n_old == 3) {
                float *oldest = old[0];
                old[0] = old[1];
                old[1] = old[2];
                old[2] = oldest;
                n_old = 2;
            }
            memcpy(old[n_old++], et->data, n * sizeof(float));
        }
        arena_release(&c->arena, mark);
        // a non-finite latent would be written as a black image and scored: stop here instead
        for (size_t k = 0; k < n; k++)
            if (!isfinite(x[k])) {
                rc = err_set(e, ERR_NAN, "sampling step %d/%d (t = %d): latent %zu of image %zu is %g", i + 1, total,
                             t, k % per, k / per, (double)x[k]);
                break;
            }
        if (rc) break;
        if (o->on_step) o->on_step(i, total, o->user);
    }
    if (rc && rc != ERR_NAN) err_set(e, rc, "%s", c->err.msg[0] ? c->err.msg : "sampling failed");
    arena_release(&c->arena, mark0);
    ctx_set_grad(c, prev_grad);
    free(work);
    ddim_schedule_free(&s);
    return rc;
}
