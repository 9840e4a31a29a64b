/* ldm_split.c: a no-grad forward or decode over a batch as sub-batches run on the threads at
   once, each thread on a context of its own (see ldm.h). The threads run the same ldm_apply_model /
   ldm_decode_first_stage on their own Ctx: their ops' OpenMP regions are nested, hence
   single-threaded (threads_set keeps one active level), and a worker's Ctx never splits again.
   Called inside another parallel region (a slot worker, train/slot_workers.c) it cuts the
   same parts and runs them on the calling thread: the same bits either way. */
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "models/ldm.h"
#include "util/threads.h"

#define SPLIT_MAX_PARTS 64
// Images per part: the shipped teacher's one-thread forward costs 1.42 ms/image at batch 2,
// 1.19 at 8, 1.14 at 16 (bench/sample --threads 1 --no-split)
#define SPLIT_ROWS 8
// Latents up to 16 x 16 positions: larger UNets keep the threads busy inside each op
#define SPLIT_MAX_POSITIONS 256
// Address space of each sub-batch context (MAP_NORESERVE: pages are only used when touched)
#define SPLIT_ARENA ((size_t)16 << 30)

static int is_split_ctx(const Ldm *m, const Ctx *c) {
    return m->split_ctx && c >= m->split_ctx && c < m->split_ctx + m->n_split_ctx;
}

// The parts depend on the batch alone, never on the thread count: a part's output depends on
// the shapes of its GEMMs (OpenBLAS rounds differently for other sizes), so this keeps every
// result the same for any number of threads (util/threads.h).
static int split_parts(int batch) {
    int p = (batch + SPLIT_ROWS - 1) / SPLIT_ROWS;
    if (p < 2) p = 2;
    if (p > SPLIT_MAX_PARTS) p = SPLIT_MAX_PARTS;
    return p < batch ? p : batch;
}

int ldm_split_applies(const Ctx *c, const Ldm *m, int batch) {
    return m->split_batch && !c->grad_enabled && !c->prof && !is_split_ctx(m, c) && batch >= 2 &&
           m->cfg.image_size * m->cfg.image_size <= SPLIT_MAX_POSITIONS && (!m->unet || !unet_has_act_hook(m->unet));
}

static int ensure_ctx(Ldm *m, int parts, Err *e) {
    if (m->n_split_ctx >= parts) return 0;
    ldm_split_free(m);
    m->split_ctx = calloc((size_t)parts, sizeof(Ctx));
    if (!m->split_ctx) return err_set(e, ERR_NOMEM, "out of memory for %d sub-batch contexts", parts);
    for (int p = 0; p < parts; p++) {
        int code = ctx_init(&m->split_ctx[p], SPLIT_ARENA, e);
        if (code) {
            m->n_split_ctx = p;
            ldm_split_free(m);
            return code;
        }
        ctx_set_grad(&m->split_ctx[p], 0);
        m->n_split_ctx = p + 1;
    }
    return 0;
}

void ldm_split_free(Ldm *m) {
    for (int p = 0; p < m->n_split_ctx; p++) ctx_free(&m->split_ctx[p]);
    free(m->split_ctx);
    m->split_ctx = NULL;
    m->n_split_ctx = 0;
}

size_t ldm_split_peak(const Ldm *m) {
    size_t s = 0;
    for (int k = 0; k < m->n_split_ctx; k++) s += m->split_ctx[k].arena.peak;
    return s;
}

// Part p of x's batch (rows [p N / parts, (p + 1) N / parts)) on context w; only the result
// stays in w's arena (the next part's intermediates reuse the memory, so a thread's parts
// share one working set), until the next split call resets w.
static Tensor *run_part(Ldm *m, Ctx *w, Tensor *x, const float *t, const int *y, int p, int parts) {
    int N = x->shape[0], i0 = (int)((long)p * N / parts), i1 = (int)((long)(p + 1) * N / parts);
    size_t per = x->n / (size_t)N;
    CtxScope s = ctx_scope_begin(w);
    int shape[TENSOR_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[0] = i1 - i0;
    Tensor *xs = tensor_from(w, x->data + (size_t)i0 * per, x->ndim, shape);
    Tensor *out = !t ? ldm_decode_first_stage(w, m, xs) : ldm_apply_model(w, m, xs, t + i0, y ? y + i0 : NULL);
    return ctx_scope_end(w, s, out);
}

// t == NULL: the decode; else the forward. Thread k of the team runs parts k, k + team, ...
// on context k.
static Tensor *split_run(Ctx *c, Ldm *m, Tensor *x, const float *t, const int *y) {
    int parts = split_parts(x->shape[0]);
    int team = threads_get() < parts ? threads_get() : parts;
    if (ensure_ctx(m, team, &c->err)) return NULL;
    Tensor *res[SPLIT_MAX_PARTS] = {0};
#pragma omp parallel num_threads(team)
    {
        int k = omp_get_thread_num(), nt = omp_get_num_threads();
        Ctx *w = &m->split_ctx[k];
        ctx_reset(w);
        for (int p = k; p < parts; p += nt) {
            res[p] = run_part(m, w, x, t, y, p, parts);
            if (!res[p]) break;
        }
    }
    for (int p = 0; p < parts; p++)
        if (!res[p]) {
            // the first failed part's context holds the error
            for (int k = 0; k < m->n_split_ctx; k++)
                if (m->split_ctx[k].err.code) {
                    c->err = m->split_ctx[k].err;
                    return NULL;
                }
            err_set(&c->err, ERR_INTERNAL, "batch split: part %d gave no output", p);
            return NULL;
        }
    int shape[TENSOR_MAX_DIMS];
    memcpy(shape, res[0]->shape, sizeof shape);
    shape[0] = x->shape[0];
    Tensor *out = tensor_new(c, res[0]->ndim, shape);
    if (!out) return NULL;
    size_t off = 0;
    for (int p = 0; p < parts; p++) {
        memcpy(out->data + off, res[p]->data, res[p]->n * sizeof(float));
        off += res[p]->n;
    }
    return out;
}

Tensor *ldm_split_apply(Ctx *c, Ldm *m, Tensor *x, const float *t, const int *y) { return split_run(c, m, x, t, y); }

Tensor *ldm_split_decode(Ctx *c, Ldm *m, Tensor *z) { return split_run(c, m, z, NULL, NULL); }
