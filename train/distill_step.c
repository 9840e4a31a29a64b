/* distill_step.c: one distillation step (docs/METHOD.md "Distillation loop", 2.): teacher ε
   without gradient, student ε with TALSQ entry of t, loss, backward, AdamW, and the DDIM
   update of the trajectory with the teacher's guided ε - the reference's
   DDIMSampler_trainer.p_sample_ddim. */
#include <math.h>
#include <omp.h>
#include <string.h>

#include "train/schedule.h"
#include "train/trainer_impl.h"
#include "util/dist.h"
#include "util/clock.h"
#include "util/par.h"

int trainer_begin_epoch(Trainer *tr, Err *e) {
    const RcTrain *T = &tr->cfg.train;
    if (T->sample_selection == RC_SELECTION_ADAPTIVE) {
        int round = tr->epoch / T->selection_refresh;
        if (round != tr->sel_round) {
            int rc = trainer_select_refresh(tr, round, e);
            if (rc) return rc;
        }
        trainer_select_draw(tr);
        return 0;
    }
    // torch.randint(0, uncond, (B,)) with uncond the last label: a uniform real class
    for (int b = 0; b < tr->B; b++) {
        int v = 0;
        if (tr->cond) {
            v = (int)rng_below(&tr->rng, (uint32_t)tr->n_real);
            if (v >= tr->uncond_label) v++;  // skip the unconditional label wherever it is
        }
        tr->labels[b] = v;
    }
    rng_normal_fill(&tr->rng, tr->x, (size_t)tr->B * tr->per);
    return 0;
}

double trainer_lr_factor(const Trainer *tr) {
    const RcOptimizer *o = &tr->cfg.train.optimizer;
    int64_t total = (int64_t)tr->cfg.train.epochs * tr->S;
    return lr_schedule_factor(o->schedule, o->warmup_steps, total, tr->opt.step);
}

// Index of the first non-finite value of g[0..n), or -1.
static long first_nonfinite(const float *g, size_t n) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(g[i])) return (long)i;
    return -1;
}

static int op_failed(Ctx *c, Err *e, const char *what) {
    return err_set(e, c->err.code ? c->err.code : ERR_INTERNAL, "%s: %s", what,
                   c->err.msg[0] ? c->err.msg : "failed");
}

// One slot: trajectories [s P, (s + 1) P) (P = per_slot) at timestep t, as one UNet batch.
// The teacher's ε without gradient, the student's on the tape, the loss, and its backward
// (weight w) into the slot's own gradient block; the slot record gets the gradient, the
// guided ε that moves its x, the loss and a status (ERR_NAN: a non-finite loss, nothing
// propagated). 0, or the op's error. Runs on env's model, student and context: the trainer's
// own (env->primary: it alone keeps the split times and memory marks), or a slot worker's
// (slot_workers.c), which may run at the same time as the others.
static int slot_run(Trainer *tr, SlotEnv *env, int s, int t, float w, Err *e) {
    Ctx *c = env->c;
    ctx_reset(c);
    double t0 = clock_seconds();
    float *rec = tr->slots + (size_t)s * tr->rec, *eps = rec + tr->q.n_grads;
    const int P = tr->per_slot, b0 = s * P, rows = tr->pair ? 2 * P : P;
    const size_t n = (size_t)P * tr->per;
    float *tail = eps + n;
    const int shape[4] = {rows, tr->C, tr->H, tr->W};
    const float scale = (float)tr->cfg.train.scale;

    // x_in = cat([x] * 2), c_in = cat([unconditional_conditioning, c]) as the reference
    float *xin = env->xin, *tin = env->tin;
    int *yin = env->yin;
    memcpy(xin, tr->x + (size_t)b0 * tr->per, n * sizeof(float));
    if (tr->pair) memcpy(xin + n, xin, n * sizeof(float));
    for (int i = 0; i < rows; i++) tin[i] = (float)t;
    if (tr->cond) {
        for (int b = 0; b < P; b++) {
            if (tr->pair) {
                yin[b] = tr->uncond_label;
                yin[P + b] = tr->labels[b0 + b];
            } else {
                yin[b] = tr->labels[b0 + b];
            }
        }
    }
    const int *y = tr->cond ? yin : NULL;

    // teacher: FP path, grad mode off (records nothing), intermediates freed by the scope
    qmodel_enable(env->q, 0);
    c->prof = env->primary ? tr->prof_teacher : NULL;
    int prev = ctx_set_grad(c, 0);
    // the teacher's own high-water mark (TrainerMemory): restart the arena's, then restore it
    size_t peak0 = c->arena.peak, used0 = c->arena.used;
    c->arena.peak = used0;
    CtxScope sc = ctx_scope_begin(c);
    // the FP teacher reads the model only: its rows may run on the threads at once (ldm.h)
    env->m->split_batch = 1;
    Tensor *p = ldm_apply_model(c, env->m, tensor_from(c, xin, 4, shape), tin, y);
    env->m->split_batch = 0;
    p = ctx_scope_end(c, sc, p);
    ctx_set_grad(c, prev);
    if (env->primary) {
        tr->teacher_peak = c->arena.peak - used0 + ldm_split_peak(env->m);
        tr->teacher_kept = c->arena.used - used0;
        tr->teacher_nodes = c->n_nodes;
    }
    if (c->arena.peak < peak0) c->arena.peak = peak0;
    if (!p) return op_failed(c, e, "teacher forward");
    if (!tr->pair)
        memcpy(eps, p->data, n * sizeof(float));
    else if (scale == 1.0f)  // upstream calls the model once, conditionally, at scale 1
        memcpy(eps, p->data + n, n * sizeof(float));
    else
        distill_guided(eps, p->data, n, scale);
    double t1 = clock_seconds();
    if (env->primary) tr->split[0] += t1 - t0;

    // student: fake-quantized path at the TALSQ entry of t, on the tape; with the step's shared
    // weights (trainer_step) its d W_eff goes to the record's end, the weight path's backward
    // runs once for all slots after the exchange
    c->prof = env->primary ? tr->prof_student : NULL;
    if (tr->shared_w) {
        float *dw = rec + tr->rec_dw;
        memset(dw, 0, tr->n_sw * sizeof(float));
        qmodel_use_step_weights(env->q, tr->sw_eff, dw);
    }
    qmodel_enable(env->q, 1);
    qmodel_set_timestep(env->q, t);
    ctx_set_grad(c, 1);
    Tensor *qo = ldm_apply_model(c, env->m, tensor_from(c, xin, 4, shape), tin, y);
    Tensor *loss = distill_loss(c, &tr->loss, qo, p);
    if (!loss) {
        qmodel_use_step_weights(env->q, NULL, NULL);
        return op_failed(c, e, "student forward");
    }
    if (tr->cfg.train.trajectory == RC_TRAJ_STUDENT) {  // the student's own guided ε drives x_{t-1}
        if (!tr->pair)
            memcpy(eps, qo->data, n * sizeof(float));
        else if (scale == 1.0f)
            memcpy(eps, qo->data + n, n * sizeof(float));
        else
            distill_guided(eps, qo->data, n, scale);
    }
    tail[0] = loss->data[0];
    double t2 = clock_seconds();
    if (env->primary) tr->split[1] += t2 - t1;
    if (!isfinite(tail[0])) {
        tape_clear(c);
        qmodel_use_step_weights(env->q, NULL, NULL);
        tail[1] = (float)ERR_NAN;
        return 0;
    }
    // zeroes the slot's gradient block; with the step's shared weights only what the backward
    // writes (the activation quantizers'): the weight paths' part stays 0 (trainer_impl.h)
    slot_env_bind_grads(env, rec, tr->shared_w ? QGRAD_ZERO_ACT : QGRAD_ZERO_ALL);
    if (env->primary) tr->step_arena_peak = c->arena.used;  // everything the backward reads is allocated by now
    int brc = tape_backward(c, loss, &w);
    qmodel_use_step_weights(env->q, NULL, NULL);
    if (brc) return op_failed(c, e, "backward");
    ctx_reset(c);
    if (env->primary) tr->split[2] += clock_seconds() - t2;
    return 0;
}

/* The weight path once per step (tr->shared_w): every slot reads the same W_eff, so it is
   computed before the slots, one trainable layer per thread at a time; after the exchange the
   slots' d W_eff are summed in slot order and the weight path's backward runs once, again per
   layer, on every rank alike. Each layer's work is the same whichever thread runs it. */
static void step_weights_forward(Trainer *tr) {
    QModel *q = &tr->q;
    PAR_FOR(schedule(dynamic, 1), q->n_q > 1,
    for (int k = 0; k < q->n_q; k++) {
        if (q->q[k].special) continue;
        size_t off = tr->sw_off[k];
        qlayer_weight_step(&q->q[k], tr->sw_pre + off, tr->sw_eff + off);
    });
}

// dst[i] = the n floats at src of every slot record (stride tr->rec), added in slot order.
// On the calling thread.
static void slot_sum_serial(const Trainer *tr, float *dst, const float *src, size_t n) {
    const int NS = tr->n_slots;
    for (size_t i = 0; i < n; i++) {
        float acc = src[i];
        for (int s = 1; s < NS; s++) acc += src[(size_t)s * tr->rec + i];
        dst[i] = acc;
    }
}

// slot_sum_serial over the threads, in chunks (each element's sum is the same whichever
// thread adds it).
#define SLOT_SUM_CHUNK 4096
static void sum_slots(const Trainer *tr, float *dst, const float *src, size_t n) {
    PAR_FOR(schedule(static), n * (size_t)tr->n_slots >= 32768,
    for (size_t i0 = 0; i0 < n; i0 += SLOT_SUM_CHUNK)
        slot_sum_serial(tr, dst + i0, src + i0, n - i0 < SLOT_SUM_CHUNK ? n - i0 : SLOT_SUM_CHUNK););
}

// Each layer's d W_eff is summed over the slots by the thread that runs the layer's
// weight-path backward, right before it: the sum stays in that core's cache instead of a
// separate pass over all layers first.
static void step_weights_backward(Trainer *tr) {
    QModel *q = &tr->q;
    float *d = tr->sw_dsum;
    const float *src = tr->slots + tr->rec_dw;
    Ctx *c = &tr->ctx;
    PAR_FOR(schedule(dynamic, 1), q->n_q > 1,
    for (int k = 0; k < q->n_q; k++) {
        if (q->q[k].special) continue;
        size_t off = tr->sw_off[k];
        slot_sum_serial(tr, d + off, src + off, q->q[k].layer->weight.n);
        qlayer_weight_step_backward(c, &q->q[k], d + off, tr->sw_pre + off, tr->sw_dpre + off);
    });
}

/* One optimizer step. The batch's trajectories are cut into gradient slots
   (train.grad_slots; by default one per trajectory); each slot runs as one UNet batch into
   its own gradient block, each rank computes its share of the slots (util/dist.h), and the
   blocks are exchanged and summed in slot order on every rank. So the gradient, and all
   that follows, is the same bits for any rank count up to the slot count and any thread
   count: `mpirun -np 2` reproduces one process. */
int trainer_step(Trainer *tr, float *loss_out, double *lr_out, Err *e) {
    const int index = tr->S - 1 - tr->step, t = tr->ddim.timesteps[index];
    const int B = tr->B, NS = tr->n_slots;
    const size_t n = (size_t)B * tr->per, ng = tr->q.n_grads, ne = (size_t)tr->per_slot * tr->per;
    for (int i = 0; i < 4; i++) tr->split[i] = 0;
    tr->failure_shared = 0;

    // equalize: the step's loss over its running mean of the previous epochs (a constant)
    // ddim: equalize, then how much the step's ε error moves x_{t-1} (distill_loss.h)
    // mean reduction: a slot's loss is the mean over its trajectories, the batch's the mean
    // of the slots'
    float w = 1.0f;
    RcStepWeighting sw = tr->cfg.train.step_weighting;
    if (sw != RC_STEPW_NONE && tr->stepw_count[tr->step] > 0 && tr->stepw_mean[tr->step] > 0)
        w = (float)(1.0 / tr->stepw_mean[tr->step]);
    if (sw == RC_STEPW_DDIM) w *= (float)distill_ddim_weight(&tr->ddim, index);
    const int mean = tr->cfg.train.loss_reduction == RC_REDUCE_MEAN;
    if (mean) w /= (float)NS;

    int lo, hi, rc = 0;
    dist_range(NS, tr->rank, tr->world, &lo, &hi);
    if (tr->shared_w) {  // in the split: the student's forward
        double t0 = clock_seconds();
        step_weights_forward(tr);
        tr->split[1] += clock_seconds() - t0;
    }
    for (int s = lo; s < hi; s++) memset(tr->slots + (size_t)s * tr->rec + ng + ne, 0, SLOT_TAIL * sizeof(float));
    if ((rc = trainer_workers_ready(tr, hi - lo, e))) return rc;
    if (tr->n_workers == 0) {
        for (int s = lo; s < hi; s++)
            if (!rc && (rc = slot_run(tr, &tr->env, s, t, w, e))) tr->slots[(size_t)s * tr->rec + ng + ne + 1] = (float)rc;
    } else {
        // the slots on the trainer's thread and its workers' (slot_workers.c), each slot's
        // work the same as above, so the records are too; the first failed slot decides
        int team = 1 + tr->n_workers;
        trainer_workers_sync(tr);
#pragma omp parallel num_threads(team)
        {
            int k = omp_get_thread_num(), nt = omp_get_num_threads();
            SlotEnv *env = k == 0 ? &tr->env : &tr->workers[k - 1].env;
            for (int s = lo + k; s < hi; s += nt) {
                Err *es = &tr->slot_err[s - lo];
                *es = (Err){0};
                int r = slot_run(tr, env, s, t, w, es);
                if (r) tr->slots[(size_t)s * tr->rec + ng + ne + 1] = (float)r;
            }
        }
        for (int s = lo; s < hi && !rc; s++) {
            int r = (int)tr->slots[(size_t)s * tr->rec + ng + ne + 1];
            if (!r || r == ERR_NAN) continue;  // a non-finite loss is decided after the exchange
            *e = tr->slot_err[s - lo];
            rc = e->code ? e->code : err_set(e, r, "gradient slot %d failed", s);
        }
    }
    // this rank's stop request rides on its first slot, so every rank stops at the same step
    if (tr->stop_flag && *tr->stop_flag) tr->slots[(size_t)lo * tr->rec + ng + ne + 2] = 1.0f;
    trainer_bind_grads_ex(tr, tr->opt.grad, QGRAD_ZERO_NONE);  // written below (sum_slots)
    double t3 = clock_seconds();
    if (dist_gather_records(tr->slots, tr->rec, NS, e)) return e->code;

    // the first failed slot decides, the same on every rank
    tr->stop_all = 0;
    tr->failure_shared = 1;
    float raw = 0.0f;
    for (int s = 0; s < NS; s++) {
        const float *tail = tr->slots + (size_t)s * tr->rec + ng + ne;
        if (tail[2] != 0.0f) tr->stop_all = 1;
        int status = (int)tail[1];
        if (status == ERR_NAN)
            return err_set(e, ERR_NAN, "epoch %d/%d, step %d/%d (t = %d): the loss is %g (gradient slot %d)",
                           tr->epoch + 1, tr->cfg.train.epochs, tr->step + 1, tr->S, t, (double)tail[0], s);
        if (status) {
            if (s >= lo && s < hi) {  // ours: e holds the message
                tr->failure_shared = 0;
                return rc;
            }
            int who = 0;
            for (int r = 0; r < tr->world; r++) {
                int l, h;
                dist_range(NS, r, tr->world, &l, &h);
                if (s >= l && s < h) who = r;
            }
            return err_set(e, status, "epoch %d/%d, step %d/%d: rank %d failed on gradient slot %d (its message "
                           "above)", tr->epoch + 1, tr->cfg.train.epochs, tr->step + 1, tr->S, who, s);
        }
        raw += tail[0];
    }
    if (mean) raw /= (float)NS;
    *loss_out = raw;

    // the slots' gradients summed in slot order, their ε gathered for the trajectory update;
    // with the step's shared weights only the ranges the slots write (the rest of every record
    // is 0: the sum would be +0 there, which the memset writes)
    if (tr->shared_w) {
        memset(tr->opt.grad, 0, ng * sizeof(float));
        for (size_t r = 0; r < tr->n_act; r++)
            sum_slots(tr, tr->opt.grad + tr->act_off[r], tr->slots + tr->act_off[r], tr->act_len[r]);
    } else {
        sum_slots(tr, tr->opt.grad, tr->slots, ng);
    }
    double post = 0;
    if (tr->shared_w) {  // adds the weight paths' gradients into g; in the split: the backward
        double t0 = clock_seconds();
        step_weights_backward(tr);
        post = clock_seconds() - t0;
        tr->split[2] += post;
    }
    for (int s = 0; s < NS; s++)
        memcpy(tr->eps_g + (size_t)s * ne, tr->slots + (size_t)s * tr->rec + ng, ne * sizeof(float));
    tr->failure_shared = 0;
    long bad = first_nonfinite(tr->opt.grad, tr->opt.used);
    if (bad >= 0) {
        adamw_zero_grad(&tr->opt);
        tr->failure_shared = 1;
        return err_set(e, ERR_NAN, "epoch %d/%d, step %d/%d (t = %d): gradient element %ld is not finite (loss %g)",
                       tr->epoch + 1, tr->cfg.train.epochs, tr->step + 1, tr->S, t, bad, (double)raw);
    }

    // AdamW: every group's base rate times the schedule factor (adamw's own schedule is off)
    double f = trainer_lr_factor(tr);
    for (int gi = 0; gi < tr->opt.n_groups; gi++) tr->opt.groups[gi].lr = tr->base_lr[gi] * f;
    adamw_step(&tr->opt);
    // no adamw_zero_grad: the next step writes every element of opt.grad before it reads one
    // (the memset and sums above)
    *lr_out = tr->cfg.train.optimizer.lr_act * f;

    double cnt = (double)tr->stepw_count[tr->step];
    tr->stepw_mean[tr->step] = (tr->stepw_mean[tr->step] * cnt + (double)raw) / (cnt + 1.0);
    tr->stepw_count[tr->step]++;

    // x_{t-1} from the guided ε of the teacher (or, trajectory student, the student's; eta
    // noise from the run's RNG, drawn for the whole batch on every rank)
    int noisy = tr->ddim.sigmas[index] != 0.0f;
    if (noisy) rng_normal_fill(&tr->rng, tr->noise, n);
    ddim_update(&tr->ddim, index, tr->x, tr->eps_g, noisy ? tr->noise : NULL, tr->x, NULL, n);
    tr->last_loss = raw;
    tr->step++;
    tr->split[3] = clock_seconds() - t3 - post;
    return 0;
}
