/* prune_select.c: which groups of a site to keep (see prune.h): a group's score is the p-norm of
   the weights that produce it (rows) times the p-norm of the weights that read it (columns of
   the next layer); the n_keep of largest score are kept. */
#include <math.h>
#include <stdlib.h>

#include "prune/prune.h"
#include "util/scored.h"

// The p-th power sum of rows r0..r0+n-1 of w (cols columns): sum |x| (L1) or sum x^2 (L2).
static double rows_pow(const Tensor *w, int r0, int n, PruneNorm p) {
    const int cols = w->shape[1];
    double s = 0;
    for (size_t i = (size_t)r0 * cols; i < (size_t)(r0 + n) * cols; i++) {
        double v = w->data[i];
        s += p == PRUNE_L1 ? fabs(v) : v * v;
    }
    return s;
}

// The same over columns c0..c0+n-1 of w.
static double cols_pow(const Tensor *w, int c0, int n, PruneNorm p) {
    const int rows = w->shape[0], cols = w->shape[1];
    double s = 0;
    for (int r = 0; r < rows; r++)
        for (int c = c0; c < c0 + n; c++) {
            double v = w->data[(size_t)r * cols + c];
            s += p == PRUNE_L1 ? fabs(v) : v * v;
        }
    return s;
}

// ||in||_p * ||out||_p from their power sums.
static double score(double in, double out, PruneNorm p) { return p == PRUNE_L1 ? in * out : sqrt(in) * sqrt(out); }

static int by_int(const void *a, const void *b) { return *(const int *)a - *(const int *)b; }

// The n_keep groups of largest score (u[0..n), destroyed), ascending, into keep.
static void keep_top(Scored *u, int n, int n_keep, int *keep) {
    qsort(u, (size_t)n, sizeof *u, scored_cmp_desc);
    for (int i = 0; i < n_keep; i++) keep[i] = u[i].index;
    qsort(keep, (size_t)n_keep, sizeof *keep, by_int);
}

int prune_ff_select(const ModelLayer *proj, const ModelLayer *out, int n_keep, PruneNorm norm, int *keep, Err *e) {
    const int m = out->weight.shape[1];
    if (proj->weight.shape[0] != 2 * m || n_keep < 1 || n_keep > m)
        return err_set(e, ERR_INTERNAL, "prune: %s: %d units, keep %d", out->name, m, n_keep);
    Scored *u = malloc((size_t)m * sizeof *u);
    if (!u) return err_set(e, ERR_NOMEM, "prune: out of memory");
    for (int k = 0; k < m; k++) {  // value row k, gate row m + k
        double in = rows_pow(&proj->weight, k, 1, norm) + rows_pow(&proj->weight, m + k, 1, norm);
        u[k] = (Scored){score(in, cols_pow(&out->weight, k, 1, norm), norm), k};
    }
    keep_top(u, m, n_keep, keep);
    free(u);
    return 0;
}

int prune_heads_select(ModelLayer *const l[4], int dim_head, int n_keep, PruneNorm norm, int *keep, Err *e) {
    const int width = l[3]->weight.shape[1], heads = dim_head > 0 ? width / dim_head : 0;
    if (heads < 1 || heads * dim_head != width || n_keep < 1 || n_keep > heads)
        return err_set(e, ERR_INTERNAL, "prune: %s: %d features in heads of %d, keep %d", l[3]->name, width, dim_head,
                       n_keep);
    for (int i = 0; i < 3; i++)
        if (l[i]->weight.shape[0] != width)
            return err_set(e, ERR_INTERNAL, "prune: %s: %d rows, to_out.0 reads %d", l[i]->name,
                           l[i]->weight.shape[0], width);
    Scored *u = malloc((size_t)heads * sizeof *u);
    if (!u) return err_set(e, ERR_NOMEM, "prune: out of memory");
    for (int h = 0; h < heads; h++) {
        double in = 0;
        for (int i = 0; i < 3; i++) in += rows_pow(&l[i]->weight, h * dim_head, dim_head, norm);
        u[h] = (Scored){score(in, cols_pow(&l[3]->weight, h * dim_head, dim_head, norm), norm), h};
    }
    keep_top(u, heads, n_keep, keep);
    free(u);
    return 0;
}
