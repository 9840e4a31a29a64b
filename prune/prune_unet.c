/* prune_ff.c: which FeedForward units to keep, UDFC's closed form, and the pruned UNet (see
   prune.h). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prune/prune.h"
#include "util/scored.h"

static double norm_p(const float *x, size_t n, size_t stride, PruneNorm p) {
    double s = 0;
    for (size_t i = 0; i < n; i++) {
        double v = x[i * stride];
        s += p == PRUNE_L1 ? fabs(v) : v * v;
    }
    return p == PRUNE_L1 ? s : sqrt(s);
}

static int by_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

int prune_ff_select(const ModelLayer *proj, const ModelLayer *out, int n_keep, PruneNorm norm, int *keep, Err *e) {
    const int m = out->weight.shape[1], d_in = proj->weight.shape[1], d_out = out->weight.shape[0];
    if (proj->weight.shape[0] != 2 * m || n_keep < 1 || n_keep > m)
        return err_set(e, ERR_INTERNAL, "prune: %s: %d units, keep %d", out->name, m, n_keep);
    Scored *u = malloc((size_t)m * sizeof *u);
    if (!u) return err_set(e, ERR_NOMEM, "prune: out of memory");
    for (int k = 0; k < m; k++) {
        const float *value = proj->weight.data + (size_t)k * d_in, *gate = proj->weight.data + (size_t)(m + k) * d_in;
        double in = norm == PRUNE_L1 ? norm_p(value, d_in, 1, norm) + norm_p(gate, d_in, 1, norm)
                                     : hypot(norm_p(value, d_in, 1, norm), norm_p(gate, d_in, 1, norm));
        u[k] = (Scored){in * norm_p(out->weight.data + k, (size_t)d_out, (size_t)m, norm), k};
    }
    qsort(u, (size_t)m, sizeof *u, scored_cmp_desc);
    for (int i = 0; i < n_keep; i++) keep[i] = u[i].index;
    qsort(keep, (size_t)n_keep, sizeof *keep, by_int);
    free(u);
    return 0;
}

// The units of 0..m-1 not in keep[0..n_keep) (ascending), ascending, into drop.
static void removed_units(const int *keep, int n_keep, int m, int *drop) {
    for (int k = 0, i = 0, j = 0; k < m; k++) {
        if (i < n_keep && keep[i] == k) i++;
        else drop[j++] = k;
    }
}

// In-place Cholesky A = L L^T of the n x n row-major A (lower triangle); 0, or -1 when A is not
// positive definite.
static int cholesky(double *A, int n) {
    for (int j = 0; j < n; j++) {
        double d = A[(size_t)j * n + j];
        for (int k = 0; k < j; k++) d -= A[(size_t)j * n + k] * A[(size_t)j * n + k];
        if (!(d > 0)) return -1;
        d = sqrt(d);
        A[(size_t)j * n + j] = d;
        for (int i = j + 1; i < n; i++) {
            double s = A[(size_t)i * n + j];
            for (int k = 0; k < j; k++) s -= A[(size_t)i * n + k] * A[(size_t)j * n + k];
            A[(size_t)i * n + j] = s / d;
        }
    }
    return 0;
}

// x = (L L^T)^-1 b for the factor of cholesky().
static void cholesky_solve(const double *L, int n, double *x) {
    for (int i = 0; i < n; i++) {
        double s = x[i];
        for (int k = 0; k < i; k++) s -= L[(size_t)i * n + k] * x[k];
        x[i] = s / L[(size_t)i * n + i];
    }
    for (int i = n - 1; i >= 0; i--) {
        double s = x[i];
        for (int k = i + 1; k < n; k++) s -= L[(size_t)k * n + i] * x[k];
        x[i] = s / L[(size_t)i * n + i];
    }
}

int prune_udfc_solve(const double *mom_sum, int m, const int *keep, int n_keep, double ridge, double *C, Err *e) {
    const int n = n_keep + 1, n_drop = m - n_keep;  // u = [h_keep; 1]
    const size_t ld = (size_t)m + 1;
    int *u_idx = malloc((size_t)n * sizeof *u_idx), *drop = malloc((size_t)(n_drop > 0 ? n_drop : 1) * sizeof *drop);
    double *A = malloc((size_t)n * n * sizeof *A);
    if (!u_idx || !drop || !A) {
        free(u_idx), free(drop), free(A);
        return err_set(e, ERR_NOMEM, "prune: out of memory for a %d x %d solve", n, n);
    }
    memcpy(u_idx, keep, (size_t)n_keep * sizeof *u_idx);
    u_idx[n_keep] = m;  // the constant
    removed_units(keep, n_keep, m, drop);
    double diag = 0;
    for (int a = 0; a < n; a++) {
        for (int b = 0; b < n; b++) A[(size_t)a * n + b] = mom_sum[(size_t)u_idx[a] * ld + u_idx[b]];
        diag += A[(size_t)a * n + a];
    }
    double lambda = (ridge > 0 ? ridge : 1e-6) * diag / n;
    for (int a = 0; a < n; a++) A[(size_t)a * n + a] += lambda;
    int rc = 0;
    if (cholesky(A, n)) {
        rc = err_set(e, ERR_VALUE, "prune: UDFC: the kept units' second moments are not positive definite (%d units; "
                     "too few trajectories, or units that never activate)", n_keep);
    } else {
        for (int r = 0; r < n_drop; r++) {  // row r of C solves (E[u u^T] + λ I) c = E[u h_r]
            double *c = C + (size_t)r * n;
            for (int a = 0; a < n; a++) c[a] = mom_sum[(size_t)u_idx[a] * ld + drop[r]];
            cholesky_solve(A, n, c);
        }
    }
    free(u_idx), free(drop), free(A);
    return rc;
}

// Copies src's block-k FeedForward into dst's, keeping units keep[0..n_keep) and, with C,
// folding the removed ones drop[0..m - n_keep) into ff.net.2 (prune.h).
static void gather_ff(UNet *src, UNet *dst, int k, const int *keep, const int *drop, int n_keep, const double *C) {
    ModelLayer *sp, *so, *dp, *dout;
    unet_ff_layers(src, k, &sp, &so);
    unet_ff_layers(dst, k, &dp, &dout);
    const int m = so->weight.shape[1], d_in = sp->weight.shape[1], d_out = so->weight.shape[0];
    for (int i = 0; i < n_keep; i++) {  // value row, gate row, their biases
        int u = keep[i];
        memcpy(dp->weight.data + (size_t)i * d_in, sp->weight.data + (size_t)u * d_in, (size_t)d_in * sizeof(float));
        memcpy(dp->weight.data + (size_t)(n_keep + i) * d_in, sp->weight.data + (size_t)(m + u) * d_in,
               (size_t)d_in * sizeof(float));
        dp->bias.data[i] = sp->bias.data[u];
        dp->bias.data[n_keep + i] = sp->bias.data[m + u];
    }
    for (int r = 0; r < d_out; r++) {
        const float *w = so->weight.data + (size_t)r * m;
        float *wd = dout->weight.data + (size_t)r * n_keep;
        for (int i = 0; i < n_keep; i++) wd[i] = w[keep[i]];
        dout->bias.data[r] = so->bias.data[r];
        if (!C) continue;
        // W2[:, S] + W2[:, P] C: accumulated in double, rounded once
        for (int i = 0; i <= n_keep; i++) {
            double s = i < n_keep ? w[keep[i]] : so->bias.data[r];
            for (int p = 0; p < m - n_keep; p++) s += (double)w[drop[p]] * C[(size_t)p * (n_keep + 1) + i];
            if (i < n_keep) wd[i] = (float)s;
            else dout->bias.data[r] = (float)s;
        }
    }
}

int prune_unet(UNet *src, const PruneOpts *o, const FfMoments *mom, UNet **dst, PruneSummary *s, Err *e) {
    *dst = NULL;
    if (!(o->ff_ratio >= 0 && o->ff_ratio < 1))
        return err_set(e, ERR_ARG, "prune: the FeedForward ratio must be in [0, 1), found %g", o->ff_ratio);
    const int nb = unet_ff_blocks(src);
    if (o->udfc && o->ff_ratio > 0 && (!mom || mom->n_blocks != nb))
        return err_set(e, ERR_INTERNAL, "prune: UDFC needs the moments of all %d blocks", nb);
    if (nb > UNET_MAX_TBLOCKS && o->ff_ratio > 0)
        return err_set(e, ERR_UNSUPPORTED, "prune: %d transformer blocks (this build prunes up to %d)", nb,
                       UNET_MAX_TBLOCKS);
    UNetConfig cfg = *unet_config(src);
    int *n_keep = calloc((size_t)(nb ? nb : 1), sizeof *n_keep), **keep = calloc((size_t)(nb ? nb : 1), sizeof *keep);
    double *C = NULL;
    int rc = 0;
    if (!n_keep || !keep) {
        rc = err_set(e, ERR_NOMEM, "prune: out of memory");
        goto done;
    }
    memset(s, 0, sizeof *s);
    s->n_blocks = nb;
    for (int k = 0; k < nb; k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(src, k, &proj, &out);
        int m = out->weight.shape[1];
        n_keep[k] = (int)lround((1.0 - o->ff_ratio) * m);
        if (n_keep[k] < 1) n_keep[k] = 1;
        if (n_keep[k] > m) n_keep[k] = m;
        s->units_before += m;
        s->units_after += n_keep[k];
        if (!(keep[k] = malloc((size_t)m * sizeof(int)))) {
            rc = err_set(e, ERR_NOMEM, "prune: out of memory");
            goto done;
        }
        if ((rc = prune_ff_select(proj, out, n_keep[k], o->norm, keep[k], e))) goto done;
        if (n_keep[k] < m) cfg.ff_inner[k] = n_keep[k];
    }
    if ((rc = unet_new(dst, &cfg, e))) goto done;
    for (int i = 0; i < unet_param_tensors(*dst); i++) {  // every tensor of the same shape: as it is
        const char *name;
        Tensor *t = unet_param_at(*dst, i, &name), *from = unet_param(src, name);
        if (from && from->n == t->n) memcpy(t->data, from->data, t->n * sizeof(float));
    }
    for (int k = 0; k < nb; k++) {
        ModelLayer *proj, *out;
        unet_ff_layers(src, k, &proj, &out);
        int m = out->weight.shape[1];
        if (n_keep[k] == m) continue;
        free(C);
        C = NULL;
        if (o->udfc) {
            if (mom->m[k] != m || !(mom->count[k] > 0)) {
                rc = err_set(e, ERR_INTERNAL, "prune: block %d: moments of %d units over %g tokens, the model has %d",
                             k, mom->m[k], mom->count[k], m);
                goto done;
            }
            if (!(C = malloc((size_t)(m - n_keep[k]) * (size_t)(n_keep[k] + 1) * sizeof *C))) {
                rc = err_set(e, ERR_NOMEM, "prune: out of memory");
                goto done;
            }
            if ((rc = prune_udfc_solve(mom->sum[k], m, keep[k], n_keep[k], o->ridge, C, e))) {
                err_prefix(e, "%s", out->name);
                goto done;
            }
        }
        int *drop = keep[k] + n_keep[k];  // the rest of the block's index array
        removed_units(keep[k], n_keep[k], m, drop);
        gather_ff(src, *dst, k, keep[k], drop, n_keep[k], C);
    }
    s->params_before = unet_param_count(src);
    s->params_after = unet_param_count(*dst);
done:
    for (int k = 0; keep && k < nb; k++) free(keep[k]);
    free(keep);
    free(n_keep);
    free(C);
    if (rc && *dst) {
        unet_free(*dst);
        *dst = NULL;
    }
    return rc;
}
