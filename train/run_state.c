/* run_state.c: state.safetensors and best.safetensors of a run directory.

   state.safetensors holds everything an exact resume needs, beside the student's own state
   (qmodel_write_state, prefix "q."):
     opt.m, opt.v       F32 (n)          AdamW moments over the flat gradient block
     opt.step           I64 (1)          optimizer steps taken
     opt.lr_lora        F64 (layers)     LoRA learning rates fixed when fine-tuning started
     train.position     I64 (4)          epoch, step (next to run; = steps: epoch end pending),
                                         drawn (the epoch's labels / x_T are drawn), init_val_done
     train.x            F32 (B, C, H, W) x_t of the trajectory at `step`
     train.labels       I64 (B)          the epoch's class labels
     train.rng          I64 (2)          the run RNG's PCG32 state and inc (bit patterns)
     train.stepw_mean   F64 (S)          running mean of each step index's raw loss
     train.stepw_count  I64 (S)
     train.best         I64 (2)          has_best, best_epoch (-1: the starting model)
     train.best_val     F64 (1)
     train.val_start    F64 (3)          the starting model's sampled validation (mse, fd, real; NaN:
                                         not measured; absent in states of older versions)
     train.last_loss    F32 (1)
     train.selection    I64 (2 + n)      train.sample_selection adaptive only: the pool round, n, the
                                         n pool indices kept (train/sample_select.c)
   with metadata effdm.kind = "run-state", effdm.format = "1", the position as text. It holds
   only what the computation determines, so runs on any thread or MPI rank count write the
   same bytes (cmp them). What the machine determines goes beside it, in state.json, written
   right after it: {"seconds": training seconds so far, "ranks": MPI ranks, "threads": threads
   per rank, "fp_gemm": the FP32 GEMM kernel, autograd/ops/gemm_util.h} (informational; a
   missing or unreadable state.json means 0 s and 1 rank; resuming with another FP32 GEMM
   kernel is correct but not bit-identical, and finetune says so). States
   of older versions hold train.seconds F64 (1) themselves, and it is read.
   A calibrated run directory's state.safetensors has the q.* tensors only: fine-tuning
   starts from it.
   Both files carry effdm.crc32 (the CRC-32 of their data, checked before loading). Each
   save keeps the state it replaces as state.prev.safetensors; when state.safetensors is
   unreadable or fails its checksum, run_state_load takes the previous one and says so (the
   steps since are recomputed, to the same bits).
   best.safetensors: the q.* state of the best validation epoch, best.epoch I64 (1),
   best.val F64 (1), metadata effdm.kind = "best-state".
*/
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cjson/cJSON.h>

#include "autograd/ops/gemm_util.h"
#include "io/dtype.h"
#include "io/fileio.h"
#include "io/safetensors.h"
#include "io/weights.h"
#include "train/trainer_impl.h"
#include "util/threads.h"

// Values that only exist as converted copies while a writer holds pointers to them.
typedef struct {
    int64_t step, position[4], rng[2], best[2], *labels, *sel;
    double best_val, seconds;
    float last_loss;
} StateScalars;

static int add(StWriter *w, const char *name, DType dt, int ndim, const int64_t *shape, const void *data, Err *e) {
    return st_writer_add(w, name, dt, ndim, shape, data, e);
}

static void state_path(const Trainer *tr, const char *file, char *out, size_t size) {
    snprintf(out, size, "%s/%s", tr->dir, file);
}

// Keeps the state about to be replaced as state.prev.safetensors: a hard link made under a
// temporary name and renamed over the old one, so at every moment state.safetensors or
// state.prev.safetensors (usually both) is a complete checkpoint. Without hard links (some
// file systems) the state is renamed instead; run_state_load falls back to prev either way.
static void keep_previous(const Trainer *tr) {
    char cur[TRAINER_PATH_MAX + 32], prev[TRAINER_PATH_MAX + 32], tmp[TRAINER_PATH_MAX + 48];
    state_path(tr, "state.safetensors", cur, sizeof cur);
    state_path(tr, "state.prev.safetensors", prev, sizeof prev);
    snprintf(tmp, sizeof tmp, "%s.tmp", prev);
    if (access(cur, F_OK) != 0) return;
    unlink(tmp);
    if (link(cur, tmp) == 0) {
        if (rename(tmp, prev) != 0) unlink(tmp);
    } else {
        rename(cur, prev);
    }
}

// train.selection: the adaptive selection's round, its kept count, the kept pool indices.
static int add_selection(Trainer *tr, StWriter *w, StateScalars *s, Err *e) {
    const int64_t n = 2 + (int64_t)tr->n_sel;
    if (!(s->sel = calloc((size_t)n, sizeof(int64_t)))) return err_set(e, ERR_NOMEM, "out of memory saving the run state");
    s->sel[0] = tr->sel_round;
    s->sel[1] = tr->n_sel;
    for (int k = 0; k < tr->n_sel; k++) s->sel[2 + k] = tr->sel[k];
    return add(w, "train.selection", DT_I64, 1, &n, s->sel, e);
}

int run_state_save(Trainer *tr, Err *e) {
    StWriter w = {.checksum = 1};
    StateScalars s = {0};
    int rc = 0;
    s.labels = calloc((size_t)tr->B, sizeof(int64_t));
    if (!s.labels) return err_set(e, ERR_NOMEM, "out of memory saving the run state");
    for (int b = 0; b < tr->B; b++) s.labels[b] = tr->labels[b];
    s.step = tr->opt.step;
    s.position[0] = tr->epoch;
    s.position[1] = tr->step;
    s.position[2] = tr->drawn;
    s.position[3] = tr->init_val_done;
    memcpy(&s.rng[0], &tr->rng.state, sizeof(int64_t));
    memcpy(&s.rng[1], &tr->rng.inc, sizeof(int64_t));
    s.best[0] = tr->has_best;
    s.best[1] = tr->best_epoch;
    s.best_val = tr->best_val;
    s.last_loss = tr->last_loss;
    const int64_t n_opt = (int64_t)tr->opt.used, one = 1, two = 2, three = 3, four = 4, S = tr->S, nl = tr->n_tl, B = tr->B;
    const int64_t xshape[4] = {tr->B, tr->C, tr->H, tr->W};
    char pos[64];
    snprintf(pos, sizeof pos, "%d/%d", tr->epoch, tr->cfg.train.epochs);
    char stp[64];
    snprintf(stp, sizeof stp, "%d/%d", tr->step, tr->S);
    if ((rc = qmodel_write_state(&tr->q, &w, "q.", e)) || (rc = add(&w, "opt.m", DT_F32, 1, &n_opt, tr->opt.m, e)) ||
        (rc = add(&w, "opt.v", DT_F32, 1, &n_opt, tr->opt.v, e)) ||
        (rc = add(&w, "opt.step", DT_I64, 1, &one, &s.step, e)) ||
        (rc = add(&w, "opt.lr_lora", DT_F64, 1, &nl, tr->lr_lora, e)) ||
        (rc = add(&w, "train.position", DT_I64, 1, &four, s.position, e)) ||
        (rc = add(&w, "train.x", DT_F32, 4, xshape, tr->x, e)) ||
        (rc = add(&w, "train.labels", DT_I64, 1, &B, s.labels, e)) ||
        (rc = add(&w, "train.rng", DT_I64, 1, &two, s.rng, e)) ||
        (rc = add(&w, "train.stepw_mean", DT_F64, 1, &S, tr->stepw_mean, e)) ||
        (rc = add(&w, "train.stepw_count", DT_I64, 1, &S, tr->stepw_count, e)) ||
        (rc = add(&w, "train.best", DT_I64, 1, &two, s.best, e)) ||
        (rc = add(&w, "train.best_val", DT_F64, 1, &one, &s.best_val, e)) ||
        (rc = add(&w, "train.val_start", DT_F64, 1, &three, tr->val_start, e)) ||
        (rc = add(&w, "train.last_loss", DT_F32, 1, &one, &s.last_loss, e)) ||
        (tr->sel && tr->sel_round >= 0 && (rc = add_selection(tr, &w, &s, e))) ||
        (rc = st_writer_meta(&w, "effdm.kind", "run-state", e)) || (rc = st_writer_meta(&w, "effdm.format", "1", e)) ||
        (rc = st_writer_meta(&w, "effdm.epoch", pos, e)) || (rc = st_writer_meta(&w, "effdm.step", stp, e)))
        goto done;
    char path[TRAINER_PATH_MAX + 32];
    state_path(tr, "state.safetensors", path, sizeof path);
    keep_previous(tr);
    if ((rc = st_write(&w, path, e))) goto done;
    char json[200];
    int n = snprintf(json, sizeof json, "{\"seconds\": %.3f, \"ranks\": %d, \"threads\": %d, \"fp_gemm\": \"%s\"}\n",
                     tr->seconds, tr->world, threads_get(), gemm_kernel_name(gemm_kernel_get()));
    state_path(tr, "state.json", path, sizeof path);
    AtomicFile af;
    if (!(rc = atomic_open(&af, path, e))) {
        atomic_write(&af, json, (size_t)n);
        rc = atomic_commit(&af, e);
    }
done:
    st_writer_free(&w);
    free(s.labels);
    free(s.sel);
    return rc;
}

int run_state_save_best(Trainer *tr, Err *e) {
    StWriter w = {.checksum = 1};
    int64_t epoch = tr->best_epoch, one = 1;
    double val = tr->best_val;
    int rc;
    if (!(rc = qmodel_write_state(&tr->q, &w, "q.", e)) && !(rc = add(&w, "best.epoch", DT_I64, 1, &one, &epoch, e)) &&
        !(rc = add(&w, "best.val", DT_F64, 1, &one, &val, e)) &&
        !(rc = st_writer_meta(&w, "effdm.kind", "best-state", e)) &&
        !(rc = st_writer_meta(&w, "effdm.format", "1", e))) {
        char path[TRAINER_PATH_MAX + 32];
        state_path(tr, "best.safetensors", path, sizeof path);
        rc = st_write(&w, path, e);
    }
    st_writer_free(&w);
    return rc;
}

// Reads tensor `name` of dtype dt and numel n into dst (raw bytes). ERR_KEY / ERR_DTYPE /
// ERR_SHAPE naming the file and tensor.
static int read_exact(WeightFile *f, const char *name, DType dt, size_t n, void *dst, Err *e) {
    const WeightInfo *wi = weights_find(f, name);
    if (!wi) return err_set(e, ERR_KEY, "%s: tensor '%s' is missing", weights_path(f), name);
    if (wi->dtype != dt)
        return err_set(e, ERR_DTYPE, "%s: tensor '%s': expected %s, found %s", weights_path(f), name, dtype_name(dt),
                       dtype_name(wi->dtype));
    if (wi->numel != n)
        return err_set(e, ERR_SHAPE, "%s: tensor '%s': expected %zu elements for this run config, found %zu",
                       weights_path(f), name, n, wi->numel);
    return weights_read_raw(f, name, dst, n * dtype_size(dt), e);
}

// Reads train.selection (when the state has one) into tr, checked against the pool size.
static int load_selection(Trainer *tr, WeightFile *f, Err *e) {
    const WeightInfo *wi = weights_find(f, "train.selection");
    if (!wi || !tr->sel) return 0;
    const int P = tr->cfg.train.selection_pool;
    int64_t *v = calloc(wi->numel ? wi->numel : 1, sizeof *v);
    if (!v) return err_set(e, ERR_NOMEM, "out of memory reading the run state");
    int rc = read_exact(f, "train.selection", DT_I64, wi->numel, v, e);
    if (!rc && (wi->numel < 3 || v[0] < 0 || v[1] < 1 || v[1] > P || (size_t)v[1] + 2 != wi->numel))
        rc = err_set(e, ERR_FORMAT, "%s: train.selection: expected round, count (1..%d) and that many pool indices",
                     weights_path(f), P);
    for (size_t k = 2; !rc && k < wi->numel; k++)
        if (v[k] < 0 || v[k] >= P)
            rc = err_set(e, ERR_VALUE, "%s: train.selection[%zu] = %lld is not an index of the pool of %d", weights_path(f),
                         k, (long long)v[k], P);
    if (!rc) {
        tr->sel_round = (int)v[0];
        tr->n_sel = (int)v[1];
        for (int k = 0; k < tr->n_sel; k++) tr->sel[k] = (int)v[2 + k];
    }
    free(v);
    return rc;
}

// The train.* / opt.* part of a run state.
static int load_run(Trainer *tr, WeightFile *f, Err *e) {
    StateScalars s = {0};
    int rc;
    s.labels = calloc((size_t)tr->B, sizeof(int64_t));
    if (!s.labels) return err_set(e, ERR_NOMEM, "out of memory reading the run state");
    if ((rc = read_exact(f, "opt.m", DT_F32, tr->opt.used, tr->opt.m, e)) ||
        (rc = read_exact(f, "opt.v", DT_F32, tr->opt.used, tr->opt.v, e)) ||
        (rc = read_exact(f, "opt.step", DT_I64, 1, &s.step, e)) ||
        (rc = read_exact(f, "opt.lr_lora", DT_F64, (size_t)tr->n_tl, tr->lr_lora, e)) ||
        (rc = read_exact(f, "train.position", DT_I64, 4, s.position, e)) ||
        (rc = read_exact(f, "train.x", DT_F32, (size_t)tr->B * tr->per, tr->x, e)) ||
        (rc = read_exact(f, "train.labels", DT_I64, (size_t)tr->B, s.labels, e)) ||
        (rc = read_exact(f, "train.rng", DT_I64, 2, s.rng, e)) ||
        (rc = read_exact(f, "train.stepw_mean", DT_F64, (size_t)tr->S, tr->stepw_mean, e)) ||
        (rc = read_exact(f, "train.stepw_count", DT_I64, (size_t)tr->S, tr->stepw_count, e)) ||
        (rc = read_exact(f, "train.best", DT_I64, 2, s.best, e)) ||
        (rc = read_exact(f, "train.best_val", DT_F64, 1, &s.best_val, e)) ||
        (rc = read_exact(f, "train.last_loss", DT_F32, 1, &s.last_loss, e)))
        goto done;
    s.seconds = tr->seconds;  // state.json's (run_state_load), unless an older state holds it
    if (weights_find(f, "train.seconds") && (rc = read_exact(f, "train.seconds", DT_F64, 1, &s.seconds, e)))
        goto done;
    tr->val_start[0] = tr->val_start[1] = tr->val_start[2] = NAN;
    if (weights_find(f, "train.val_start") && (rc = read_exact(f, "train.val_start", DT_F64, 3, tr->val_start, e)))
        goto done;
    int64_t ep = s.position[0], st = s.position[1];
    if (ep < 0 || ep > tr->cfg.train.epochs || st < 0 || st > tr->S || (ep == tr->cfg.train.epochs && st != 0) ||
        s.step != ep * tr->S + st || (s.rng[1] & 1) == 0) {
        rc = err_set(e, ERR_FORMAT, "%s: inconsistent run position (epoch %lld, step %lld, %lld optimizer steps) for "
                     "%d epochs of %d steps", weights_path(f), (long long)ep, (long long)st, (long long)s.step,
                     tr->cfg.train.epochs, tr->S);
        goto done;
    }
    for (int b = 0; b < tr->B; b++) {
        if (tr->cond && (s.labels[b] < 0 || s.labels[b] >= ldm_n_classes(tr->m))) {
            rc = err_set(e, ERR_VALUE, "%s: train.labels[%d] = %lld is not a label of the model", weights_path(f), b,
                         (long long)s.labels[b]);
            goto done;
        }
        tr->labels[b] = (int)s.labels[b];
    }
    tr->opt.step = s.step;
    tr->epoch = (int)ep;
    tr->step = (int)st;
    tr->drawn = s.position[2] != 0;
    tr->init_val_done = s.position[3] != 0;
    memcpy(&tr->rng.state, &s.rng[0], sizeof(int64_t));
    memcpy(&tr->rng.inc, &s.rng[1], sizeof(int64_t));
    tr->has_best = s.best[0] != 0;
    tr->best_epoch = (int)s.best[1];
    tr->best_val = s.best_val;
    tr->seconds = s.seconds;
    tr->last_loss = s.last_loss;
    if ((rc = load_selection(tr, f, e))) goto done;
    tr->resumed = 1;
done:
    free(s.labels);
    return rc;
}

// state.json beside the state: seconds and ranks, informational (0 s, 1 rank when absent).
static void read_state_json(Trainer *tr) {
    char path[TRAINER_PATH_MAX + 32];
    state_path(tr, "state.json", path, sizeof path);
    tr->seconds = 0;
    tr->saved_ranks = 1;
    tr->saved_fp_gemm[0] = '\0';
    unsigned char *buf;
    size_t n;
    Err ignored = {0};
    if (file_read_all(path, &buf, &n, &ignored)) return;
    cJSON *j = cJSON_ParseWithLength((const char *)buf, n);
    free(buf);
    const cJSON *sec = cJSON_GetObjectItemCaseSensitive(j, "seconds");
    const cJSON *ranks = cJSON_GetObjectItemCaseSensitive(j, "ranks");
    if (cJSON_IsNumber(sec) && isfinite(sec->valuedouble) && sec->valuedouble >= 0) tr->seconds = sec->valuedouble;
    if (cJSON_IsNumber(ranks) && ranks->valueint >= 1) tr->saved_ranks = ranks->valueint;
    const cJSON *gemm = cJSON_GetObjectItemCaseSensitive(j, "fp_gemm");
    if (cJSON_IsString(gemm)) snprintf(tr->saved_fp_gemm, sizeof tr->saved_fp_gemm, "%s", gemm->valuestring);
    cJSON_Delete(j);
}

// Loads one state file (checksum first, when it has one) into tr.
static int load_file(Trainer *tr, const char *path, Err *e) {
    StFile sf;
    int rc = st_open(&sf, path, e);
    if (!rc) {
        rc = st_verify(&sf, e);
        st_close(&sf);
    }
    if (rc) return rc;
    WeightFile *f;
    if ((rc = weights_open(&f, path, e))) return rc;
    if (!(rc = qmodel_read_state(&tr->q, f, "q.", e)) && weights_find(f, "train.position")) rc = load_run(tr, f, e);
    weights_close(f);
    return rc;
}

int run_state_load(Trainer *tr, Err *e) {
    char path[TRAINER_PATH_MAX + 32], prev[TRAINER_PATH_MAX + 32];
    state_path(tr, "state.safetensors", path, sizeof path);
    state_path(tr, "state.prev.safetensors", prev, sizeof prev);
    read_state_json(tr);
    tr->open_note[0] = '\0';
    Err first = {0};
    int rc = load_file(tr, path, &first);
    if (!rc) return 0;
    if (access(prev, F_OK) != 0) return err_set(e, first.code, "%s", first.msg);
    // the checkpoint before it: the run goes back some steps and recomputes them (the same
    // bits, so the result is unchanged)
    Err second = {0};
    tr->resumed = 0;
    tr->seconds = 0;  // state.json belongs to the newer file
    if (load_file(tr, prev, &second))
        return err_set(e, first.code, "%s; the previous checkpoint is no better: %s", first.msg, second.msg);
    snprintf(tr->open_note, sizeof tr->open_note, "%.400s; resuming from the checkpoint before it, %.300s (epoch %d, "
             "step %d)", first.msg, prev, tr->epoch + 1, tr->step);
    return 0;
}
