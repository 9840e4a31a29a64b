/* test_trainer.c: the distillation trainer against independent references:
   - the loss of every branch / reduction choice and its gradient against closed forms;
   - the first step's loss against the teacher and student evaluated here, branch by branch,
     on x_T and labels drawn as documented; the second step's input against the DDIM update
     written out here from the schedule's closed form (with the eta noise);
   - the LoRA learning rates against mean(Δ_w) / divisor; only trainable tensors have
     gradient buffers; the teacher records nothing on the tape;
   - train.trajectory student: the second step's state from the student's guided ε;
   - delta_w_update single vs reference (one vs two AdamW moves of Δ_w);
   - a NaN loss stops the run naming epoch and step, with the state of that step's start saved;
   - an unconditional model (a tiny random one): one forward each, Σ (ε_Q - ε_P)^2. */
#include "testutil.h"

#include <math.h>
#include <string.h>

#include "test_trainer_fixture.h"
#include "io/weights.h"
#include "models/ldm_config.h"
#include "train/distill_loss.h"
#include "run/run_train.h"
#include "util/threads.h"

static const double TOL_LOSS = 1e-5;      // float32 loss vs double closed form
static const double TOL_STEP_LOSS = 2e-4; // trainer's batched guided call vs per-branch calls here
static const double TOL_TRAJ = 1e-4;      // DDIM update, float32 vs double

/* ---- the loss, closed forms -------------------------------------------------------- */

static void check_loss(RcLossBranches br, RcReduction red, int single) {
    Ctx c;
    Err e = {0};
    assert_int_equal(ctx_init(&c, 64 << 20, &e), 0);
    Rng r;
    rng_seed(&r, 11, 0);
    const int B = 2, per = 2 * 3 * 3;
    const int shape[4] = {single ? B : 2 * B, 2, 3, 3};
    Tensor *q = test_param_new(4, shape, 1, &r, 1.0f);
    Tensor *p = test_param_new(4, shape, 0, &r, 1.0f);
    const float s = 1.5f;
    DistillLoss L = {br, red, s, single};
    Tensor *loss = distill_loss(&c, &L, q, p);
    assert_non_null(loss);
    assert_int_equal(tape_backward(&c, loss, NULL), 0);

    size_t n = (size_t)B * per;
    double ref = 0;
    double *dq = calloc(q->n, sizeof(double));
    if (single) {
        double k = red == RC_REDUCE_MEAN ? 1.0 / (double)q->n : 1.0;
        for (size_t i = 0; i < q->n; i++) {
            double d = (double)q->data[i] - p->data[i];
            ref += k * d * d;
            dq[i] = 2 * k * d;
        }
    } else {
        double k = red == RC_REDUCE_MEAN ? 1.0 / (double)n : 1.0;
        const float *qu = q->data, *qc = q->data + n, *pu = p->data, *pc = p->data + n;
        if (br != RC_BRANCHES_GUIDED)
            for (size_t i = 0; i < n; i++) {
                double dc = (double)qc[i] - pc[i], du = (double)qu[i] - pu[i];
                ref += k * (dc * dc + du * du);
                dq[n + i] += 2 * k * dc;
                dq[i] += 2 * k * du;
            }
        if (br != RC_BRANCHES_BOTH)
            for (size_t i = 0; i < n; i++) {
                double qg = qu[i] + (double)s * ((double)qc[i] - qu[i]);
                double pg = pu[i] + (double)s * ((double)pc[i] - pu[i]);
                double d = qg - pg;
                ref += k * d * d;
                dq[i] += 2 * k * d * (1 - s);
                dq[n + i] += 2 * k * d * s;
            }
    }
    assert_true(fabs(loss->data[0] - ref) <= TOL_LOSS * fabs(ref));
    for (size_t i = 0; i < q->n; i++) assert_true(fabs(q->grad[i] - dq[i]) <= TOL_LOSS * (1 + fabs(dq[i])));
    free(dq);
    test_param_free(q);
    test_param_free(p);
    ctx_free(&c);
}

static void test_loss_closed_forms(void **state) {
    for (int br = RC_BRANCHES_GUIDED; br <= RC_BRANCHES_ALL; br++)
        for (int red = RC_REDUCE_SUM; red <= RC_REDUCE_MEAN; red++) check_loss(br, red, 0);
    check_loss(RC_BRANCHES_GUIDED, RC_REDUCE_SUM, 1);
    check_loss(RC_BRANCHES_GUIDED, RC_REDUCE_MEAN, 1);
}

/* ---- a run on the shipped teacher -------------------------------------------------- */

typedef struct {
    volatile sig_atomic_t stop;
    int64_t stop_at;     // raise stop after this global step (0: never)
    float losses[64];
    int n;
} Rec;

static void rec_step(const TrainerStep *s, void *user) {
    Rec *r = user;
    if (r->n < 64) r->losses[r->n++] = s->loss;
    if (r->stop_at && s->global_step == r->stop_at) r->stop = 1;
}

// ε of the given branch (labels y, all equal-sized) at t, no gradient, from a fresh ctx region.
static float *eps_of(Ctx *c, Ldm *m, const float *x, int B, int t, const int *y) {
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    float *ts = malloc(B * sizeof(float));
    for (int i = 0; i < B; i++) ts[i] = (float)t;
    int prev = ctx_set_grad(c, 0);
    Tensor *o = ldm_apply_model(c, m, tensor_from(c, x, 4, (const int[]){B, C, H, W}), ts, y);
    ctx_set_grad(c, prev);
    assert_non_null(o);
    float *out = malloc(o->n * sizeof(float));
    memcpy(out, o->data, o->n * sizeof(float));
    free(ts);
    return out;
}

// Guided loss of the reference recipe, in double, from per-branch calls.
// eps_q_out (may be NULL): the student's guided ε.
static double ref_guided_loss(Ctx *c, Ldm *m, QModel *q, const float *x, int B, int t, const int *y, int uncond,
                              double s, double *eps_g_out, double *eps_q_out, size_t n) {
    int *yu = malloc(B * sizeof(int));
    for (int i = 0; i < B; i++) yu[i] = uncond;
    qmodel_enable(q, 0);
    float *pc = eps_of(c, m, x, B, t, y), *pu = eps_of(c, m, x, B, t, yu);
    qmodel_enable(q, 1);
    qmodel_set_timestep(q, t);
    float *qc = eps_of(c, m, x, B, t, y), *qu = eps_of(c, m, x, B, t, yu);
    qmodel_enable(q, 0);
    double L = 0;
    for (size_t i = 0; i < n; i++) {
        double pg = pu[i] + s * ((double)pc[i] - pu[i]), qg = qu[i] + s * ((double)qc[i] - qu[i]);
        L += (qg - pg) * (qg - pg);
        eps_g_out[i] = pg;
        if (eps_q_out) eps_q_out[i] = qg;
    }
    free(pc);
    free(pu);
    free(qc);
    free(qu);
    free(yu);
    ctx_reset(c);
    return L;
}

// Calibrates the run directory dir of rc and opens its trainer; fails the test otherwise.
static Trainer *calibrated_trainer(const RunConfig *rc, const char *dir) {
    Err e = {0};
    if (fix_calibrate(rc, &e)) fail_msg("calibrate: %s", e.msg);
    Trainer *tr;
    if (run_trainer_open(&tr, rc, dir, &e)) fail_msg("%s", e.msg);
    return tr;
}

static void test_steps_against_references(void **state) {
    threads_set(2);
    char dir[] = "/tmp/effdm_test_trainer_XXXXXX";
    assert_non_null(mkdtemp(dir));
    RunConfig rc;
    fix_config(&rc, RC_RECIPE_REFERENCE, dir);
    rc.train.val_every = 0;
    Err e = {0};
    Trainer *tr = calibrated_trainer(&rc, dir);
    Ldm *m = trainer_ldm(tr);
    QModel *q = trainer_qmodel(tr);

    // only the student's trainable tensors have gradient buffers
    for (int i = 0; i < unet_param_tensors(m->unet); i++) {
        Tensor *t = unet_param_at(m->unet, i, NULL);
        assert_null(t->grad);
        assert_int_equal(t->requires_grad, 0);
    }
    assert_null(m->class_emb.grad);
    assert_null(unet_grads(m->unet));

    // LoRA rates: mean(Δ_w) / 2500 of each trainable layer, from the calibrated Δ_w
    for (int i = 0, tl = 0; i < q->n_q; i++) {
        if (q->q[i].special) continue;
        double s = 0;
        for (int k = 0; k < q->q[i].cout; k++) s += q->q[i].wq.delta.data[k];
        double want = s / q->q[i].cout / 2500.0;
        assert_true(fabs(trainer_lora_lr(tr, tl) - want) <= 1e-12 * want);
        tl++;
    }

    // the teacher records nothing even in grad mode; the student does
    Ctx c;
    assert_int_equal(ctx_init(&c, 512 << 20, &e), 0);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    const int B = rc.train.batch;
    const size_t per = (size_t)C * H * W, n = B * per;
    {
        float *x0 = calloc(n, sizeof(float));
        int y0[2] = {1, 2};
        float t0[2] = {501, 501};
        qmodel_enable(q, 0);
        ctx_set_grad(&c, 1);
        assert_non_null(ldm_apply_model(&c, m, tensor_from(&c, x0, 4, (const int[]){B, C, H, W}), t0, y0));
        assert_int_equal((int)c.n_nodes, 0);
        qmodel_enable(q, 1);
        assert_non_null(ldm_apply_model(&c, m, tensor_from(&c, x0, 4, (const int[]){B, C, H, W}), t0, y0));
        assert_true(c.n_nodes > 0);
        tape_clear(&c);
        ctx_reset(&c);
        qmodel_enable(q, 0);
        free(x0);
    }

    // x_T and labels as documented: labels first (uniform over the 10 real classes), then x_T
    Rng r;
    rng_seed(&r, (uint64_t)rc.train.seed, 0);
    int y[2];
    const int uncond = ldm_n_classes(m) - 1;
    for (int b = 0; b < B; b++) y[b] = (int)rng_below(&r, (uint32_t)uncond);
    float *x = malloc(n * sizeof(float));
    rng_normal_fill(&r, x, n);
    // training timesteps of 4 steps over 1000: 1, 251, 501, 751 (CompVis 'uniform')
    const int ts[4] = {1, 251, 501, 751};
    double *eps_g = malloc(n * sizeof(double));
    double L0 = ref_guided_loss(&c, m, q, x, B, ts[3], y, uncond, 1.5, eps_g, NULL, n);

    Rec rec = {.stop_at = 1};
    TrainerHooks h = {.on_step = rec_step, .user = &rec, .stop = &rec.stop};
    assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_INTERRUPTED);
    assert_int_equal(rec.n, 1);
    assert_true(fabs(rec.losses[0] - L0) <= TOL_STEP_LOSS * L0);

    // x_{t-1}: DDIM with eta 1 from the teacher's guided ε, noise drawn after x_T
    const double a = m->alphas_cumprod[751], ap = m->alphas_cumprod[501];
    const double sig = sqrt((1 - ap) / (1 - a) * (1 - a / ap));
    float *noise = malloc(n * sizeof(float));
    rng_normal_fill(&r, noise, n);
    float *x1 = malloc(n * sizeof(float));
    for (size_t i = 0; i < n; i++) {
        double x0 = (x[i] - sqrt(1 - a) * eps_g[i]) / sqrt(a);
        x1[i] = (float)(sqrt(ap) * x0 + sqrt(1 - ap - sig * sig) * eps_g[i] + sig * noise[i]);
    }
    // the second step's loss, with the student the first step produced
    double L1 = ref_guided_loss(&c, m, q, x1, B, ts[2], y, uncond, 1.5, eps_g, NULL, n);
    rec.stop_at = 2;
    rec.stop = 0;
    assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_INTERRUPTED);
    assert_int_equal(rec.n, 2);
    assert_true(fabs(rec.losses[1] - L1) <= TOL_STEP_LOSS * L1 + TOL_TRAJ);

    for (int i = 0; i < unet_param_tensors(m->unet); i++) assert_null(unet_param_at(m->unet, i, NULL)->grad);
    free(noise);
    free(x1);
    free(x);
    free(eps_g);
    ctx_free(&c);
    trainer_free(tr);
    fix_remove_run(dir);
}

// train.trajectory student: x_{t-1} comes from the student's guided ε (before its update), so
// the second step's loss is the one at that state, not at the teacher's.
static void test_student_trajectory(void **state) {
    threads_set(2);
    char dir[] = "/tmp/effdm_test_trainer_XXXXXX";
    assert_non_null(mkdtemp(dir));
    RunConfig rc;
    fix_config(&rc, RC_RECIPE_REFERENCE, dir);
    rc.train.val_every = 0;
    rc.train.trajectory = RC_TRAJ_STUDENT;
    Err e = {0};
    Trainer *tr = calibrated_trainer(&rc, dir);
    Ldm *m = trainer_ldm(tr);
    QModel *q = trainer_qmodel(tr);
    Ctx c;
    assert_int_equal(ctx_init(&c, 512 << 20, &e), 0);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    const int B = rc.train.batch;
    const size_t n = (size_t)B * C * H * W;
    Rng r;
    rng_seed(&r, (uint64_t)rc.train.seed, 0);
    int y[2];
    const int uncond = ldm_n_classes(m) - 1;
    for (int b = 0; b < B; b++) y[b] = (int)rng_below(&r, (uint32_t)uncond);
    float *x = malloc(n * sizeof(float)), *noise = malloc(n * sizeof(float));
    float *xs = malloc(n * sizeof(float)), *xt = malloc(n * sizeof(float));
    double *eps_g = malloc(n * sizeof(double)), *eps_q = malloc(n * sizeof(double));
    rng_normal_fill(&r, x, n);
    ref_guided_loss(&c, m, q, x, B, 751, y, uncond, 1.5, eps_g, eps_q, n);
    Rec rec = {.stop_at = 1};
    TrainerHooks h = {.on_step = rec_step, .user = &rec, .stop = &rec.stop};
    assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_INTERRUPTED);
    const double a = m->alphas_cumprod[751], ap = m->alphas_cumprod[501];
    const double sig = sqrt((1 - ap) / (1 - a) * (1 - a / ap));
    rng_normal_fill(&r, noise, n);
    for (size_t i = 0; i < n; i++) {
        double x0s = (x[i] - sqrt(1 - a) * eps_q[i]) / sqrt(a), x0t = (x[i] - sqrt(1 - a) * eps_g[i]) / sqrt(a);
        xs[i] = (float)(sqrt(ap) * x0s + sqrt(1 - ap - sig * sig) * eps_q[i] + sig * noise[i]);
        xt[i] = (float)(sqrt(ap) * x0t + sqrt(1 - ap - sig * sig) * eps_g[i] + sig * noise[i]);
    }
    double Ls = ref_guided_loss(&c, m, q, xs, B, 501, y, uncond, 1.5, eps_g, NULL, n);
    double Lt = ref_guided_loss(&c, m, q, xt, B, 501, y, uncond, 1.5, eps_g, NULL, n);
    rec.stop_at = 2;
    rec.stop = 0;
    assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_INTERRUPTED);
    assert_int_equal(rec.n, 2);
    print_message("  second step: loss %.6g, at the student's state %.6g, at the teacher's %.6g\n", rec.losses[1], Ls,
                  Lt);
    assert_true(fabs(rec.losses[1] - Ls) <= TOL_STEP_LOSS * Ls + TOL_TRAJ);
    assert_true(fabs(Lt - Ls) > 10 * (TOL_STEP_LOSS * Ls + TOL_TRAJ));  // the two states are told apart
    free(x);
    free(noise);
    free(xs);
    free(xt);
    free(eps_g);
    free(eps_q);
    ctx_free(&c);
    trainer_free(tr);
    fix_remove_run(dir);
}

// Largest |change| of Δ_w over every trainable layer after one step, relative to lr_w_delta.
static double delta_w_move(RcDeltaWUpdate mode) {
    char dir[] = "/tmp/effdm_test_trainer_dw_XXXXXX";
    assert_non_null(mkdtemp(dir));
    RunConfig rc;
    fix_config(&rc, RC_RECIPE_REFERENCE, dir);
    rc.train.val_every = 0;
    rc.train.optimizer.delta_w_update = mode;
    rc.train.optimizer.lr_w_delta = 1e-4;
    rc.train.optimizer.weight_decay = 0;
    Err e = {0};
    Trainer *tr = calibrated_trainer(&rc, dir);
    QModel *q = trainer_qmodel(tr);
    size_t total = 0;
    for (int i = 0; i < q->n_q; i++)
        if (!q->q[i].special) total += (size_t)q->q[i].cout;
    float *before = malloc(total * sizeof(float));
    for (int i = 0, k = 0; i < q->n_q; i++)
        if (!q->q[i].special)
            for (int o = 0; o < q->q[i].cout; o++) before[k++] = q->q[i].wq.delta.data[o];
    Rec rec = {.stop_at = 1};
    TrainerHooks h = {.on_step = rec_step, .user = &rec, .stop = &rec.stop};
    assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_INTERRUPTED);
    double worst = 0;
    for (int i = 0, k = 0; i < q->n_q; i++)
        if (!q->q[i].special)
            for (int o = 0; o < q->q[i].cout; o++, k++) {
                double d = fabs((double)q->q[i].wq.delta.data[o] - before[k]) / 1e-4;
                if (d > worst) worst = d;
            }
    free(before);
    trainer_free(tr);
    fix_remove_run(dir);
    return worst;
}

static void test_delta_w_update_modes(void **state) {
    threads_set(2);
    // Adam's first step moves each slot by lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps):
    // at most lr for one slot; the reference's two slots on one array move up to 2 lr
    double single = delta_w_move(RC_DW_SINGLE), reference = delta_w_move(RC_DW_REFERENCE);
    assert_true(single <= 1.0 + 1e-3);
    assert_true(single > 0.5);
    assert_true(reference > 1.5 && reference <= 2.0 + 1e-3);
}

static void test_nan_stops_with_last_good_state(void **state) {
    threads_set(2);
    char dir[] = "/tmp/effdm_test_trainer_nan_XXXXXX";
    assert_non_null(mkdtemp(dir));
    RunConfig rc;
    fix_config(&rc, RC_RECIPE_EFFDM, dir);
    rc.train.val_every = 0;
    Err e = {0};
    Trainer *tr = calibrated_trainer(&rc, dir);
    Rec rec = {.stop_at = 1};
    TrainerHooks h = {.on_step = rec_step, .user = &rec, .stop = &rec.stop};
    assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_INTERRUPTED);
    // poison the student: every activation step of one trainable layer becomes NaN
    QModel *q = trainer_qmodel(tr);
    for (int i = 0; i < q->n_q; i++)
        if (!q->q[i].special) {
            for (int k = 0; k < q->q[i].aq.n; k++) q->q[i].aq.delta.data[k] = NAN;
            break;
        }
    rec.stop_at = 0;
    rec.stop = 0;
    memset(&e, 0, sizeof e);
    assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_NAN);
    assert_non_null(strstr(e.msg, "epoch 1/2, step 2/4"));
    assert_int_equal(rec.n, 1);
    trainer_free(tr);
    // the saved state is the start of step 1; the log holds step 0 only
    char path[2048];
    snprintf(path, sizeof path, "%s/state.safetensors", dir);
    WeightFile *f;
    assert_int_equal(weights_open(&f, path, &e), 0);
    int64_t pos[4];
    assert_int_equal(weights_read_raw(f, "train.position", pos, sizeof pos, &e), 0);
    assert_int_equal(pos[0], 0);
    assert_int_equal(pos[1], 1);
    weights_close(f);
    snprintf(path, sizeof path, "%s/log.csv", dir);
    FILE *lf = fopen(path, "r");
    assert_non_null(lf);
    char line[256];
    int rows = 0;
    while (fgets(line, sizeof line, lf)) rows++;
    fclose(lf);
    assert_int_equal(rows, 2);  // header + step 0
    fix_remove_run(dir);
}

/* ---- an unconditional model --------------------------------------------------------- */

static const char UNCOND_YAML[] =
    "model:\n"
    "  target: ldm.models.diffusion.ddpm.LatentDiffusion\n"
    "  params:\n"
    "    linear_start: 0.0015\n"
    "    linear_end: 0.0195\n"
    "    timesteps: 1000\n"
    "    image_size: 8\n"
    "    channels: 4\n"
    "    use_ema: false\n"
    "    unet_config:\n"
    "      target: ldm.modules.diffusionmodules.openaimodel.UNetModel\n"
    "      params:\n"
    "        image_size: 8\n"
    "        in_channels: 4\n"
    "        out_channels: 4\n"
    "        model_channels: 32\n"
    "        attention_resolutions: [2]\n"
    "        num_res_blocks: 1\n"
    "        channel_mult: [1, 2]\n"
    "        num_heads: 1\n"
    "    cond_stage_config: __is_unconditional__\n";

// Writes the tiny unconditional model (config + random UNet weights) into dir.
static void write_uncond_model(const char *dir, char *yaml, char *weights, size_t n) {
    snprintf(yaml, n, "%s/uncond.yaml", dir);
    snprintf(weights, n, "%s/uncond.safetensors", dir);
    test_write_file(yaml, "%s", UNCOND_YAML);
    Err e = {0};
    LdmConfig cfg;
    if (ldm_config_load(&cfg, yaml, &e)) fail_msg("%s", e.msg);
    UNet *u;
    assert_int_equal(unet_new(&u, &cfg.unet, &e), 0);
    Rng r;
    rng_seed(&r, 99, 0);
    StWriter w = {0};
    int np = unet_param_tensors(u);
    char (*names)[160] = calloc((size_t)np, sizeof *names);
    for (int i = 0; i < np; i++) {
        const char *name;
        Tensor *t = unet_param_at(u, i, &name);
        rng_normal_fill(&r, t->data, t->n);
        for (size_t k = 0; k < t->n; k++) t->data[k] *= 0.1f;
        snprintf(names[i], sizeof names[i], "model.diffusion_model.%s", name);
        int64_t shape[8];
        int nd = unet_param_file_ndim(u, i);
        for (int d = 0; d < nd; d++) shape[d] = t->shape[d];
        assert_int_equal(st_writer_add(&w, names[i], DT_F32, nd, shape, t->data, &e), 0);
    }
    assert_int_equal(st_write(&w, weights, &e), 0);
    st_writer_free(&w);
    free(names);
    unet_free(u);
}

static void test_unconditional_model(void **state) {
    threads_set(2);
    char dir[] = "/tmp/effdm_test_trainer_uncond_XXXXXX";
    assert_non_null(mkdtemp(dir));
    char yaml[256], weights[256];
    write_uncond_model(dir, yaml, weights, sizeof yaml);
    char run[300];
    snprintf(run, sizeof run, "%s/run", dir);
    RunConfig rc;
    fix_config(&rc, RC_RECIPE_REFERENCE, run);
    snprintf(rc.model.ldm_config, sizeof rc.model.ldm_config, "%s", yaml);
    snprintf(rc.model.ckpt, sizeof rc.model.ckpt, "%s", weights);
    rc.train.val_every = 1;
    Err e = {0};
    if (fix_calibrate(&rc, &e)) fail_msg("%s", e.msg);
    Trainer *tr;
    if (run_trainer_open(&tr, &rc, run, &e)) fail_msg("%s", e.msg);
    Ldm *m = trainer_ldm(tr);
    QModel *q = trainer_qmodel(tr);
    assert_false(ldm_is_class_conditional(m));
    Ctx c;
    assert_int_equal(ctx_init(&c, 256 << 20, &e), 0);
    int C, H, W;
    ldm_latent_shape(m, &C, &H, &W);
    const int B = rc.train.batch;
    const size_t n = (size_t)B * C * H * W;
    // no labels are drawn: x_T is the stream's first draw
    Rng r;
    rng_seed(&r, (uint64_t)rc.train.seed, 0);
    float *x = malloc(n * sizeof(float));
    rng_normal_fill(&r, x, n);
    qmodel_enable(q, 0);
    float *p = eps_of(&c, m, x, B, 751, NULL);
    qmodel_enable(q, 1);
    qmodel_set_timestep(q, 751);
    float *qe = eps_of(&c, m, x, B, 751, NULL);
    qmodel_enable(q, 0);
    double L = 0;
    for (size_t i = 0; i < n; i++) L += ((double)qe[i] - p[i]) * ((double)qe[i] - p[i]);
    Rec rec = {0};
    TrainerHooks h = {.on_step = rec_step, .user = &rec};
    TrainerSummary sum;
    if (trainer_run(tr, &h, &sum, &e)) fail_msg("%s", e.msg);
    assert_int_equal(rec.n, 8);
    assert_true(L > 0);
    assert_true(fabs(rec.losses[0] - L) <= TOL_STEP_LOSS * L);
    assert_true(sum.has_best);
    free(x);
    free(p);
    free(qe);
    ctx_free(&c);
    trainer_free(tr);
    fix_remove_run(dir);
}


// Rows of log.csv: step losses (in order) and validation rows (epoch, mse, fd, real).
typedef struct {
    float loss[64];
    int n_loss;
    int val_epoch[16];
    double mse[16], fd[16], real[16];
    int n_val;
} LogRows;

static void read_log(const char *dir, LogRows *r) {
    char path[2048], line[512];
    snprintf(path, sizeof path, "%s/log.csv", dir);
    FILE *f = fopen(path, "r");
    assert_non_null(f);
    memset(r, 0, sizeof *r);
    assert_non_null(fgets(line, sizeof line, f));  // header
    while (fgets(line, sizeof line, f)) {
        char *fld[9] = {0};
        int n = 0;
        for (char *p = line; n < 9;) {
            fld[n++] = p;
            char *c = strpbrk(p, ",\n");
            if (!c) break;
            int end = *c == '\n';
            *c = 0;
            p = c + 1;
            if (end) break;
        }
        if (fld[2] && *fld[2]) {
            assert_true(r->n_loss < 64);
            r->loss[r->n_loss++] = strtof(fld[2], NULL);
        } else if (n >= 9 && *fld[6]) {
            assert_true(r->n_val < 16);
            r->val_epoch[r->n_val] = atoi(fld[0]);
            r->mse[r->n_val] = strtod(fld[6], NULL);
            r->fd[r->n_val] = strtod(fld[7], NULL);
            r->real[r->n_val] = strtod(fld[8], NULL);
            r->n_val++;
        }
    }
    fclose(f);
}

// train.val_samples: the sampled validation does not change the training (its own noise
// streams), logs its three measures at every validation, and select_epoch best_sampled picks
// the epoch the rule of trainer.c gives - recomputed here from the log: eligible when both mse
// and fd are at most the starting model's and |real - 1| at most 0.02 above its, score mse/mse0 + fd/fd0, the starting model (score
// 2) when nothing beats it - and writes that epoch to best.safetensors.
static void test_sampled_validation(void **state) {
    (void)state;
    threads_set(2);
    char d0[] = "/tmp/effdm_test_sampled0_XXXXXX", d1[] = "/tmp/effdm_test_sampled1_XXXXXX";
    assert_non_null(mkdtemp(d0));
    assert_non_null(mkdtemp(d1));
    LogRows plain, checked;
    for (int k = 0; k < 2; k++) {
        const char *dir = k ? d1 : d0;
        RunConfig rc;
        fix_config(&rc, RC_RECIPE_EFFDM, dir);
        rc.train.epochs = 3;
        rc.sample.steps = 4;
        if (k) {
            rc.train.val_samples = 8;
            rc.train.select_epoch = RC_SELECT_BEST_SAMPLED;
        }
        Err e = {0};
        assert_int_equal(run_config_validate(&rc, &e), 0);
        Trainer *tr = calibrated_trainer(&rc, dir);
        TrainerSummary s;
        if (trainer_run(tr, NULL, &s, &e)) fail_msg("%s", e.msg);
        trainer_free(tr);
        read_log(dir, k ? &checked : &plain);
        if (k) {
            assert_int_equal(s.has_best, 1);
            const LogRows *r = &checked;
            assert_int_equal(r->n_val, 4);  // before training, then after each of 3 epochs
            assert_int_equal(r->val_epoch[0], -1);
            int best = -1;
            double best_score = 2.0;
            for (int i = 0; i < r->n_val; i++) {
                assert_true(isfinite(r->mse[i]) && r->mse[i] > 0);
                if (i > 0 && !(fabs(r->real[i] - 1.0) <= fabs(r->real[0] - 1.0) + 0.02)) continue;  // not eligible
                assert_true(isfinite(r->fd[i]) && r->fd[i] >= 0);
                assert_true(isfinite(r->real[i]) && r->real[i] > 0);
                if (i == 0) continue;
                if (r->mse[i] <= r->mse[0] && r->fd[i] <= r->fd[0]) {
                    double sc = r->mse[i] / r->mse[0] + r->fd[i] / r->fd[0];
                    if (sc < best_score) best_score = sc, best = r->val_epoch[i];
                }
            }
            assert_int_equal(s.best_epoch, best);
            char path[2048];
            snprintf(path, sizeof path, "%s/best.safetensors", dir);
            WeightFile *f;
            assert_int_equal(weights_open(&f, path, &e), 0);
            int64_t be;
            double bv;
            assert_int_equal(weights_read_raw(f, "best.epoch", &be, sizeof be, &e), 0);
            assert_int_equal(weights_read_raw(f, "best.val", &bv, sizeof bv, &e), 0);
            weights_close(f);
            assert_int_equal((int)be, best);
            assert_true(fabs(bv - best_score) <= 1e-6 * best_score);
            // best_sampled without the sampled validation is a config error
            rc.train.val_samples = 0;
            assert_int_equal(run_config_validate(&rc, &e), ERR_VALUE);
            assert_non_null(strstr(e.msg, "train.val_samples"));
        }
    }
    assert_int_equal(plain.n_loss, checked.n_loss);
    for (int i = 0; i < plain.n_loss; i++) assert_true(plain.loss[i] == checked.loss[i]);
    fix_remove_run(d0);
    fix_remove_run(d1);
}

// Slot workers (train/slot_workers.c): with 2 threads a step's slots run on two students at
// once. Three steps of a batch of 4 (4 slots) on 1 and on 2 threads give the same losses and
// the same trainable values, bit for bit, effdm recipe and reference recipe.
static void test_slot_workers_match_one_thread(void **state) {
    (void)state;
    for (int recipe = 0; recipe < 2; recipe++) {
        // 1 and 2 threads with the weight path once per step (run.recompute_weights off), then 1
        // and 2 threads with each slot's weight path rebuilt in backward (on): the same bits
        // within each pair; the pairs differ by the order the slots' gradients are added in
        float *vals[4] = {NULL, NULL, NULL, NULL}, losses[4][8];
        size_t nv = 0;
        for (int run = 0; run < 4; run++) {
            threads_set(run % 2 ? 2 : 1);
            char dir[] = "/tmp/effdm_test_trainer_XXXXXX";
            assert_non_null(mkdtemp(dir));
            RunConfig rc;
            fix_config(&rc, recipe ? RC_RECIPE_REFERENCE : RC_RECIPE_EFFDM, dir);
            rc.train.val_every = 0;
            rc.train.batch = 4;
            rc.run.recompute_weights = run >= 2 ? RC_RECOMPUTE_ON : RC_RECOMPUTE_OFF;
            Err e = {0};
            Trainer *tr = calibrated_trainer(&rc, dir);
            Rec rec = {.stop_at = 3};
            TrainerHooks h = {.on_step = rec_step, .user = &rec, .stop = &rec.stop};
            assert_int_equal(trainer_run(tr, &h, NULL, &e), ERR_INTERRUPTED);
            assert_int_equal(rec.n, 3);
            memcpy(losses[run], rec.losses, 3 * sizeof(float));
            QModel *q = trainer_qmodel(tr);
            assert_int_equal(q->q[0].recompute, run >= 2);
            nv = q->n_params;
            vals[run] = malloc(nv * sizeof(float));
            memcpy(vals[run], q->params, nv * sizeof(float));
            trainer_free(tr);
            fix_remove_run(dir);
        }
        for (int run = 1; run < 4; run += 2) {
            assert_memory_equal(losses[run - 1], losses[run], 3 * sizeof(float));
            assert_memory_equal(vals[run - 1], vals[run], nv * sizeof(float));
        }
        // the two ways agree to float rounding after 3 steps
        double num = 0, den = 0;
        for (size_t i = 0; i < nv; i++) {
            num += ((double)vals[0][i] - vals[2][i]) * ((double)vals[0][i] - vals[2][i]);
            den += (double)vals[2][i] * vals[2][i];
        }
        assert_true(sqrt(num / den) < 1e-5);
        for (int run = 0; run < 4; run++) free(vals[run]);
    }
    threads_set(2);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_loss_closed_forms),
        cmocka_unit_test(test_steps_against_references),
        cmocka_unit_test(test_student_trajectory),
        cmocka_unit_test(test_delta_w_update_modes),
        cmocka_unit_test(test_nan_stops_with_last_good_state),
        cmocka_unit_test(test_unconditional_model),
        cmocka_unit_test(test_slot_workers_match_one_thread),
        cmocka_unit_test(test_sampled_validation),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
