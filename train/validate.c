/* validate.c: the validation error of a run (docs/DESIGN.md "Formats": student vs teacher ε on a
   fixed set of held-out calibration inputs, to choose epochs and catch divergence).

   The inputs: calib.safetensors' recorded teacher UNet inputs minus those the activation
   initialisation used; of the M left, train.val_inputs evenly spaced ones (k M / V for
   k < V, so every part of the trajectories is represented), the same for the whole run.
   The error: Σ (ε_Q - ε_P)^2 / (V · C · H · W), a mean squared error per element, each
   input at the TALSQ entry of its own timestep. Inputs that share a timestep run as one
   batch (a chunk of at most 2B); each chunk's sum is taken in double, and the chunk sums
   are added in chunk order, so MPI ranks can share the chunks and agree to the bit. */
#include <stdlib.h>
#include <string.h>

#include "train/calib_inputs.h"
#include "train/trainer_impl.h"
#include "util/dist.h"

int trainer_load_val(Trainer *tr, Err *e) {
    int V = tr->cfg.train.val_inputs;
    if (tr->cfg.train.val_every <= 0 || V <= 0) return 0;
    char path[TRAINER_PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/calib.safetensors", tr->dir);
    CalibInputs ci;
    int rc = calib_inputs_read(&ci, path, tr->C, tr->H, tr->W, tr->cond, e);
    if (rc) return rc;
    int M = ci.n - ci.n_used;
    if (M < V) {
        rc = err_set(e, ERR_VALUE, "run config: train.val_inputs: %d held-out inputs wanted, %s has %d beside the %d "
                     "the activation initialisation used", V, path, M, ci.n_used);
        goto done;
    }
    int *held = malloc((size_t)M * sizeof(int));
    char *used = calloc((size_t)ci.n, 1);
    tr->val_x = malloc((size_t)V * tr->per * sizeof(float));
    tr->val_t = malloc((size_t)V * sizeof(float));
    tr->val_y = tr->cond ? malloc((size_t)V * sizeof(int)) : NULL;
    if (!held || !used || !tr->val_x || !tr->val_t || (tr->cond && !tr->val_y)) {
        free(held);
        free(used);
        rc = err_set(e, ERR_NOMEM, "out of memory for %d validation inputs", V);
        goto done;
    }
    for (int i = 0; i < ci.n_used; i++) used[ci.used[i]] = 1;
    for (int i = 0, k = 0; i < ci.n; i++)
        if (!used[i]) held[k++] = i;
    // evenly spaced, then ordered by timestep (stable) so equal timesteps form one batch
    int *sel = malloc((size_t)V * sizeof(int));
    if (!sel) {
        free(held);
        free(used);
        rc = err_set(e, ERR_NOMEM, "out of memory for %d validation inputs", V);
        goto done;
    }
    for (int k = 0; k < V; k++) sel[k] = held[(size_t)k * (size_t)M / (size_t)V];
    for (int a = 1; a < V; a++) {  // insertion sort: V is small
        int v = sel[a], b = a - 1;
        while (b >= 0 && ci.t[sel[b]] > ci.t[v]) {
            sel[b + 1] = sel[b];
            b--;
        }
        sel[b + 1] = v;
    }
    for (int k = 0; k < V; k++) {
        memcpy(tr->val_x + (size_t)k * tr->per, ci.x + (size_t)sel[k] * tr->per, tr->per * sizeof(float));
        tr->val_t[k] = ci.t[sel[k]];
        if (tr->cond) tr->val_y[k] = ci.y[sel[k]];
    }
    tr->n_val = V;
    free(sel);
    free(held);
    free(used);
done:
    calib_inputs_free(&ci);
    return rc;
}

// Inputs in the chunk starting at input k: those of its timestep, at most 2B.
static int chunk_len(const Trainer *tr, int k) {
    int n = 1;
    while (k + n < tr->n_val && tr->val_t[k + n] == tr->val_t[k] && n < 2 * tr->B) n++;
    return n;
}

int trainer_validate(Trainer *tr, volatile sig_atomic_t *stop, double *err_out, Err *e) {
    Ctx *c = &tr->ctx;
    // the chunks: runs of inputs that share a timestep, at most 2B each; each rank computes
    // its share of them, and the chunk sums are added in chunk order on every rank
    int n_chunks = 0;
    for (int k = 0; k < tr->n_val; k += chunk_len(tr, k)) n_chunks++;
    double *sums = calloc((size_t)(n_chunks > 0 ? n_chunks : 1), sizeof(double));
    if (!sums) return err_set(e, ERR_NOMEM, "out of memory for %d validation chunks", n_chunks);
    int lo, hi;
    dist_range(n_chunks, tr->rank, tr->world, &lo, &hi);
    int prev = ctx_set_grad(c, 0);
    int rc = 0;
    for (int k = 0, i = 0; k < tr->n_val && !rc; i++) {
        int n = chunk_len(tr, k);
        if (i < lo || i >= hi) {
            k += n;
            continue;
        }
        if (stop && *stop) {
            rc = ERR_INTERRUPTED;
            err_set(e, rc, "stopped during validation");
            break;
        }
        ctx_reset(c);
        const int shape[4] = {n, tr->C, tr->H, tr->W};
        const int *y = tr->cond ? tr->val_y + k : NULL;
        qmodel_enable(&tr->q, 0);
        Tensor *p = ldm_apply_model(c, tr->m, tensor_from(c, tr->val_x + (size_t)k * tr->per, 4, shape), tr->val_t + k, y);
        qmodel_enable(&tr->q, 1);
        qmodel_set_timestep(&tr->q, (int)tr->val_t[k]);
        Tensor *q = ldm_apply_model(c, tr->m, tensor_from(c, tr->val_x + (size_t)k * tr->per, 4, shape), tr->val_t + k, y);
        if (!p || !q) {
            rc = err_set(e, c->err.code ? c->err.code : ERR_INTERNAL, "validation: %s", c->err.msg);
            break;
        }
        double sum = 0;
        for (size_t j = 0; j < q->n; j++) {
            double d = (double)q->data[j] - (double)p->data[j];
            sum += d * d;
        }
        sums[i] = sum;
        k += n;
    }
    ctx_reset(c);
    ctx_set_grad(c, prev);
    // a rank's failure is its own (ranks then stop at the next exchange's vote)
    if (!rc && tr->world > 1) rc = dist_merge_f64(sums, (size_t)n_chunks, e);
    if (!rc) {
        double sum = 0;
        for (int i = 0; i < n_chunks; i++) sum += sums[i];
        *err_out = tr->n_val ? sum / ((double)tr->n_val * (double)tr->per) : 0.0;
    }
    free(sums);
    return rc;
}
