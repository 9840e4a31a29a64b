/* prune_stats.c: the second moments of every FeedForward's hidden units over the teacher's own
   sampled trajectories (see prune.h): the inputs of each ff.net.2 are recorded by a hook on
   that layer while the teacher samples, as calibration records its inputs. */
#include <cblas.h>
#include <stdlib.h>
#include <string.h>

#include "prune/prune.h"
#include "sample/sampler.h"

// One block's accumulator, hung on its ff.net.2 layer while sampling.
typedef struct {
    int m;
    double *sum;    // (m + 1)^2, upper triangle until the end
    double *rows;   // a chunk of [h; 1] rows in double
    int cap_rows;
    double count;
} FfAcc;

#define ACC_CHUNK 256  // rows per dsyrk

static Tensor *record_forward(Ctx *c, ModelLayer *l, Tensor *x) {
    FfAcc *a = l->quant;
    const int m = a->m, ld = m + 1;
    size_t n_rows = x->n / (size_t)m;
    for (size_t r0 = 0; r0 < n_rows; r0 += ACC_CHUNK) {
        int nr = n_rows - r0 < ACC_CHUNK ? (int)(n_rows - r0) : ACC_CHUNK;
        for (int r = 0; r < nr; r++) {
            const float *h = x->data + (r0 + (size_t)r) * m;
            double *row = a->rows + (size_t)r * ld;
            for (int k = 0; k < m; k++) row[k] = h[k];
            row[m] = 1.0;
        }
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, ld, nr, 1.0, a->rows, ld, 1.0, a->sum, ld);
        a->count += nr;
    }
    // the layer itself, unhooked for the call
    l->quant_forward = NULL;
    Tensor *y = layer_forward(c, l, x);
    l->quant_forward = record_forward;
    return y;
}

int ff_moments_alloc(FfMoments *mom, int n_blocks) {
    memset(mom, 0, sizeof *mom);
    size_t n = (size_t)(n_blocks ? n_blocks : 1);
    mom->n_blocks = n_blocks;
    mom->m = calloc(n, sizeof *mom->m);
    mom->sum = calloc(n, sizeof *mom->sum);
    mom->count = calloc(n, sizeof *mom->count);
    return mom->m && mom->sum && mom->count ? 0 : -1;
}

void ff_moments_set(FfMoments *mom, int k, double **sum, double count) {
    const size_t ld = (size_t)mom->m[k] + 1;
    double *S = *sum;
    for (size_t i = 0; i < ld; i++)
        for (size_t j = 0; j < i; j++) S[i * ld + j] = S[j * ld + i];
    mom->sum[k] = S;
    mom->count[k] = count;
    *sum = NULL;
}

void ff_moments_free(FfMoments *mom) {
    for (int k = 0; mom->sum && k < mom->n_blocks; k++) free(mom->sum[k]);
    free(mom->sum);
    free(mom->m);
    free(mom->count);
    memset(mom, 0, sizeof *mom);
}

int prune_sample_teacher(Ldm *m, const PruneSampling *s, Err *e) {
    const int B = s->batch > 0 ? s->batch : 16;
    int C, H, W, rc = 0;
    ldm_latent_shape(m, &C, &H, &W);
    const size_t per = (size_t)C * H * W;
    float *z = malloc((size_t)B * per * sizeof(float));
    int *y = malloc((size_t)B * sizeof(int));
    Rng *rng = malloc((size_t)B * sizeof(Rng));
    Ctx c;
    int ctx_ok = 0;
    if (!z || !y || !rng) {
        rc = err_set(e, ERR_NOMEM, "prune: out of memory");
        goto done;
    }
    if ((rc = ctx_init(&c, (size_t)16 << 30, e))) goto done;  // address space only
    ctx_ok = 1;
    const int cond = ldm_is_class_conditional(m);
    const int uncond = cond ? ldm_uncond_label(m) : 0, n_real = cond ? ldm_n_classes(m) - 1 : 0;
    SamplerOpts so = {.kind = SAMPLER_DDIM, .steps = s->steps, .eta = 0.0f, .scale = cond ? (float)s->scale : 1.0f};
    long total = (s->n_samples + B - 1) / B, done_b = 0;
    if (s->on_progress) s->on_progress(0, total, s->user);
    for (int first = 0; first < s->n_samples; first += B) {
        int n = s->n_samples - first < B ? s->n_samples - first : B;
        for (int i = 0; i < n; i++) {
            rng_seed(&rng[i], s->seed, (uint64_t)(first + i));
            rng_normal_fill(&rng[i], z + (size_t)i * per, per);
            int k = (first + i) % (n_real > 0 ? n_real : 1);  // class-balanced real labels
            y[i] = k >= uncond ? k + 1 : k;
        }
        if ((rc = sampler_run(&c, m, &so, z, n, cond ? y : NULL, rng, e))) goto done;
        if (s->on_progress) s->on_progress(++done_b, total, s->user);
    }
done:
    if (ctx_ok) ctx_free(&c);
    free(z);
    free(y);
    free(rng);
    return rc;
}

int prune_ff_moments(Ldm *m, const PruneSampling *s, FfMoments *mom, Err *e) {
    UNet *u = m->unet;
    const int nb = unet_ff_blocks(u);
    FfAcc *acc = calloc((size_t)(nb ? nb : 1), sizeof *acc);
    int rc = 0;
    if (ff_moments_alloc(mom, nb) || !acc) {
        rc = err_set(e, ERR_NOMEM, "prune: out of memory");
        goto done;
    }
    for (int k = 0; k < nb; k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(u, k, &proj, &out);
        int ff = out->weight.shape[1];
        size_t ld = (size_t)ff + 1;
        acc[k].m = mom->m[k] = ff;
        acc[k].sum = calloc(ld * ld, sizeof(double));
        acc[k].rows = malloc((size_t)ACC_CHUNK * ld * sizeof(double));
        if (!acc[k].sum || !acc[k].rows) {
            rc = err_set(e, ERR_NOMEM, "prune: out of memory for the moments of %s (%d units)", out->name, ff);
            goto done;
        }
        out->quant = &acc[k];
        out->quant_forward = record_forward;
    }
    if ((rc = prune_sample_teacher(m, s, e))) goto done;
    for (int k = 0; k < nb; k++) ff_moments_set(mom, k, &acc[k].sum, acc[k].count);
done:
    for (int k = 0; acc && k < nb; k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(u, k, &proj, &out);
        if (out->quant == &acc[k]) out->quant = NULL, out->quant_forward = NULL;
        free(acc[k].sum);
        free(acc[k].rows);
    }
    free(acc);
    if (rc) ff_moments_free(mom);
    return rc;
}
