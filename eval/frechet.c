/* frechet.c: streaming mean/covariance in double and the Fréchet distance
   (pytorch-fid fid_score.py calculate_frechet_distance), see frechet.h. */
#include "eval/frechet.h"

#include <cblas.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

// LAPACK (exported by OpenBLAS), Fortran calling convention: every argument by pointer,
// the hidden lengths of the two character arguments at the end (gfortran ABI).
void dsyevd_(const char *jobz, const char *uplo, const int *n, double *a, const int *lda, double *w,
             double *work, const int *lwork, int *iwork, const int *liwork, int *info, size_t jobz_len,
             size_t uplo_len);

#define FRECHET_MAX_D 46340      // D * D < 2^31 (LAPACK's int)
#define FRECHET_CHUNK_ROWS 256   // rows converted to double per dsyrk call
#define FRECHET_OFFSET 1e-6      // pytorch-fid's eps

int frechet_acc_init(FrechetAcc *a, int D, Err *e) {
    memset(a, 0, sizeof *a);
    if (D < 1 || D > FRECHET_MAX_D)
        return err_set(e, ERR_VALUE, "feature statistics: dimension %d out of range [1, %d]", D, FRECHET_MAX_D);
    a->D = D;
    a->rows_cap = FRECHET_CHUNK_ROWS;
    a->shift = calloc((size_t)D, sizeof(double));
    a->sum = calloc((size_t)D, sizeof(double));
    a->cross = calloc((size_t)D * D, sizeof(double));
    a->buf = malloc(a->rows_cap * D * sizeof(double));
    if (!a->shift || !a->sum || !a->cross || !a->buf) {
        frechet_acc_free(a);
        return err_set(e, ERR_NOMEM, "feature statistics: cannot allocate %.1f MiB for D = %d",
                       (double)D * D * 8 / 1048576.0, D);
    }
    return 0;
}

void frechet_acc_free(FrechetAcc *a) {
    free(a->shift);
    free(a->sum);
    free(a->cross);
    free(a->buf);
    memset(a, 0, sizeof *a);
}

int frechet_acc_add(FrechetAcc *a, const float *x, size_t n, Err *e) {
    const size_t D = (size_t)a->D;
    for (size_t i = 0; i < n * D; i++)
        if (!isfinite(x[i]))
            return err_set(e, ERR_VALUE, "feature statistics: feature row %zu (column %zu) is not finite",
                           a->n + i / D, i % D);
    if (a->n == 0 && n > 0) {
        // shift = mean of the first batch, summed in double in row order
        for (size_t i = 0; i < n; i++)
            for (size_t j = 0; j < D; j++) a->shift[j] += x[i * D + j];
        for (size_t j = 0; j < D; j++) a->shift[j] /= (double)n;
    }
    for (size_t r0 = 0; r0 < n; r0 += a->rows_cap) {
        size_t m = n - r0 < a->rows_cap ? n - r0 : a->rows_cap;
        double *b = a->buf;  // (m, D)
        for (size_t i = 0; i < m; i++)
            for (size_t j = 0; j < D; j++) {
                double v = (double)x[(r0 + i) * D + j] - a->shift[j];
                b[i * D + j] = v;
                a->sum[j] += v;
            }
        // cross (upper) += b^T b
        cblas_dsyrk(CblasRowMajor, CblasUpper, CblasTrans, (int)D, (int)m, 1.0, b, (int)D, 1.0, a->cross, (int)D);
    }
    a->n += n;
    return 0;
}

int frechet_acc_finish(const FrechetAcc *a, double *mu, double *sigma, Err *e) {
    const size_t D = (size_t)a->D;
    if (a->n < 2)
        return err_set(e, ERR_VALUE, "feature statistics: need at least 2 images for a covariance, found %zu",
                       a->n);
    double n = (double)a->n;
    for (size_t j = 0; j < D; j++) mu[j] = a->shift[j] + a->sum[j] / n;
    // cov = (cross - n m m^T) / (n - 1) with m = sum / n (the mean of the shifted rows)
    for (size_t i = 0; i < D; i++) {
        double mi = a->sum[i] / n;
        for (size_t j = i; j < D; j++) {
            double c = (a->cross[i * D + j] - n * mi * (a->sum[j] / n)) / (n - 1.0);
            sigma[i * D + j] = c;
            sigma[j * D + i] = c;
        }
    }
    return 0;
}

// Eigen-decomposition of the symmetric (D, D) matrix a in place (row-major = column-major
// since it is symmetric; on return the rows of a are the eigenvectors), eigenvalues in w.
// 0, or -1 on allocation failure, or the LAPACK info (> 0: no convergence).
static int sym_eig(double *a, double *w, int D, int want_vectors) {
    char jobz = want_vectors ? 'V' : 'N', uplo = 'U';
    int lwork = -1, liwork = -1, info = 0, iw_query = 0;
    double w_query = 0;
    dsyevd_(&jobz, &uplo, &D, a, &D, w, &w_query, &lwork, &iw_query, &liwork, &info, 1, 1);
    if (info != 0) return info;
    lwork = (int)w_query + 1;
    liwork = iw_query > 0 ? iw_query : 1;
    double *work = malloc((size_t)lwork * sizeof(double));
    int *iwork = malloc((size_t)liwork * sizeof(int));
    if (!work || !iwork) {
        free(work);
        free(iwork);
        return -1;
    }
    dsyevd_(&jobz, &uplo, &D, a, &D, w, work, &lwork, iwork, &liwork, &info, 1, 1);
    free(work);
    free(iwork);
    return info;
}

int frechet_trace_sqrt_product(const double *s1, const double *s2, int D, double *out, Err *e) {
    size_t DD = (size_t)D * D;
    double *v = malloc(DD * sizeof(double));    // eigenvectors of s1
    double *t = malloc(DD * sizeof(double));    // scratch
    double *amat = malloc(DD * sizeof(double)); // diag(sqrt l) V^T s2 V diag(sqrt l)
    double *l = malloc((size_t)D * sizeof(double));
    int rc = 0;
    if (!v || !t || !amat || !l) {
        rc = err_set(e, ERR_NOMEM, "Fréchet distance: cannot allocate %.1f MiB for D = %d",
                     3.0 * DD * 8 / 1048576.0, D);
        goto done;
    }
    memcpy(v, s1, DD * sizeof(double));
    int info = sym_eig(v, l, D, 1);
    if (info) {
        rc = info < 0 ? err_set(e, ERR_NOMEM, "Fréchet distance: out of memory in dsyevd")
                      : err_set(e, ERR_NAN, "Fréchet distance: dsyevd(sigma1) did not converge (info %d)", info);
        goto done;
    }
    // LAPACK wrote column-major: column k (eigenvector k) is row k of v seen row-major,
    // so v (row-major) = V^T. t = V^T s2 = v s2; amat = t V = t v^T.
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasNoTrans, D, D, D, 1.0, v, D, s2, D, 0.0, t, D);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, D, D, D, 1.0, t, D, v, D, 0.0, amat, D);
    for (int i = 0; i < D; i++) l[i] = l[i] > 0 ? sqrt(l[i]) : 0.0;
    for (int i = 0; i < D; i++)
        for (int j = 0; j < D; j++) amat[(size_t)i * D + j] *= l[i] * l[j];
    // amat is symmetric up to rounding; dsyevd reads its upper triangle (column-major 'U'
    // = our lower triangle), which is fine either way.
    info = sym_eig(amat, l, D, 0);
    if (info) {
        rc = info < 0 ? err_set(e, ERR_NOMEM, "Fréchet distance: out of memory in dsyevd")
                      : err_set(e, ERR_NAN, "Fréchet distance: dsyevd(sqrt(sigma1) sigma2 sqrt(sigma1)) "
                                            "did not converge (info %d)", info);
        goto done;
    }
    double tr = 0;
    for (int i = 0; i < D; i++) tr += l[i] > 0 ? sqrt(l[i]) : 0.0;
    if (!isfinite(tr)) {
        rc = err_set(e, ERR_NAN, "Fréchet distance: tr sqrt(sigma1 sigma2) is not finite");
        goto done;
    }
    *out = tr;
done:
    free(v);
    free(t);
    free(amat);
    free(l);
    return rc;
}

static int check_finite(const double *x, size_t n, const char *what, Err *e) {
    for (size_t i = 0; i < n; i++)
        if (!isfinite(x[i]))
            return err_set(e, ERR_VALUE, "Fréchet distance: %s[%zu] is not finite (%g)", what, i, x[i]);
    return 0;
}

int frechet_distance(const double *mu1, const double *s1, const double *mu2, const double *s2, int D,
                     double *out, double *offset_used, Err *e) {
    if (D < 1 || D > FRECHET_MAX_D)
        return err_set(e, ERR_VALUE, "Fréchet distance: dimension %d out of range [1, %d]", D, FRECHET_MAX_D);
    size_t DD = (size_t)D * D;
    if (check_finite(mu1, (size_t)D, "mu1", e) || check_finite(mu2, (size_t)D, "mu2", e) ||
        check_finite(s1, DD, "sigma1", e) || check_finite(s2, DD, "sigma2", e))
        return e ? e->code : ERR_VALUE;
    double diff2 = 0, tr1 = 0, tr2 = 0;
    for (int i = 0; i < D; i++) {
        double d = mu1[i] - mu2[i];
        diff2 += d * d;
        tr1 += s1[(size_t)i * D + i];
        tr2 += s2[(size_t)i * D + i];
    }
    if (offset_used) *offset_used = 0;
    double trc = 0;
    Err first = {0};
    if (frechet_trace_sqrt_product(s1, s2, D, &trc, &first) != 0) {
        if (first.code != ERR_NAN) {
            if (e && !e->code) *e = first;
            return first.code;
        }
        // pytorch-fid: "fid calculation produces singular product; adding 1e-6 to diagonal of cov estimates"
        double *o1 = malloc(DD * sizeof(double)), *o2 = malloc(DD * sizeof(double));
        if (!o1 || !o2) {
            free(o1);
            free(o2);
            return err_set(e, ERR_NOMEM, "Fréchet distance: cannot allocate the offset covariances");
        }
        memcpy(o1, s1, DD * sizeof(double));
        memcpy(o2, s2, DD * sizeof(double));
        for (int i = 0; i < D; i++) {
            o1[(size_t)i * D + i] += FRECHET_OFFSET;
            o2[(size_t)i * D + i] += FRECHET_OFFSET;
        }
        Err second = {0};
        int rc = frechet_trace_sqrt_product(o1, o2, D, &trc, &second);
        free(o1);
        free(o2);
        if (rc) return err_set(e, rc, "%s (also with %g added to both diagonals)", second.msg, FRECHET_OFFSET);
        if (offset_used) *offset_used = FRECHET_OFFSET;
    }
    *out = diff2 + tr1 + tr2 - 2.0 * trc;
    return 0;
}
