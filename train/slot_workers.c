/* slot_workers.c: a step's gradient slots on threads of their own.

   The slots of a step are independent until their gradients are summed (distill_step.c), and
   on a small model one slot's ops are too short to keep two threads busy: the shipped
   teacher's step took 0.058 s on one thread and 0.067 - 0.078 s on two. So, as MPI ranks
   do across processes, threads take slots: each worker thread runs slot_run on a student of
   its own - a UNet clone with its own layer array over the trainer's weights
   (unet_clone_layers), a QModel restored from the trainer's state and given the trainer's
   trainable values before every step - and its own context. Each slot's work is the same
   whichever thread runs it, so the step's result is the same bits as on one thread.

   The trainer itself is the thread-0 worker. Each worker holds a student (its fake-quantized
   weights' buffers, the LoRA and tables: about the size of the trainable block plus the
   weight levels) and an arena like the trainer's, so only small UNets use it (latents of at
   most 16 x 16 positions, as the batch split). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "io/safetensors.h"
#include "io/weights.h"
#include "train/trainer_impl.h"
#include "util/threads.h"

#define WORKERS_MAX_POSITIONS 256

void slot_env_bind_grads(SlotEnv *env, float *grads, QGradZero zero) {
    qmodel_bind_grads_ex(env->q, grads, zero);
    for (int i = 0; i < env->n_dw; i++) env->dw_from[i]->grad = env->dw_to[i]->grad;
}

// The student's state written by the trainer's, read back into w->q (what resuming a run does),
// through a file in the run directory, which the run writes its checkpoints to anyway.
static int copy_state(Trainer *tr, SlotWorker *w, Err *e) {
    char path[TRAINER_PATH_MAX + 64];
    snprintf(path, sizeof path, "%s/.slot_worker_state.safetensors", tr->dir);
    StWriter sw = {0};
    WeightFile *f = NULL;
    int rc = qmodel_write_state(&tr->q, &sw, "q.", e);
    if (!rc) rc = st_write(&sw, path, e);
    if (!rc) rc = weights_open(&f, path, e);
    if (!rc) rc = qmodel_read_state(&w->q, f, "q.", e);
    weights_close(f);
    st_writer_free(&sw);
    unlink(path);
    return rc;
}

static int worker_init(Trainer *tr, SlotWorker *w, Err *e) {
    if (!(w->m = ldm_clone_unet(tr->m))) return err_set(e, ERR_NOMEM, "slot workers: out of memory");
    Rng r;
    rng_seed(&r, 0, 1);  // LoRA's initial draw, overwritten by the state
    int rc = qmodel_init(&w->q, w->m->unet, &tr->q.cfg, tr->m->T, &r, e);
    if (rc) return rc;
    w->q_ready = 1;
    if (w->q.n_grads != tr->q.n_grads || w->q.n_params != tr->q.n_params)
        return err_set(e, ERR_INTERNAL, "slot workers: the student copy has %zu gradients, the trainer's %zu",
                       w->q.n_grads, tr->q.n_grads);
    if ((rc = copy_state(tr, w, e))) return rc;
    if ((rc = ctx_init(&w->ctx, (size_t)tr->cfg.arena_mb << 20, e))) return rc;
    w->ctx_ready = 1;
    if ((rc = ctx_pool_grads(&w->ctx, (size_t)tr->cfg.arena_mb << 20, e))) return rc;
    qmodel_set_recompute(&w->q, tr->recompute);
    SlotEnv *v = &w->env;
    v->c = &w->ctx;
    v->m = w->m;
    v->q = &w->q;
    v->xin = calloc(2 * (size_t)tr->per_slot * tr->per, sizeof(float));
    v->tin = calloc(2 * (size_t)tr->per_slot, sizeof(float));
    v->yin = calloc(2 * (size_t)tr->per_slot, sizeof(int));
    if (!v->xin || !v->tin || !v->yin) return err_set(e, ERR_NOMEM, "slot workers: out of memory");
    // the trainable tensors of both students in the same order (same config): the
    // delta_w_update single pairs as the trainer's (trainer.c), and what to copy each step
    int n, m;
    QTrainable *src = trainer_trainable_list(&tr->q, &n), *dst = trainer_trainable_list(&w->q, &m);
    v->dw_from = calloc((size_t)(m > 0 ? m : 1), sizeof(Tensor *));
    v->dw_to = calloc((size_t)(m > 0 ? m : 1), sizeof(Tensor *));
    w->sync_dst = calloc((size_t)(n > 0 ? n : 1), sizeof *w->sync_dst);
    w->sync_src = calloc((size_t)(n > 0 ? n : 1), sizeof *w->sync_src);
    w->sync_n = calloc((size_t)(n > 0 ? n : 1), sizeof *w->sync_n);
    if (!src || !dst || !v->dw_from || !v->dw_to || !w->sync_dst || !w->sync_src || !w->sync_n)
        rc = err_set(e, ERR_NOMEM, "slot workers: out of memory");
    else if (n != m) rc = err_set(e, ERR_INTERNAL, "slot workers: %d trainable tensors in the copy, %d in the trainer", m, n);
    else if (tr->n_dw) v->n_dw = trainer_dw_pairs(dst, m, v->dw_from, v->dw_to);
    for (int i = 0; !rc && i < n; i++) {
        if (src[i].t->n != dst[i].t->n) {
            rc = err_set(e, ERR_INTERNAL, "slot workers: trainable tensor '%s' differs in size", src[i].name);
            break;
        }
        w->sync_dst[w->n_sync] = dst[i].t->data;
        w->sync_src[w->n_sync] = src[i].t->data;
        w->sync_n[w->n_sync++] = src[i].t->n;
    }
    free(src);
    free(dst);
    return rc;
}

static void worker_free(SlotWorker *w) {
    if (w->q_ready) qmodel_free(&w->q);
    if (w->ctx_ready) ctx_free(&w->ctx);
    ldm_free(w->m);
    free(w->env.xin);
    free(w->env.tin);
    free(w->env.yin);
    free(w->env.dw_from);
    free(w->env.dw_to);
    free(w->sync_dst);
    free(w->sync_src);
    free(w->sync_n);
    memset(w, 0, sizeof *w);
}

void trainer_workers_free(Trainer *tr) {
    for (int k = 0; k < tr->n_workers; k++) worker_free(&tr->workers[k]);
    free(tr->workers);
    free(tr->slot_err);
    tr->workers = NULL;
    tr->slot_err = NULL;
    tr->n_workers = 0;
}

int trainer_workers_ready(Trainer *tr, int slots, Err *e) {
    if (tr->workers_decided) return 0;
    tr->workers_decided = 1;
    int threads = threads_get(), team = threads < slots ? threads : slots;
    if (team < 2 || tr->prof_teacher || tr->prof_student || tr->H * tr->W > WORKERS_MAX_POSITIONS) return 0;
    tr->workers = calloc((size_t)(team - 1), sizeof *tr->workers);
    tr->slot_err = calloc((size_t)slots, sizeof *tr->slot_err);
    if (!tr->workers || !tr->slot_err) {
        trainer_workers_free(tr);
        return err_set(e, ERR_NOMEM, "slot workers: out of memory");
    }
    for (int k = 0; k < team - 1; k++) {
        tr->n_workers = k + 1;
        int rc = worker_init(tr, &tr->workers[k], e);
        if (rc) {
            trainer_workers_free(tr);
            return rc;
        }
    }
    return 0;
}

void trainer_workers_sync(Trainer *tr) {
    for (int k = 0; k < tr->n_workers; k++) {
        SlotWorker *w = &tr->workers[k];
        for (int i = 0; i < w->n_sync; i++) memcpy(w->sync_dst[i], w->sync_src[i], w->sync_n[i] * sizeof(float));
    }
}
