/* guidance_gain.c: the guidance gain of a quantized student (see guidance_gain.h). */
#include "qalora/guidance_gain.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "sample/sampler.h"

float guidance_parabola_min(const float x[3], const float y[3]) {
    double h = (double)x[1] - x[0], curv = (double)y[0] - 2.0 * y[1] + y[2];
    double mag = fabs((double)y[0]) + fabs((double)y[1]) + fabs((double)y[2]);
    if (!(curv > 1e-6 * mag)) return x[1];  // flat or concave: no interior minimum to trust
    double v = x[1] + h * ((double)y[0] - y[2]) / (2.0 * curv);
    if (v < x[0]) v = x[0];
    if (v > x[2]) v = x[2];
    return (float)v;
}

// The student's (or the teacher's) final latents of trajectories [first, first + nb).
typedef struct {
    QModel *q;
    int student;
    long done, total;  // sampler batches, for GuidanceFitOpts.on_progress
} FitHook;

static void on_eval(int step, int total, int timestep, void *user) {
    FitHook *h = user;
    (void)step, (void)total;
    qmodel_enable(h->q, h->student);
    if (h->student) qmodel_set_timestep(h->q, timestep);
}

static int run_all(Ctx *c, Ldm *m, FitHook *h, const GuidanceFitOpts *o, const int *y, float *z, size_t per, Rng *rng,
                   Err *e) {
    SamplerOpts so = {.kind = SAMPLER_DDIM, .steps = o->steps, .eta = (float)o->eta, .scale = (float)o->scale,
                      .on_eval = on_eval, .user = h};
    const int B = o->batch > 0 ? o->batch : 16;
    for (int first = 0; first < o->n_samples; first += B) {
        int nb = o->n_samples - first < B ? o->n_samples - first : B;
        for (int i = 0; i < nb; i++) {
            rng_seed(&rng[i], o->seed, (uint64_t)(first + i));
            rng_normal_fill(&rng[i], z + (size_t)(first + i) * per, per);
        }
        if (sampler_run(c, m, &so, z + (size_t)first * per, nb, y ? y + first : NULL, rng, e)) return e->code;
        if (o->on_progress) o->on_progress(++h->done, h->total, o->user);
    }
    return 0;
}

// What the grid fits share: the trajectories' labels, noise streams, the teacher's final latents
// (sampled once, both gains off) and the student's of the current grid point.
typedef struct {
    Ctx c;
    FitHook h;
    int *y;      // class-balanced real labels, or NULL (unconditional model)
    Rng *rng;    // one stream per trajectory of a sampler batch
    float *zt, *zs;
    size_t per, n;
} FitRun;

/* One grid fit on r: the student's final latents with the fitted gain `which` (0: guidance,
   1: ε) at each grid point and the other one at `other`; err(g) = mean squared difference to
   the teacher's; the gain is the parabola's vertex at the best point. */
static int fit_grid(FitRun *r, Ldm *m, const GuidanceFitOpts *o, int which, float other, const float *grid,
                    int n_grid, GuidanceFit *fit, Err *e) {
    memset(fit, 0, sizeof *fit);
    int best = 0;
    for (int k = 0; k < n_grid; k++) {
        m->guidance_gain = which ? other : grid[k];
        m->eps_gain = which ? grid[k] : 0;
        if (run_all(&r->c, m, &r->h, o, r->y, r->zs, r->per, r->rng, e)) return e->code;
        double sq = 0;
        for (size_t i = 0; i < r->n; i++) sq += ((double)r->zs[i] - r->zt[i]) * ((double)r->zs[i] - r->zt[i]);
        fit->grid[k] = grid[k];
        fit->err[k] = (float)(sq / (double)r->n);
        fit->n_grid = k + 1;
        if (fit->err[k] < fit->err[best]) best = k;
    }
    if (best == 0 || best == fit->n_grid - 1)
        fit->gain = fit->grid[best];
    else
        fit->gain = guidance_parabola_min(fit->grid + best - 1, fit->err + best - 1);
    return 0;
}

int gain_fit(QModel *q, Ldm *m, const GuidanceFitOpts *o, GuidanceFit *guidance, GuidanceFit *eps, Err *e) {
    if (guidance && (!ldm_is_class_conditional(m) || ldm_n_classes(m) < 2))
        return err_set(e, ERR_VALUE, "guidance gain: the model is not class-conditional");
    if (!guidance && !eps) return 0;
    float ggrid[8], egrid[EPS_GAIN_GRID];
    for (int k = 0; k < 8; k++) ggrid[k] = 0.9f + 0.1f * (float)k;
    for (int k = 0; k < EPS_GAIN_GRID; k++) egrid[k] = 0.985f + 0.005f * (float)k;
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    const int B = o->batch > 0 ? o->batch : 16, cond = ldm_is_class_conditional(m);
    const int uncond = cond ? ldm_uncond_label(m) : 0, n_real = cond ? ldm_n_classes(m) - 1 : 0;
    FitRun r = {.per = (size_t)C * H * W};
    r.n = (size_t)o->n_samples * r.per;
    r.zt = malloc(r.n * sizeof(float));
    r.zs = malloc(r.n * sizeof(float));
    r.y = cond ? malloc((size_t)o->n_samples * sizeof(int)) : NULL;
    r.rng = malloc((size_t)B * sizeof(Rng));
    int rc = 0;
    if (!r.zt || !r.zs || (cond && !r.y) || !r.rng) {
        rc = err_set(e, ERR_NOMEM, "gain fit: out of memory");
        goto done;
    }
    for (int i = 0; cond && i < o->n_samples; i++) {  // class-balanced real labels, the unconditional one skipped
        int k = i % n_real;
        r.y[i] = k >= uncond ? k + 1 : k;
    }
    if ((rc = ctx_init(&r.c, (size_t)16 << 30, e))) goto done;  // address space only
    // the teacher, then each grid
    r.h = (FitHook){q, 0, 0, (1L + (guidance ? 8 : 0) + (eps ? EPS_GAIN_GRID : 0)) * ((o->n_samples + B - 1) / B)};
    if (o->on_progress) o->on_progress(0, r.h.total, o->user);
    m->guidance_gain = m->eps_gain = 0;
    if ((rc = run_all(&r.c, m, &r.h, o, r.y, r.zt, r.per, r.rng, e))) goto done;
    r.h.student = 1;
    if (guidance && (rc = fit_grid(&r, m, o, 0, 0.0f, ggrid, 8, guidance, e))) goto done;
    if (eps && (rc = fit_grid(&r, m, o, 1, guidance ? guidance->gain : 0.0f, egrid, EPS_GAIN_GRID, eps, e)))
        goto done;
done:
    m->guidance_gain = m->eps_gain = 0;
    qmodel_enable(q, 0);
    ctx_free(&r.c);
    free(r.zt);
    free(r.zs);
    free(r.y);
    free(r.rng);
    return rc;
}

int guidance_gain_fit(QModel *q, Ldm *m, const GuidanceFitOpts *o, GuidanceFit *fit, Err *e) {
    return gain_fit(q, m, o, fit, NULL, e);
}
