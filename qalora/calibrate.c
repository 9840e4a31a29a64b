/* calibrate.c: naive PTQ (the reference's teacher trajectories + quantize_ldm_naive.py
   + the TALSQ-table initialising forward of train_efficientdm.py, in one pass). The run
   directory it starts: run/run_calibrate.c. */
#include "qalora/calibrate.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "sample/generate.h"
#include "sample/sampler.h"
#include "util/dist.h"

void calib_record_free(CalibRecord *rec) {
    free(rec->x);
    free(rec->t);
    free(rec->y);
    free(rec->traj);
    free(rec->step);
    memset(rec, 0, sizeof *rec);
}

// What the recording hook needs about the batch being sampled.
typedef struct {
    CalibRecord *rec;
    const int *y;       // the batch's labels (NULL: unconditional)
    int first;          // trajectory index of the batch's first image
    int guided;         // 1: the UNet sees [unconditional half, conditional half]
    int uncond;
    long done, total;
    const CalibProgress *o;
} RecordCtx;

static void push(CalibRecord *rec, const float *x, int t, int y, int traj, int step) {
    size_t per = (size_t)rec->C * rec->H * rec->W;
    int i = rec->n++;
    memcpy(rec->x + (size_t)i * per, x, per * sizeof(float));
    rec->t[i] = (float)t;
    if (rec->y) rec->y[i] = y;
    rec->traj[i] = traj;
    rec->step[i] = step;
}

static void on_input(int step, int timestep, const float *x, int N, void *user) {
    RecordCtx *r = user;
    CalibRecord *rec = r->rec;
    size_t per = (size_t)rec->C * rec->H * rec->W;
    int halves = r->guided ? 2 : 1;
    if (rec->n + halves * N > rec->cap) return;  // cannot happen: cap counts every evaluation
    if (r->guided)
        for (int j = 0; j < N; j++) push(rec, x + (size_t)j * per, timestep, r->uncond, r->first + j, step);
    for (int j = 0; j < N; j++) push(rec, x + (size_t)j * per, timestep, r->y ? r->y[j] : -1, r->first + j, step);
}

static void on_step(int step, int total, void *user) {
    RecordCtx *r = user;
    r->done++;
    if (r->o && r->o->on_progress) r->o->on_progress(CALIB_PHASE_RECORD, r->done, r->total, r->o->user);
}

int calib_record(Ctx *c, Ldm *m, const RcCalib *cc, const CalibProgress *o, CalibRecord *rec, Err *e) {
    memset(rec, 0, sizeof *rec);
    int steps = sampler_real_steps(m, cc->steps);
    if (steps < 1)
        return err_set(e, ERR_VALUE, "calib.steps: %d DDIM steps do not fit the model's %d timesteps", cc->steps,
                       m->T);
    if (cc->n_samples < 1 || cc->batch < 1)
        return err_set(e, ERR_VALUE, "calib.n_samples, calib.batch: expected >= 1, found %d, %d", cc->n_samples,
                       cc->batch);
    int cond = ldm_is_class_conditional(m);
    if (cond && ldm_n_classes(m) < 2)
        return err_set(e, ERR_VALUE, "%s: a class-conditional model needs a real class besides the unconditional "
                       "label", m->cfg.path);
    int guided = cond && cc->scale != 1.0;
    ldm_latent_shape(m, &rec->C, &rec->H, &rec->W);
    size_t per = (size_t)rec->C * rec->H * rec->W;
    size_t cap;
    if (!size_mul_ok((size_t)cc->n_samples * (size_t)steps, guided ? 2u : 1u, &cap) || cap > (size_t)1 << 30 ||
        !size_mul_ok(cap, per * sizeof(float), &(size_t){0}))
        return err_set(e, ERR_VALUE, "calib: %d trajectories x %d steps are too many inputs to record",
                       cc->n_samples, steps);
    rec->cap = (int)cap;
    // zeroed: under MPI each rank fills its batches' part and the parts are merged
    rec->x = calloc(cap * per, sizeof(float));
    rec->t = calloc(cap, sizeof(float));
    rec->y = cond ? calloc(cap, sizeof(int64_t)) : NULL;
    rec->traj = calloc(cap, sizeof(int64_t));
    rec->step = calloc(cap, sizeof(int64_t));
    int B = cc->batch < cc->n_samples ? cc->batch : cc->n_samples;
    float *x = malloc((size_t)B * per * sizeof(float));
    int *y = malloc((size_t)B * sizeof(int));
    int *labels = malloc((size_t)cc->n_samples * sizeof(int));
    Rng *rng = malloc((size_t)B * sizeof(Rng));
    int rc = 0;
    if (!rec->x || !rec->t || (cond && !rec->y) || !rec->traj || !rec->step || !x || !y || !labels || !rng) {
        rc = err_set(e, ERR_NOMEM, "calib: out of memory for %zu recorded inputs", cap);
        goto done;
    }
    // classes first, from their own stream, so they do not depend on the batch size
    Rng lr;
    rng_seed(&lr, (uint64_t)cc->seed, CALIB_STREAM_LABELS);
    for (int j = 0; j < cc->n_samples; j++) labels[j] = cond ? (int)rng_below(&lr, (uint32_t)ldm_uncond_label(m)) : -1;
    // MPI: each rank samples its share of the batches; batch i's inputs have a fixed place in
    // the record (its first trajectory x steps x halves), so the merged record is the one a
    // single process makes
    int n_batches = (cc->n_samples + B - 1) / B, blo, bhi;
    dist_range(n_batches, dist_rank(), dist_size(), &blo, &bhi);
    RecordCtx r = {rec, NULL, 0, guided, ldm_uncond_label(m), 0, (long)(bhi - blo) * steps, o};
    SamplerOpts so = {0};
    so.kind = SAMPLER_DDIM;
    so.steps = cc->steps;
    so.eta = (float)cc->eta;
    so.scale = (float)cc->scale;
    so.on_step = on_step;
    so.on_input = on_input;
    so.user = &r;
    if (o && o->on_progress) o->on_progress(CALIB_PHASE_RECORD, 0, r.total, o->user);
    for (int first = blo * B; first < cc->n_samples && first < bhi * B && !rc; first += B) {
        int nb = cc->n_samples - first < B ? cc->n_samples - first : B;
        if (o && o->stop && *o->stop) {
            rc = err_set(e, ERR_INTERRUPTED, "stopped during calibration, at teacher trajectory %d of %d", first,
                         cc->n_samples);
            break;
        }
        rec->n = first * steps * (guided ? 2 : 1);
        for (int j = 0; j < nb; j++) {
            sample_initial_noise(&rng[j], (uint64_t)cc->seed, first + j, x + (size_t)j * per, per);
            y[j] = labels[first + j];
        }
        r.y = cond ? y : NULL;
        r.first = first;
        rc = sampler_run(c, m, &so, x, nb, cond ? y : NULL, rng, e);
    }
    int end = bhi * B < cc->n_samples ? bhi * B * steps * (guided ? 2 : 1) : rec->cap;
    if (!rc && bhi > blo && rec->n != end)
        rc = err_set(e, ERR_INTERNAL, "calib: recorded up to UNet input %d, expected %d", rec->n, end);
    if (!rc && dist_size() > 1) {
        if ((rc = dist_merge_f32(rec->x, cap * per, e)) || (rc = dist_merge_f32(rec->t, cap, e)) ||
            (cond && (rc = dist_merge_i64(rec->y, cap, e))) || (rc = dist_merge_i64(rec->traj, cap, e)) ||
            (rc = dist_merge_i64(rec->step, cap, e)))
            goto done;
    }
    rec->n = rec->cap;
done:
    free(x);
    free(y);
    free(labels);
    free(rng);
    if (rc) calib_record_free(rec);
    return rc;
}

int calib_pick(Rng *r, int n, int k, int64_t *idx, Err *e) {
    if (k < 1 || k > n)
        return err_set(e, ERR_VALUE, "calib.n_inputs: %d inputs asked of %d recorded (expected 1..%d)", k, n, n);
    int *perm = malloc((size_t)n * sizeof *perm);
    if (!perm) return err_set(e, ERR_NOMEM, "out of memory");
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = 0; i < k; i++) {
        int j = i + (int)rng_below(r, (uint32_t)(n - i));
        int tmp = perm[i];
        perm[i] = perm[j];
        perm[j] = tmp;
        idx[i] = perm[i];
    }
    free(perm);
    return 0;
}

int calib_record_write(const CalibRecord *rec, const int64_t *used, int n_used, const char *path, Err *e) {
    StWriter w = {0};
    int64_t n = rec->n;
    int rc = st_writer_add(&w, "x", DT_F32, 4, (int64_t[]){n, rec->C, rec->H, rec->W}, rec->x, e);
    if (!rc) rc = st_writer_add(&w, "t", DT_F32, 1, &n, rec->t, e);
    if (!rc && rec->y) rc = st_writer_add(&w, "y", DT_I64, 1, &n, rec->y, e);
    if (!rc) rc = st_writer_add(&w, "traj", DT_I64, 1, &n, rec->traj, e);
    if (!rc) rc = st_writer_add(&w, "step", DT_I64, 1, &n, rec->step, e);
    if (!rc) rc = st_writer_add(&w, "used", DT_I64, 1, (int64_t[]){n_used}, used, e);
    if (!rc) rc = st_writer_meta(&w, "effdm.kind", "calib", e);
    if (!rc) rc = st_writer_meta(&w, "effdm.format", "1", e);
    if (!rc) rc = st_write(&w, path, e);
    st_writer_free(&w);
    return rc;
}

typedef struct {
    const CalibProgress *o;
    long done, total;
} ActProgress;

// QLayer.calib_hook: one more layer reached by the calibration forward.
static void act_progress(void *user, QLayer *q, const Tensor *x) {
    ActProgress *p = user;
    p->done++;
    p->o->on_progress(CALIB_PHASE_ACTS, p->done, p->total, p->o->user);
}

// calib.act_ranges per_step: refits TALSQ entry i of every trainable layer on up to k recorded
// inputs (drawn from r without replacement) whose timestep is nearest the entry's training
// timestep. cx, ct, cy: buffers for k inputs.
static int calibrate_per_step(QModel *q, Ctx *ctx, Ldm *m, const CalibRecord *rec, int k, Rng *r, float *cx,
                              float *ct, int *cy, Err *e) {
    size_t per = (size_t)rec->C * rec->H * rec->W;
    int *near = malloc((size_t)rec->n * sizeof *near);
    if (!near) return err_set(e, ERR_NOMEM, "out of memory");
    int code = 0;
    for (int i = 0; i < q->train_sched.n && !code; i++) {
        float ti = (float)q->train_sched.timesteps[i], best = INFINITY;
        for (int j = 0; j < rec->n; j++) best = fminf(best, fabsf(rec->t[j] - ti));
        int n_near = 0;
        for (int j = 0; j < rec->n; j++)
            if (fabsf(rec->t[j] - ti) == best) near[n_near++] = j;
        int kk = n_near < k ? n_near : k;
        for (int a = 0; a < kk; a++) {  // partial Fisher-Yates: kk distinct records
            int b = a + (int)rng_below(r, (uint32_t)(n_near - a));
            int tmp = near[a];
            near[a] = near[b];
            near[b] = tmp;
            memcpy(cx + (size_t)a * per, rec->x + (size_t)near[a] * per, per * sizeof(float));
            ct[a] = rec->t[near[a]];
            cy[a] = rec->y ? (int)rec->y[near[a]] : 0;
        }
        code = qmodel_calibrate_ldm_entry(q, ctx, m, cx, ct, rec->y ? cy : NULL, kk, i, e);
    }
    free(near);
    return code;
}

int calib_student_fit(QModel *q, Ctx *ctx, Ldm *m, const QModelConfig *qc, const RcCalib *cc,
                      const CalibRecord *rec, int64_t *used, const CalibProgress *o, Err *e) {
    if (o && o->stop && *o->stop)
        return err_set(e, ERR_INTERRUPTED, "stopped during calibration, before the activation ranges");
    Rng r;
    rng_seed(&r, (uint64_t)cc->seed, CALIB_STREAM_LORA);
    int code = qmodel_init(q, m->unet, qc, m->T, &r, e);
    if (code) return code;
    float *cx = NULL, *ct = NULL;
    int *cy = NULL;
    int k = cc->n_inputs;
    rng_seed(&r, (uint64_t)cc->seed, CALIB_STREAM_PICK);
    if ((code = calib_pick(&r, rec->n, k, used, e))) goto done;
    size_t per = (size_t)rec->C * rec->H * rec->W;
    cx = malloc((size_t)k * per * sizeof(float));
    ct = malloc((size_t)k * sizeof(float));
    cy = malloc((size_t)k * sizeof(int));
    if (!cx || !ct || !cy) {
        code = err_set(e, ERR_NOMEM, "out of memory for %d calibration inputs", k);
        goto done;
    }
    for (int i = 0; i < k; i++) {
        memcpy(cx + (size_t)i * per, rec->x + (size_t)used[i] * per, per * sizeof(float));
        ct[i] = rec->t[used[i]];
        cy[i] = rec->y ? (int)rec->y[used[i]] : 0;
    }
    ActProgress ap = {o, 0, q->n_q};
    if (o && o->on_progress) {
        o->on_progress(CALIB_PHASE_ACTS, 0, ap.total, o->user);
        for (int i = 0; i < q->n_q; i++) {
            q->q[i].calib_hook = act_progress;
            q->q[i].calib_user = &ap;
        }
    }
    code = qmodel_calibrate_ldm(q, ctx, m, cx, ct, rec->y ? cy : NULL, k, e);
    for (int i = 0; i < q->n_q; i++) q->q[i].calib_hook = NULL;
    if (code) goto done;
    // the pick stream goes on: per_step draws its inputs after the shared batch's
    if (cc->act_ranges == RC_ACTR_PER_STEP) code = calibrate_per_step(q, ctx, m, rec, k, &r, cx, ct, cy, e);
done:
    free(cx);
    free(ct);
    free(cy);
    if (code) qmodel_free(q);
    return code;
}
