/* sample_check.c: the sampled validation of a run (train.val_samples; see trainer_impl.h).

   Why: the ε validation error (validate.c) scores single denoising steps on calibration
   inputs. On a teacher of another shape than the shipped one, the effdm recipe lowered it
   (and the same-noise pixel error) while the sampled distribution moved away from the
   teacher's (FID up, class accuracy down): what the user sees is the end of a trajectory,
   so the run also checks that. K = train.val_samples images are sampled with the sample.*
   protocol (the one the user samples with) from fixed streams (seed train.seed + 1 as in
   sample/generate.h: image i draws from stream i), class-balanced over the real classes,
   by the FP teacher once (kept) and by the student at every validation. Measures on the
   final latents z (K, C, H, W):
     mse   mean over elements of (z_student - z_teacher)^2: same-noise closeness;
     fd    Fréchet distance between the two sets of K latents (eval/frechet.h), each latent
           average-pooled to at most CHECK_MAX_DIM features: how far the student's sample
           distribution is from the teacher's (a mean shift, a variance collapse);
     real  the teacher's denoising error on the student's samples: each z is noised to
           t = T/50 and T/10 with fixed noise n, and real = mean (ε_teacher(x_t, t, y) - n)^2,
           relative to the same on the teacher's own samples (1: as plausible to the teacher
           as its own samples). Samples off the teacher's data manifold denoise worse (it is a
           term of the teacher's ELBO of the sample). Measured (docs/RESULTS.md, test teachers):
           it orders FP, naive PTQ and fine-tuned students as their judge precision does, where
           mse and fd did not see the fine-tuned student's loss of precision.
*/
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "eval/frechet.h"
#include "sample/generate.h"
#include "train/trainer_impl.h"

enum { CHECK_MAX_DIM = 256 };

typedef struct {
    Trainer *tr;
    float *z;  // (K, C, H, W)
    volatile sig_atomic_t *stop;
} CheckState;

static int on_batch(const float *images, const int *shape, const float *z, const int *labels, int first, int count,
                    void *user, Err *e) {
    (void)images, (void)shape, (void)labels;
    CheckState *s = user;
    memcpy(s->z + (size_t)first * s->tr->per, z, (size_t)count * s->tr->per * sizeof(float));
    if (s->stop && *s->stop) return err_set(e, ERR_INTERRUPTED, "stopped while sampling");
    return 0;
}

int trainer_real_label(const Trainer *tr, int i) {
    if (!tr->cond) return 0;
    int v = i % tr->n_real;
    return v >= tr->uncond_label ? v + 1 : v;
}

int trainer_sample_latents(Trainer *tr, int student, const SamplerOpts *so, uint64_t seed, int n, float *z,
                           volatile sig_atomic_t *stop, Err *e) {
    int *y = NULL;
    if (tr->cond) {
        y = malloc((size_t)n * sizeof(int));
        if (!y) return err_set(e, ERR_NOMEM, "out of memory for %d labels", n);
        for (int i = 0; i < n; i++) y[i] = trainer_real_label(tr, i);
    }
    CheckState st = {tr, z, stop};
    GenerateOpts o = {.sampler = *so, .seed = seed, .batch = 16, .skip_decode = 1, .on_batch = on_batch, .user = &st};
    o.sampler.on_eval = student ? trainer_sampler_on_eval : NULL;
    o.sampler.user = tr;
    qmodel_enable(&tr->q, student);
    ctx_reset(&tr->ctx);
    int rc = sample_generate(&tr->ctx, tr->m, &o, y, n, e);
    ctx_reset(&tr->ctx);
    qmodel_enable(&tr->q, 1);
    free(y);
    return rc;
}

// Final latents of the K images of the sampled validation (sample.* protocol, streams of
// train.seed + 1), by the student (student = 1) or the FP teacher, into z.
static int sample_latents(Trainer *tr, int student, float *z, volatile sig_atomic_t *stop, Err *e) {
    const RcSample *s = &tr->cfg.sample;
    SamplerOpts so = {.kind = s->sampler, .steps = s->steps, .eta = (float)s->eta, .scale = (float)s->scale};
    return trainer_sample_latents(tr, student, &so, (uint64_t)tr->cfg.train.seed + 1, tr->cfg.train.val_samples, z,
                                  stop, e);
}

// Average-pools each latent (C, H, W) by f x f so that C (H/f) (W/f) <= CHECK_MAX_DIM.
static int pool_factor(int C, int H, int W) {
    int f = 1;
    while ((size_t)C * (size_t)(H / f) * (size_t)(W / f) > CHECK_MAX_DIM && H / f > 1 && W / f > 1) f *= 2;
    return f;
}

static void pool(const float *z, int K, int C, int H, int W, int f, float *out) {
    int h = H / f, w = W / f;
    for (int k = 0; k < K; k++)
        for (int c = 0; c < C; c++)
            for (int i = 0; i < h; i++)
                for (int j = 0; j < w; j++) {
                    double s = 0;
                    for (int a = 0; a < f; a++)
                        for (int b = 0; b < f; b++)
                            s += z[(((size_t)k * C + c) * H + (size_t)i * f + a) * W + (size_t)j * f + b];
                    out[(((size_t)k * C + c) * h + i) * w + j] = (float)(s / (f * f));
                }
}

// Mean squared error of the teacher's ε on K latents z noised to two small timesteps.
static int teacher_denoise_error(Trainer *tr, const float *z, double *out, Err *e) {
    const int K = tr->cfg.train.val_samples, T = tr->m->T, bs = 16;
    const int ts[2] = {T / 50, T / 10};
    const float *acp = tr->m->alphas_cumprod;
    float *x = malloc((size_t)bs * tr->per * sizeof(float)), *n = malloc((size_t)bs * tr->per * sizeof(float));
    float tin[16];
    int y[16];
    if (!x || !n) {
        free(x);
        free(n);
        return err_set(e, ERR_NOMEM, "out of memory for the sampled validation");
    }
    Ctx *c = &tr->ctx;
    int prev = ctx_set_grad(c, 0), rc = 0;
    qmodel_enable(&tr->q, 0);
    double sum = 0;
    for (int k = 0; k < 2 && !rc; k++) {
        const float a = acp[ts[k]], sa = sqrtf(a), sb = sqrtf(1.0f - a);
        for (int first = 0; first < K && !rc; first += bs) {
            int cnt = K - first < bs ? K - first : bs;
            for (int i = 0; i < cnt; i++) {
                Rng r;
                rng_seed(&r, (uint64_t)tr->cfg.train.seed + 2, (uint64_t)(first + i) * 2 + (uint64_t)k);
                float *ni = n + (size_t)i * tr->per, *xi = x + (size_t)i * tr->per;
                const float *zi = z + (size_t)(first + i) * tr->per;
                rng_normal_fill(&r, ni, tr->per);
                for (size_t j = 0; j < tr->per; j++) xi[j] = sa * zi[j] + sb * ni[j];
                tin[i] = (float)ts[k];
                y[i] = 0;
                if (tr->cond) {  // unconditional models have no real class (n_real 0)
                    int v = (first + i) % tr->n_real;
                    y[i] = v >= tr->uncond_label ? v + 1 : v;
                }
            }
            ctx_reset(c);
            const int shape[4] = {cnt, tr->C, tr->H, tr->W};
            Tensor *p = ldm_apply_model(c, tr->m, tensor_from(c, x, 4, shape), tin, tr->cond ? y : NULL);
            if (!p) {
                rc = err_set(e, c->err.code ? c->err.code : ERR_INTERNAL, "sampled validation: %s", c->err.msg);
                break;
            }
            for (size_t j = 0; j < (size_t)cnt * tr->per; j++) {
                double d = (double)p->data[j] - (double)n[j];
                sum += d * d;
            }
        }
    }
    ctx_reset(c);
    ctx_set_grad(c, prev);
    qmodel_enable(&tr->q, 1);
    free(x);
    free(n);
    if (!rc) *out = sum / (2.0 * (double)K * (double)tr->per);
    return rc;
}

static int stats(const float *x, int K, int D, double *mu, double *sigma, Err *e) {
    FrechetAcc a;
    int rc = frechet_acc_init(&a, D, e);
    if (!rc) rc = frechet_acc_add(&a, x, (size_t)K, e);
    if (!rc) rc = frechet_acc_finish(&a, mu, sigma, e);
    frechet_acc_free(&a);
    return rc;
}

int trainer_sample_check(Trainer *tr, volatile sig_atomic_t *stop, SampleCheck *out, Err *e) {
    int K = tr->cfg.train.val_samples, rc = 0;
    size_t n = (size_t)K * tr->per;
    if (!tr->chk_teacher) {
        float *zt = malloc(n * sizeof(float));
        if (!zt) return err_set(e, ERR_NOMEM, "out of memory for %d validation latents", K);
        if ((rc = sample_latents(tr, 0, zt, stop, e)) || (rc = teacher_denoise_error(tr, zt, &tr->chk_teacher_real, e))) {
            free(zt);
            return rc;
        }
        tr->chk_teacher = zt;
    }
    float *zs = malloc(n * sizeof(float));
    int f = pool_factor(tr->C, tr->H, tr->W);
    int D = tr->C * (tr->H / f) * (tr->W / f);
    float *ps = malloc((size_t)K * D * sizeof(float)), *pt = malloc((size_t)K * D * sizeof(float));
    double *mu = malloc(2 * (size_t)D * sizeof(double)), *sg = malloc(2 * (size_t)D * D * sizeof(double));
    if (!zs || !ps || !pt || !mu || !sg) {
        rc = err_set(e, ERR_NOMEM, "out of memory for the sampled validation");
        goto done;
    }
    if ((rc = sample_latents(tr, 1, zs, stop, e))) goto done;
    double sum = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)zs[i] - (double)tr->chk_teacher[i];
        sum += d * d;
    }
    out->mse = sum / (double)n;
    double real;
    if ((rc = teacher_denoise_error(tr, zs, &real, e))) goto done;
    out->real = tr->chk_teacher_real > 0 ? real / tr->chk_teacher_real : NAN;
    pool(zs, K, tr->C, tr->H, tr->W, f, ps);
    pool(tr->chk_teacher, K, tr->C, tr->H, tr->W, f, pt);
    if ((rc = stats(ps, K, D, mu, sg, e)) || (rc = stats(pt, K, D, mu + D, sg + (size_t)D * D, e))) goto done;
    rc = frechet_distance(mu, sg, mu + D, sg + (size_t)D * D, D, &out->fd, NULL, e);
done:
    free(zs);
    free(ps);
    free(pt);
    free(mu);
    free(sg);
    return rc;
}
