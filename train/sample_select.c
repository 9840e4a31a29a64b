/* sample_select.c: which trajectories the student learns from (train.sample_selection;
   see trainer_impl.h).

   Why: AdaDFQ's lesson (data-free quantization with a generator): the hardest generated
   samples - those the quantized model disagrees with the FP model on most - are not the best
   ones to learn from, nor are the easiest; learn from those whose disagreement lies in a band
   between an agreement and a disagreement boundary. Here the generator is the teacher's own
   sampler: a candidate is a (class label, x_T) pair, its trajectory the training sampler's
   (DDIM train.steps, train.eta, guidance train.scale).

   adaptive: every train.selection_refresh epochs a pool of train.selection_pool candidates
   (round r: x_T from streams (train.seed + 1000 + r, i), label i modulo the real classes) is
   sampled by the teacher and by the student from the same noise; a candidate's disagreement
   is the mean squared difference of the two final latents. The candidates ranked (ascending)
   in [floor(lo pool), ceil(hi pool)) - lo, hi = train.selection_band_lo / _hi - are kept; each
   epoch draws its train.batch trajectories uniformly from them with the run's RNG. Rank 0
   scores the pool as one process would (the same sampler batches), the other ranks receive
   its scores: the choice is the same for any rank count. The kept list is part of the run
   state, so a resumed run draws from the same list. */
#include <stdlib.h>
#include <string.h>

#include "sample/generate.h"  // sample_initial_noise
#include "train/trainer_impl.h"
#include "util/dist.h"
#include "util/scored.h"

static uint64_t round_seed(const Trainer *tr, int round) { return (uint64_t)tr->cfg.train.seed + 1000 + (uint64_t)round; }

// Final latents of the round's pool, by the student (1) or the teacher (0), into z.
static int pool_latents(Trainer *tr, int round, int student, float *z, Err *e) {
    const RcTrain *T = &tr->cfg.train;
    SamplerOpts so = {.kind = SAMPLER_DDIM, .steps = T->steps, .eta = (float)T->eta, .scale = (float)T->scale};
    // not interruptible: the other ranks wait for rank 0's scores
    return trainer_sample_latents(tr, student, &so, round_seed(tr, round), T->selection_pool, z, NULL, e);
}

int trainer_select_refresh(Trainer *tr, int round, Err *e) {
    const RcTrain *T = &tr->cfg.train;
    const int P = T->selection_pool;
    const size_t n = (size_t)P * tr->per;
    double *score = calloc((size_t)P, sizeof *score);
    float *zt = malloc(n * sizeof *zt), *zs = malloc(n * sizeof *zs);
    Scored *sc = malloc((size_t)P * sizeof *sc);
    int rc = 0;
    if (!score || !zt || !zs || !sc) {
        rc = err_set(e, ERR_NOMEM, "out of memory for the selection pool (%d trajectories)", P);
        goto done;
    }
    if (tr->rank == 0) {
        if ((rc = pool_latents(tr, round, 0, zt, e)) || (rc = pool_latents(tr, round, 1, zs, e))) goto done;
        for (int i = 0; i < P; i++) {
            double s = 0;
            for (size_t j = (size_t)i * tr->per; j < (size_t)(i + 1) * tr->per; j++)
                s += ((double)zs[j] - zt[j]) * ((double)zs[j] - zt[j]);
            score[i] = s / (double)tr->per;
        }
    }
    if (tr->world > 1 && (rc = dist_merge_f64(score, (size_t)P, e))) goto done;  // rank 0's, everywhere
    for (int i = 0; i < P; i++) sc[i] = (Scored){score[i], i};
    qsort(sc, (size_t)P, sizeof *sc, scored_cmp_asc);
    int lo, hi;
    trainer_select_band(T, &lo, &hi);
    tr->n_sel = hi - lo;
    for (int k = 0; k < tr->n_sel; k++) tr->sel[k] = sc[lo + k].index;
    tr->sel_round = round;
done:
    free(score), free(zt), free(zs), free(sc);
    return rc;
}

void trainer_select_band(const RcTrain *T, int *lo, int *hi) {
    const int P = T->selection_pool;
    *lo = (int)(T->selection_band_lo * P);
    *hi = (int)(T->selection_band_hi * P + 0.999999);
    if (*hi > P) *hi = P;
    if (*lo >= *hi) *lo = *hi - 1;  // at least one candidate
    if (*lo < 0) *lo = 0;
}

void trainer_select_draw(Trainer *tr) {
    uint64_t seed = round_seed(tr, tr->sel_round);
    for (int b = 0; b < tr->B; b++) {
        int i = tr->sel[rng_below(&tr->rng, (uint32_t)tr->n_sel)];
        tr->labels[b] = trainer_real_label(tr, i);
        Rng r;
        sample_initial_noise(&r, seed, i, tr->x + (size_t)b * tr->per, tr->per);
    }
}
