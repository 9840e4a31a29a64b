/* prune_unet.c: the pruning sites of the UNet, UDFC's closed form on a site's groups, and the
   pruned UNet (see prune.h; the choice of groups: prune_select.c). */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "prune/prune.h"

void prune_site(UNet *u, int s, ModelLayer **out, int *groups, int *group_size) {
    const int k = s / PRUNE_SITES, kind = s % PRUNE_SITES;
    if (kind == PRUNE_FF) {
        ModelLayer *proj;
        unet_ff_layers(u, k, &proj, out);
        *groups = (*out)->weight.shape[1];
        *group_size = 1;
    } else {
        ModelLayer *l[4];
        unet_attn_layers(u, k, kind - PRUNE_ATTN1, l, groups, group_size);
        *out = l[3];
    }
}

// The features of the kept groups keep[0..n_keep) (ascending; groups of g) into keep_f and
// those of the others into drop_f, both ascending; m features in all.
static void group_features(const int *keep, int n_keep, int g, int m, int *keep_f, int *drop_f) {
    for (int k = 0, i = 0, nk = 0, nd = 0; k < m / g; k++) {
        int kept = i < n_keep && keep[i] == k;
        i += kept;
        for (int f = k * g; f < (k + 1) * g; f++) {
            if (kept) keep_f[nk++] = f;
            else drop_f[nd++] = f;
        }
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

int prune_udfc_solve(const double *mom_sum, int m, int g, const int *keep, int n_keep, double ridge, double *C,
                     Err *e) {
    if (g < 1 || m % g || n_keep < 0 || n_keep > m / g)
        return err_set(e, ERR_INTERNAL, "prune: UDFC: %d features in groups of %d, keep %d", m, g, n_keep);
    const int nk = g * n_keep, n = nk + 1, n_drop = m - nk;  // u = [h_keep; 1]
    const size_t ld = (size_t)m + 1;
    int *u_idx = malloc((size_t)n * sizeof *u_idx), *drop = malloc((size_t)(n_drop > 0 ? n_drop : 1) * sizeof *drop);
    double *A = malloc((size_t)n * n * sizeof *A);
    if (!u_idx || !drop || !A) {
        free(u_idx), free(drop), free(A);
        return err_set(e, ERR_NOMEM, "prune: out of memory for a %d x %d solve", n, n);
    }
    group_features(keep, n_keep, g, m, u_idx, drop);
    u_idx[nk] = m;  // the constant
    double diag = 0;
    for (int a = 0; a < n; a++) {
        for (int b = 0; b < n; b++) A[(size_t)a * n + b] = mom_sum[(size_t)u_idx[a] * ld + u_idx[b]];
        diag += A[(size_t)a * n + a];
    }
    double lambda = (ridge > 0 ? ridge : 1e-6) * diag / n;
    for (int a = 0; a < n; a++) A[(size_t)a * n + a] += lambda;
    int rc = 0;
    if (cholesky(A, n)) {
        rc = err_set(e, ERR_VALUE, "prune: UDFC: the kept features' second moments are not positive definite (%d "
                     "features; too few trajectories, or features that never activate)", nk);
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

// Rows from..from+n-1 of src's weight (and bias) into rows to..to+n-1 of dst's.
static void copy_rows(const ModelLayer *src, ModelLayer *dst, int from, int to, int n) {
    const size_t cols = (size_t)src->weight.shape[1];
    memcpy(dst->weight.data + (size_t)to * cols, src->weight.data + (size_t)from * cols, (size_t)n * cols * sizeof(float));
    if (src->bias.data) memcpy(dst->bias.data + to, src->bias.data + from, (size_t)n * sizeof(float));
}

// Copies the producers of site s's kept groups keep[0..n_keep) from src into dst: a unit's value
// and gate rows of ff.net.0.proj, a head's rows of to_q, to_k, to_v.
static void gather_in(UNet *src, UNet *dst, int s, const int *keep, int n_keep) {
    const int k = s / PRUNE_SITES, kind = s % PRUNE_SITES;
    if (kind == PRUNE_FF) {
        ModelLayer *sp, *so, *dp, *dout;
        unet_ff_layers(src, k, &sp, &so);
        unet_ff_layers(dst, k, &dp, &dout);
        const int m = so->weight.shape[1];
        for (int i = 0; i < n_keep; i++) {
            copy_rows(sp, dp, keep[i], i, 1);                // value
            copy_rows(sp, dp, m + keep[i], n_keep + i, 1);   // gate
        }
        return;
    }
    ModelLayer *ls[4], *ld[4];
    int heads, d;
    unet_attn_layers(src, k, kind - PRUNE_ATTN1, ls, &heads, &d);
    unet_attn_layers(dst, k, kind - PRUNE_ATTN1, ld, &heads, &d);
    for (int l = 0; l < 3; l++)
        for (int i = 0; i < n_keep; i++) copy_rows(ls[l], ld[l], keep[i] * d, i * d, d);
}

// dst = src's columns keep_f[0..nk) and bias, with C ((m - nk) x (nk + 1)) the removed columns
// drop_f folded in: W[:, S] + W[:, P] C, b + W[:, P] C[:, nk] (prune.h).
static void fold_out(const ModelLayer *so, ModelLayer *dout, const int *keep_f, const int *drop_f, int nk,
                     const double *C) {
    const int m = so->weight.shape[1], d_out = so->weight.shape[0];
    for (int r = 0; r < d_out; r++) {
        const float *w = so->weight.data + (size_t)r * m;
        float *wd = dout->weight.data + (size_t)r * nk;
        for (int i = 0; i < nk; i++) wd[i] = w[keep_f[i]];
        dout->bias.data[r] = so->bias.data[r];
        if (!C) continue;
        // accumulated in double, rounded once
        for (int i = 0; i <= nk; i++) {
            double s = i < nk ? w[keep_f[i]] : so->bias.data[r];
            for (int p = 0; p < m - nk; p++) s += (double)w[drop_f[p]] * C[(size_t)p * (nk + 1) + i];
            if (i < nk) wd[i] = (float)s;
            else dout->bias.data[r] = (float)s;
        }
    }
}

// Site s of src with its kept groups keep[0..n_keep) (g features each) into dst: the producers
// gathered, the next layer folded (C from mom when o->udfc).
static int prune_site_into(UNet *src, UNet *dst, int s, const int *keep, int n_keep, const PruneOpts *o,
                           const PruneMoments *mom, Err *e) {
    ModelLayer *so, *dout;
    int groups, g, tmp;
    prune_site(src, s, &so, &groups, &g);
    prune_site(dst, s, &dout, &tmp, &tmp);
    const int m = groups * g, nk = n_keep * g;
    int *f = malloc((size_t)m * sizeof *f);  // the kept features, then the removed ones
    double *C = NULL;
    int rc = 0;
    if (!f) return err_set(e, ERR_NOMEM, "prune: out of memory");
    group_features(keep, n_keep, g, m, f, f + nk);
    if (o->udfc) {
        if (s >= mom->n_sites || !mom->sum[s] || mom->m[s] != m || !(mom->count[s] > 0)) {
            rc = err_set(e, ERR_INTERNAL, "prune: %s: no moments of its %d input features", so->name, m);
        } else if (!(C = malloc((size_t)(m - nk) * (size_t)(nk + 1) * sizeof *C))) {
            rc = err_set(e, ERR_NOMEM, "prune: out of memory");
        } else if ((rc = prune_udfc_solve(mom->sum[s], m, g, keep, n_keep, o->ridge, C, e))) {
            err_prefix(e, "%s", so->name);
        }
    }
    if (!rc) {
        gather_in(src, dst, s, keep, n_keep);
        fold_out(so, dout, f, f + nk, nk, C);
    }
    free(f);
    free(C);
    return rc;
}

int prune_unet(UNet *src, const PruneOpts *o, const PruneMoments *mom, UNet **dst, PruneSummary *s, Err *e) {
    *dst = NULL;
    if (!(o->ff_ratio >= 0 && o->ff_ratio < 1))
        return err_set(e, ERR_ARG, "prune: the FeedForward ratio must be in [0, 1), found %g", o->ff_ratio);
    if (!(o->head_ratio >= 0 && o->head_ratio < 1))
        return err_set(e, ERR_ARG, "prune: the head ratio must be in [0, 1), found %g", o->head_ratio);
    const int nb = unet_ff_blocks(src), ns = nb * PRUNE_SITES;
    if (o->udfc && (o->ff_ratio > 0 || o->head_ratio > 0) && (!mom || mom->n_sites != ns))
        return err_set(e, ERR_INTERNAL, "prune: UDFC needs the moments of the %d transformer blocks", nb);
    if (nb > UNET_MAX_TBLOCKS && (o->ff_ratio > 0 || o->head_ratio > 0))
        return err_set(e, ERR_UNSUPPORTED, "prune: %d transformer blocks (this build prunes up to %d)", nb,
                       UNET_MAX_TBLOCKS);
    UNetConfig cfg = *unet_config(src);
    int *n_keep = calloc((size_t)(ns ? ns : 1), sizeof *n_keep), **keep = calloc((size_t)(ns ? ns : 1), sizeof *keep);
    int rc = 0;
    if (!n_keep || !keep) {
        rc = err_set(e, ERR_NOMEM, "prune: out of memory");
        goto done;
    }
    memset(s, 0, sizeof *s);
    s->n_blocks = nb;
    for (int i = 0; i < ns; i++) {
        const int k = i / PRUNE_SITES, kind = i % PRUNE_SITES;
        ModelLayer *out;
        int groups, g;
        prune_site(src, i, &out, &groups, &g);
        n_keep[i] = (int)lround((1.0 - (kind == PRUNE_FF ? o->ff_ratio : o->head_ratio)) * groups);
        if (n_keep[i] < 1) n_keep[i] = 1;
        if (n_keep[i] > groups) n_keep[i] = groups;
        if (!(keep[i] = malloc((size_t)groups * sizeof(int)))) {
            rc = err_set(e, ERR_NOMEM, "prune: out of memory");
            goto done;
        }
        if (kind == PRUNE_FF) {
            ModelLayer *proj;
            unet_ff_layers(src, k, &proj, &out);
            s->units_before += groups;
            s->units_after += n_keep[i];
            rc = prune_ff_select(proj, out, n_keep[i], o->norm, keep[i], e);
            if (n_keep[i] < groups) cfg.ff_inner[k] = n_keep[i];
        } else {
            ModelLayer *l[4];
            unet_attn_layers(src, k, kind - PRUNE_ATTN1, l, &groups, &g);
            s->heads_before += groups;
            s->heads_after += n_keep[i];
            rc = prune_heads_select(l, g, n_keep[i], o->norm, keep[i], e);
            if (n_keep[i] < groups) cfg.attn_heads[k][kind - PRUNE_ATTN1] = n_keep[i];
        }
        if (rc) goto done;
    }
    if ((rc = unet_new(dst, &cfg, e))) goto done;
    for (int i = 0; i < unet_param_tensors(*dst); i++) {  // every tensor of the same shape: as it is
        const char *name;
        Tensor *t = unet_param_at(*dst, i, &name), *from = unet_param(src, name);
        if (from && from->n == t->n) memcpy(t->data, from->data, t->n * sizeof(float));
    }
    for (int i = 0; i < ns; i++) {
        ModelLayer *out;
        int groups, g;
        prune_site(src, i, &out, &groups, &g);
        if (n_keep[i] < groups && (rc = prune_site_into(src, *dst, i, keep[i], n_keep[i], o, mom, e))) goto done;
    }
    s->params_before = unet_param_count(src);
    s->params_after = unet_param_count(*dst);
done:
    for (int i = 0; keep && i < ns; i++) free(keep[i]);
    free(keep);
    free(n_keep);
    if (rc && *dst) {
        unet_free(*dst);
        *dst = NULL;
    }
    return rc;
}
