/* prec_recall.c: see prec_recall.h. */
#include "eval/prec_recall.h"

#include "autograd/ops/gemm_util.h"
#include <math.h>
#include <stdlib.h>
#include <string.h>

// Row norms |x_i|^2 (n) in double.
static void row_norms(const float *x, size_t n, int D, double *nrm) {
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int j = 0; j < D; j++) s += (double)x[i * D + j] * x[i * D + j];
        nrm[i] = s;
    }
}

// dots (m, n) = a (m, D) b^T (b: (n, D)), float32 GEMM.
static void block_dots(const float *a, size_t m, const float *b, size_t n, int D, float *dots) {
    gemm_rm(0, 1, (int)m, (int)n, D, 1.0f, a, D, b, D, 0.0f, dots, (int)n);
}

static double sq_dist(double na, double nb, float dot) {
    double d = na + nb - 2.0 * (double)dot;
    return d > 0 ? d : 0.0;
}

// radii within x whose row norms are nrm; dots is scratch (PR_BLOCK_ROWS, n).
static void radii_blocked(const float *x, size_t n, int D, int k, const double *nrm, float *dots, double *r2) {
    for (size_t i0 = 0; i0 < n; i0 += PR_BLOCK_ROWS) {
        size_t m = n - i0 < PR_BLOCK_ROWS ? n - i0 : PR_BLOCK_ROWS;
        block_dots(x + i0 * D, m, x, n, D, dots);
#pragma omp parallel for schedule(static)
        for (size_t ii = 0; ii < m; ii++) {
            size_t i = i0 + ii;
            double best[16];  // k smallest so far, ascending (k <= 16 checked by callers)
            int nb = 0;
            for (size_t j = 0; j < n; j++) {
                if (j == i) continue;
                double d = sq_dist(nrm[i], nrm[j], dots[ii * n + j]);
                if (nb == k && d >= best[k - 1]) continue;
                int p = nb < k ? nb++ : k - 1;
                while (p > 0 && best[p - 1] > d) {
                    best[p] = best[p - 1];
                    p--;
                }
                best[p] = d;
            }
            r2[i] = best[k - 1];
        }
    }
}

// Fraction of rows of q (nq, D) within the radius of at least one row of s (ns, D).
static double coverage(const float *q, size_t nq, const double *nq2, const float *s, size_t ns,
                       const double *ns2, const double *r2s, int D, float *dots) {
    size_t inside = 0;
    for (size_t i0 = 0; i0 < nq; i0 += PR_BLOCK_ROWS) {
        size_t m = nq - i0 < PR_BLOCK_ROWS ? nq - i0 : PR_BLOCK_ROWS;
        block_dots(q + i0 * D, m, s, ns, D, dots);
        unsigned char hit[PR_BLOCK_ROWS];
#pragma omp parallel for schedule(static)
        for (size_t ii = 0; ii < m; ii++) {
            hit[ii] = 0;
            for (size_t j = 0; j < ns; j++)
                if (sq_dist(nq2[i0 + ii], ns2[j], dots[ii * ns + j]) <= r2s[j]) {
                    hit[ii] = 1;
                    break;
                }
        }
        for (size_t ii = 0; ii < m; ii++) inside += hit[ii];
    }
    return (double)inside / (double)nq;
}

// Copies x (n, D) minus mean (D) into a new float buffer; NULL when out of memory.
static float *centred_copy(const float *x, size_t n, int D, const double *mean) {
    float *c = malloc(n * D * sizeof(float));
    if (!c) return NULL;
    for (size_t i = 0; i < n; i++)
        for (int j = 0; j < D; j++) c[i * D + j] = (float)((double)x[i * D + j] - mean[j]);
    return c;
}

static int check_rows(const float *x, size_t n, int D, const char *what, Err *e) {
    for (size_t i = 0; i < n * (size_t)D; i++)
        if (!isfinite(x[i]))
            return err_set(e, ERR_VALUE, "precision/recall: %s feature row %zu is not finite", what, i / D);
    return 0;
}

int prec_recall_radii(const float *x, size_t n, int D, int k, double *r2, Err *e) {
    if (k < 1 || k > 16 || n <= (size_t)k)
        return err_set(e, ERR_VALUE, "precision/recall: k = %d needs k in [1, 16] and more than k rows, found %zu",
                       k, n);
    double *nrm = malloc(n * sizeof(double));
    float *dots = malloc((size_t)PR_BLOCK_ROWS * n * sizeof(float));
    if (!nrm || !dots) {
        free(nrm);
        free(dots);
        return err_set(e, ERR_NOMEM, "precision/recall: out of memory for %zu rows", n);
    }
    row_norms(x, n, D, nrm);
    radii_blocked(x, n, D, k, nrm, dots, r2);
    free(nrm);
    free(dots);
    return 0;
}

int prec_recall(const float *real, size_t n_real, const float *fake, size_t n_fake, int D, int k,
                double *precision, double *recall, Err *e) {
    if (k < 1 || k > 16 || n_real <= (size_t)k || n_fake <= (size_t)k)
        return err_set(e, ERR_VALUE,
                       "precision/recall: k = %d needs k in [1, 16] and more than k real and fake rows, found %zu "
                       "real, %zu fake", k, n_real, n_fake);
    if (D < 1) return err_set(e, ERR_VALUE, "precision/recall: feature dimension %d", D);
    if (check_rows(real, n_real, D, "real", e) || check_rows(fake, n_fake, D, "fake", e)) return e ? e->code : ERR_VALUE;
    int rc = 0;
    size_t nmax = n_real > n_fake ? n_real : n_fake;
    double *mean = calloc((size_t)D, sizeof(double));
    double *nr = malloc(n_real * sizeof(double)), *nf = malloc(n_fake * sizeof(double));
    double *rr = malloc(n_real * sizeof(double)), *rf = malloc(n_fake * sizeof(double));
    float *dots = malloc((size_t)PR_BLOCK_ROWS * nmax * sizeof(float));
    float *cr = NULL, *cf = NULL;
    if (!mean || !nr || !nf || !rr || !rf || !dots) goto nomem;
    // Distances are translation invariant; centring on the real mean keeps |a|^2 + |b|^2 - 2ab
    // from cancelling when features sit far from the origin (ReLU features all do).
    for (size_t i = 0; i < n_real; i++)
        for (int j = 0; j < D; j++) mean[j] += real[i * D + j];
    for (int j = 0; j < D; j++) mean[j] /= (double)n_real;
    cr = centred_copy(real, n_real, D, mean);
    cf = centred_copy(fake, n_fake, D, mean);
    if (!cr || !cf) goto nomem;
    row_norms(cr, n_real, D, nr);
    row_norms(cf, n_fake, D, nf);
    radii_blocked(cr, n_real, D, k, nr, dots, rr);
    radii_blocked(cf, n_fake, D, k, nf, dots, rf);
    *precision = coverage(cf, n_fake, nf, cr, n_real, nr, rr, D, dots);
    *recall = coverage(cr, n_real, nr, cf, n_fake, nf, rf, D, dots);
    goto done;
nomem:
    rc = err_set(e, ERR_NOMEM, "precision/recall: out of memory for %zu real and %zu fake rows of %d", n_real,
                 n_fake, D);
done:
    free(mean);
    free(nr);
    free(nf);
    free(rr);
    free(rf);
    free(dots);
    free(cr);
    free(cf);
    return rc;
}
