/* sampler.c: the sampling loops of CompVis DDIMSampler.ddim_sampling / p_sample_ddim and
   PLMSSampler.plms_sampling / p_sample_plms (ldm/models/diffusion/{ddim,plms}.py, a506df5). */
#include "sample/sampler.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sample/ddim.h"
#include "sample/sampler_kind.h"

int sampler_real_steps(const Ldm *m, int steps) { return ddim_timesteps(m->T, steps, NULL, 0); }

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

// The loop's side of a run, for the kinds' extra evaluations (SamplerState.eval).
typedef struct {
    Ctx *c;
    Ldm *m;
    const SamplerOpts *o;
    const int *y;
    int shape[4];
} RunEval;

// The guided eps at x (N latents) for step `step` of the run at schedule index `index`, with
// the hooks a UNet evaluation gets and the diagnosis scale. NULL on failure (c->err).
static const float *run_eps(SamplerState *st, const float *x, int step, int index) {
    const RunEval *r = st->eval_user;
    int t = st->s->timesteps[index];
    if (r->o->on_eval) r->o->on_eval(step, st->s->n, t, r->o->user);
    if (r->o->on_input) r->o->on_input(step, t, x, st->N, r->o->user);
    Tensor *et = sampler_eps(r->c, r->m, tensor_from(r->c, (float *)x, 4, r->shape), t, r->y, r->o->scale);
    if (!et) return NULL;
    if (r->o->eps_scale > 0 && r->o->eps_scale != 1.0f)
        for (size_t k = 0; k < st->n; k++) et->data[k] *= r->o->eps_scale;
    return et->data;
}

int sampler_run(Ctx *c, Ldm *m, const SamplerOpts *o, float *x, int N, const int *y, Rng *rng, Err *e) {
    if (o->kind < 0 || o->kind >= SAMPLER_COUNT) return err_set(e, ERR_INTERNAL, "sampler_run: no sampler kind %d", (int)o->kind);
    const SamplerKindDef *kind = &SAMPLER_KINDS[o->kind];
    if (kind->eta_zero && o->eta != 0.0f)
        return err_set(e, ERR_VALUE, "%s sampling needs eta 0, found %g", kind->name, (double)o->eta);
    if (ldm_is_class_conditional(m) && !y) return err_set(e, ERR_VALUE, "class-conditional sampling needs labels");
    if (o->eta > 0 && !rng) return err_set(e, ERR_INTERNAL, "sampler_run: eta > 0 needs noise streams");
    DdimSchedule s;
    if (ddim_schedule_init(&s, m->alphas_cumprod, m->T, o->steps, o->eta, e)) return e->code;
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    size_t per = (size_t)C * H * W, n = per * (size_t)N;
    float *work = malloc((size_t)kind->work_latents * n * sizeof(float));
    if (!work) {
        ddim_schedule_free(&s);
        return err_set(e, ERR_NOMEM, "sampler: out of memory for %d latents", N);
    }
    RunEval ev = {c, m, o, y, {N, C, H, W}};
    SamplerState st = {.s = &s, .x = x, .N = N, .n = n, .per = per, .rng = rng, .work = work, .eval = run_eps,
                       .eval_user = &ev};
    int prev_grad = ctx_set_grad(c, 0);
    size_t mark0 = arena_mark(&c->arena);
    int rc = 0, total = s.n;
    for (int i = 0; i < total && !rc; i++) {
        int index = total - i - 1, t = s.timesteps[index];  // time_range = np.flip(ddim_timesteps)
        size_t mark = arena_mark(&c->arena);
        const float *et = run_eps(&st, x, i, index);
        if (!et || kind->step(&st, i, index, et)) {
            rc = c->err.code ? c->err.code : ERR_INTERNAL;
            break;
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
