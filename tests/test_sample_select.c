/* test_sample_select.c: train.sample_selection adaptive (train/sample_select.c).
   - the kept ranks [floor(lo P), ceil(hi P)) on hand-computed cases;
   - the kept candidates are those whose final-latent disagreement (teacher vs student, same
     noise) ranks inside the band, the disagreement recomputed here candidate by candidate
     with the sampler directly;
   - the epoch's trajectories come from the kept candidates (labels, x_T);
   - a run interrupted mid-epoch after a pool refresh and resumed ends in the same state
     bytes as the run uninterrupted (the kept list is part of the run state). */
#include "testutil.h"

#include <math.h>

#include "io/fileio.h"
#include "sample/generate.h"
#include "sample/sampler.h"
#include "test_trainer_fixture.h"
#include "run/run_train.h"
#include "train/trainer_impl.h"
#include "util/threads.h"

static char base_dir[64];
static RunConfig base_rc;

static void config_for(RunConfig *rc, const char *dir) {
    fix_config(rc, RC_RECIPE_EFFDM, dir);
    rc->train.sample_selection = RC_SELECTION_ADAPTIVE;
    rc->train.selection_pool = 8;
    rc->train.selection_refresh = 1;
    rc->train.selection_band_lo = 0.25;
    rc->train.selection_band_hi = 0.75;
    rc->train.val_every = 0;
    rc->train.select_epoch = RC_SELECT_LAST;
}

static int setup(void **state) {
    (void)state;
    threads_set(2);
    snprintf(base_dir, sizeof base_dir, "/tmp/effdm_test_select_XXXXXX");
    if (!mkdtemp(base_dir)) return -1;
    config_for(&base_rc, base_dir);
    Err e = {0};
    if (fix_calibrate(&base_rc, &e)) {
        fprintf(stderr, "calibration: %s\n", e.msg);
        return -1;
    }
    return 0;
}

static int teardown(void **state) {
    (void)state;
    fix_remove_run(base_dir);
    return 0;
}

static void test_band_ranks(void **state) {
    (void)state;
    static const struct {
        int pool;
        double lo, hi;
        int want_lo, want_hi;
    } cases[] = {{8, 0.25, 0.75, 2, 6}, {10, 0.25, 0.75, 2, 8}, {10, 0.9, 0.95, 9, 10}, {2, 0.99, 1.0, 1, 2},
                 {64, 0.0, 1.0, 0, 64}, {5, 0.5, 0.51, 2, 3}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        RcTrain t = {.selection_pool = cases[i].pool, .selection_band_lo = cases[i].lo, .selection_band_hi = cases[i].hi};
        int lo, hi;
        trainer_select_band(&t, &lo, &hi);
        if (lo != cases[i].want_lo || hi != cases[i].want_hi)
            fail_msg("pool %d band [%g, %g): ranks [%d, %d), expected [%d, %d)", cases[i].pool, cases[i].lo, cases[i].hi,
                     lo, hi, cases[i].want_lo, cases[i].want_hi);
    }
}

static Trainer *open_copy(const char *dir, const RunConfig *base) {
    assert_int_equal(fix_copy_run(base_dir, dir), 0);
    RunConfig rc = *base;
    snprintf(rc.run.out, sizeof rc.run.out, "%s", dir);
    Trainer *tr;
    Err e = {0};
    if (run_trainer_open(&tr, &rc, dir, &e)) fail_msg("open %s: %s", dir, e.msg);
    return tr;
}

// Final latent of pool candidate i (round 0) by the teacher or the student, one trajectory
// at a time through the sampler.
static void candidate_latent(Trainer *tr, int i, int student, float *z) {
    Rng r;
    sample_initial_noise(&r, (uint64_t)tr->cfg.train.seed + 1000, i, z, tr->per);
    int v = i % tr->n_real, y = v >= tr->uncond_label ? v + 1 : v;
    SamplerOpts so = {.kind = SAMPLER_DDIM, .steps = tr->cfg.train.steps, .eta = (float)tr->cfg.train.eta,
                      .scale = (float)tr->cfg.train.scale, .on_eval = student ? trainer_sampler_on_eval : NULL,
                      .user = tr};
    qmodel_enable(&tr->q, student);
    Err e = {0};
    ctx_reset(&tr->ctx);
    if (sampler_run(&tr->ctx, tr->m, &so, z, 1, &y, &r, &e)) fail_msg("%s", e.msg);
    ctx_reset(&tr->ctx);
    qmodel_enable(&tr->q, 1);
}

static void test_kept_band(void **state) {
    (void)state;
    char dir[64];
    snprintf(dir, sizeof dir, "/tmp/effdm_test_select_k_XXXXXX");
    assert_non_null(mkdtemp(dir));
    Trainer *tr = open_copy(dir, &base_rc);
    Err e = {0};
    assert_int_equal(trainer_begin_epoch(tr, &e), 0);  // epoch 0: round 0, the calibrated student
    assert_int_equal(tr->sel_round, 0);
    assert_int_equal(tr->n_sel, 4);
    const int P = 8;
    double score[8];
    float *zt = malloc(tr->per * sizeof *zt), *zs = malloc(tr->per * sizeof *zs);
    for (int i = 0; i < P; i++) {
        candidate_latent(tr, i, 0, zt);
        candidate_latent(tr, i, 1, zs);
        double s = 0;
        for (size_t j = 0; j < tr->per; j++) s += ((double)zs[j] - zt[j]) * ((double)zs[j] - zt[j]);
        score[i] = s / (double)tr->per;
    }
    // ranks 2..5 of the ascending scores
    for (int i = 0; i < P; i++) {
        int rank = 0;
        for (int j = 0; j < P; j++) rank += score[j] < score[i] || (score[j] == score[i] && j < i);
        int kept = 0;
        for (int k = 0; k < tr->n_sel; k++) kept |= tr->sel[k] == i;
        if (kept != (rank >= 2 && rank < 6))
            fail_msg("candidate %d (disagreement %.6g, rank %d) %s", i, score[i], rank, kept ? "kept" : "left out");
    }
    // the epoch's trajectories are kept candidates: their labels and their x_T
    for (int b = 0; b < tr->B; b++) {
        int found = 0;
        for (int k = 0; k < tr->n_sel && !found; k++) {
            int i = tr->sel[k], v = i % tr->n_real, y = v >= tr->uncond_label ? v + 1 : v;
            Rng r;
            sample_initial_noise(&r, (uint64_t)tr->cfg.train.seed + 1000, i, zt, tr->per);
            found = y == tr->labels[b] && !memcmp(zt, tr->x + (size_t)b * tr->per, tr->per * sizeof(float));
        }
        if (!found) fail_msg("trajectory %d of the epoch is no kept candidate", b);
    }
    free(zt);
    free(zs);
    trainer_free(tr);
    fix_remove_run(dir);
}

typedef struct {
    volatile sig_atomic_t stop;
    int64_t stop_at;
} Stop;

static void on_step(const TrainerStep *s, void *user) {
    Stop *st = user;
    if (st->stop_at && s->global_step == st->stop_at) st->stop = 1;
}

static int run(const char *dir, Stop *st) {
    TrainerHooks h = {.on_step = on_step, .user = st, .stop = &st->stop};
    return fix_run_dir(&base_rc, dir, &h);
}

static void test_resume_exact(void **state) {
    (void)state;
    char ref[64], cut[64];
    snprintf(ref, sizeof ref, "/tmp/effdm_test_select_r_XXXXXX");
    snprintf(cut, sizeof cut, "/tmp/effdm_test_select_c_XXXXXX");
    assert_non_null(mkdtemp(ref));
    assert_non_null(mkdtemp(cut));
    assert_int_equal(fix_copy_run(base_dir, ref), 0);
    assert_int_equal(fix_copy_run(base_dir, cut), 0);
    Stop a = {0};
    assert_int_equal(run(ref, &a), 0);
    Stop b = {.stop_at = 6};  // epoch 1, step 2 of 4: after round 1's refresh
    assert_int_equal(run(cut, &b), ERR_INTERRUPTED);
    b = (Stop){0};
    assert_int_equal(run(cut, &b), 0);
    char pa[128], pb[128];
    snprintf(pa, sizeof pa, "%s/state.safetensors", ref);
    snprintf(pb, sizeof pb, "%s/state.safetensors", cut);
    char *da = NULL, *db = NULL;
    size_t na = 0, nb = 0;
    Err e = {0};
    assert_int_equal(file_read_all(pa, (unsigned char **)&da, &na, &e), 0);
    assert_int_equal(file_read_all(pb, (unsigned char **)&db, &nb, &e), 0);
    assert_int_equal(na, nb);
    if (memcmp(da, db, na)) fail_msg("%s and %s differ", pa, pb);
    // the state holds round 1's kept list
    WeightFile *f;
    assert_int_equal(weights_open(&f, pa, &e), 0);
    const WeightInfo *wi = weights_find(f, "train.selection");
    assert_non_null(wi);
    int64_t v[6];
    assert_int_equal(wi->numel, 6);
    assert_int_equal(weights_read_raw(f, "train.selection", v, sizeof v, &e), 0);
    assert_int_equal(v[0], 1);
    assert_int_equal(v[1], 4);
    weights_close(f);
    free(da);
    free(db);
    fix_remove_run(ref);
    fix_remove_run(cut);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_band_ranks),
        cmocka_unit_test(test_kept_band),
        cmocka_unit_test(test_resume_exact),
    };
    return cmocka_run_group_tests_name("sample_select", tests, setup, teardown);
}
