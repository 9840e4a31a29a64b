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
           distribution is from the teacher's (a mean shift, a variance collapse).
*/
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

static void on_eval(int step, int total, int timestep, void *user) {
    (void)step;
    (void)total;
    qmodel_set_timestep(&((Trainer *)user)->q, timestep);
}

static int on_batch(const float *images, const int *shape, const float *z, const int *labels, int first, int count,
                    void *user, Err *e) {
    (void)images, (void)shape, (void)labels;
    CheckState *s = user;
    memcpy(s->z + (size_t)first * s->tr->per, z, (size_t)count * s->tr->per * sizeof(float));
    if (s->stop && *s->stop) return err_set(e, ERR_INTERRUPTED, "stopped during the sampled validation");
    return 0;
}

// Final latents of K images of the student (student = 1) or the FP teacher into z.
static int sample_latents(Trainer *tr, int student, float *z, volatile sig_atomic_t *stop, Err *e) {
    const RcSample *s = &tr->cfg.sample;
    int K = tr->cfg.train.val_samples;
    int *y = NULL;
    if (tr->cond) {
        y = malloc((size_t)K * sizeof(int));
        if (!y) return err_set(e, ERR_NOMEM, "out of memory for %d labels", K);
        for (int i = 0; i < K; i++) {
            int v = i % tr->n_real;
            y[i] = v >= tr->uncond_label ? v + 1 : v;
        }
    }
    CheckState st = {tr, z, stop};
    GenerateOpts o = {.sampler = {.kind = s->sampler == RC_SAMPLER_PLMS ? SAMPLER_PLMS : SAMPLER_DDIM,
                                  .steps = s->steps,
                                  .eta = (float)s->eta,
                                  .scale = (float)s->scale,
                                  .on_eval = student ? on_eval : NULL,
                                  .user = tr},
                      .seed = (uint64_t)tr->cfg.train.seed + 1,
                      .batch = 16,
                      .skip_decode = 1,
                      .on_batch = on_batch,
                      .user = &st};
    qmodel_enable(&tr->q, student);
    ctx_reset(&tr->ctx);
    int rc = sample_generate(&tr->ctx, tr->m, &o, y, K, e);
    ctx_reset(&tr->ctx);
    qmodel_enable(&tr->q, 1);
    free(y);
    return rc;
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

static int stats(const float *x, int K, int D, double *mu, double *sigma, Err *e) {
    FrechetAcc a;
    int rc = frechet_acc_init(&a, D, e);
    if (!rc) rc = frechet_acc_add(&a, x, (size_t)K, e);
    if (!rc) rc = frechet_acc_finish(&a, mu, sigma, e);
    frechet_acc_free(&a);
    return rc;
}

int trainer_sample_check(Trainer *tr, volatile sig_atomic_t *stop, double *mse_out, double *fd_out, Err *e) {
    int K = tr->cfg.train.val_samples, rc = 0;
    size_t n = (size_t)K * tr->per;
    if (!tr->chk_teacher) {
        float *zt = malloc(n * sizeof(float));
        if (!zt) return err_set(e, ERR_NOMEM, "out of memory for %d validation latents", K);
        if ((rc = sample_latents(tr, 0, zt, stop, e))) {
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
    *mse_out = sum / (double)n;
    pool(zs, K, tr->C, tr->H, tr->W, f, ps);
    pool(tr->chk_teacher, K, tr->C, tr->H, tr->W, f, pt);
    if ((rc = stats(ps, K, D, mu, sg, e)) || (rc = stats(pt, K, D, mu + D, sg + (size_t)D * D, e))) goto done;
    rc = frechet_distance(mu, sg, mu + D, sg + (size_t)D * D, D, fd_out, NULL, e);
done:
    free(zs);
    free(ps);
    free(pt);
    free(mu);
    free(sg);
    return rc;
}
