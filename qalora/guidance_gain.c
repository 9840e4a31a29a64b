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

/* One grid fit: the teacher's final latents (both gains off), then the student's with the
   fitted gain `which` (0: guidance, 1: ε) at each grid point and the other one at `other`;
   err(g) = mean squared latent difference; the gain is the parabola's vertex at the best point. */
static int fit_grid(QModel *q, Ldm *m, const GuidanceFitOpts *o, int which, float other, const float *grid,
                    int n_grid, GuidanceFit *fit, Err *e) {
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    const size_t per = (size_t)C * H * W, n = (size_t)o->n_samples * per;
    const int B = o->batch > 0 ? o->batch : 16, cond = ldm_is_class_conditional(m);
    const int uncond = cond ? ldm_uncond_label(m) : 0, n_real = cond ? ldm_n_classes(m) - 1 : 0;
    float *zt = malloc(n * sizeof(float)), *zs = malloc(n * sizeof(float));
    int *y = cond ? malloc((size_t)o->n_samples * sizeof(int)) : NULL;
    Rng *rng = malloc((size_t)B * sizeof(Rng));
    Ctx c = {0};
    int rc = 0;
    if (!zt || !zs || (cond && !y) || !rng) {
        rc = err_set(e, ERR_NOMEM, "%s gain: out of memory", which ? "eps" : "guidance");
        goto done;
    }
    for (int i = 0; cond && i < o->n_samples; i++) {  // class-balanced real labels, the unconditional one skipped
        int k = i % n_real;
        y[i] = k >= uncond ? k + 1 : k;
    }
    if ((rc = ctx_init(&c, (size_t)16 << 30, e))) goto done;  // address space only
    FitHook h = {q, 0, 0, (1L + n_grid) * ((o->n_samples + B - 1) / B)};  // the teacher, then the grid
    if (o->on_progress) o->on_progress(0, h.total, o->user);
    m->guidance_gain = m->eps_gain = 0;
    if ((rc = run_all(&c, m, &h, o, y, zt, per, rng, e))) goto done;
    h.student = 1;
    memset(fit, 0, sizeof *fit);
    int best = 0;
    for (int k = 0; k < n_grid; k++) {
        m->guidance_gain = which ? other : grid[k];
        m->eps_gain = which ? grid[k] : 0;
        if ((rc = run_all(&c, m, &h, o, y, zs, per, rng, e))) goto done;
        double sq = 0;
        for (size_t i = 0; i < n; i++) sq += ((double)zs[i] - zt[i]) * ((double)zs[i] - zt[i]);
        fit->grid[k] = grid[k];
        fit->err[k] = (float)(sq / (double)n);
        fit->n_grid = k + 1;
        if (fit->err[k] < fit->err[best]) best = k;
    }
    if (best == 0 || best == fit->n_grid - 1)
        fit->gain = fit->grid[best];
    else
        fit->gain = guidance_parabola_min(fit->grid + best - 1, fit->err + best - 1);
done:
    m->guidance_gain = m->eps_gain = 0;
    qmodel_enable(q, 0);
    ctx_free(&c);
    free(zt);
    free(zs);
    free(y);
    free(rng);
    return rc;
}

int guidance_gain_fit(QModel *q, Ldm *m, const GuidanceFitOpts *o, GuidanceFit *fit, Err *e) {
    if (!ldm_is_class_conditional(m) || ldm_n_classes(m) < 2)
        return err_set(e, ERR_VALUE, "guidance gain: the model is not class-conditional");
    float grid[8];
    for (int k = 0; k < 8; k++) grid[k] = 0.9f + 0.1f * (float)k;
    return fit_grid(q, m, o, 0, 0.0f, grid, 8, fit, e);
}

int eps_gain_fit(QModel *q, Ldm *m, const GuidanceFitOpts *o, float guidance_gain, GuidanceFit *fit, Err *e) {
    float grid[EPS_GAIN_GRID];
    for (int k = 0; k < EPS_GAIN_GRID; k++) grid[k] = 0.985f + 0.005f * (float)k;
    return fit_grid(q, m, o, 1, guidance_gain, grid, EPS_GAIN_GRID, fit, e);
}
