/* frechet.h: Gaussian feature statistics and the Fréchet distance between two of them,
   as pytorch-fid's fid_score.py computes them (calculate_activation_statistics,
   calculate_frechet_distance). Everything is float64.

       FrechetAcc a; Err e = {0};
       if (frechet_acc_init(&a, 2048, &e)) return e.code;
       frechet_acc_add(&a, feats, n);                   // any number of batches, (n, D) float rows
       double *mu = malloc(D * 8), *sigma = malloc(D * D * 8);
       if (frechet_acc_finish(&a, mu, sigma, &e)) ...;  // needs >= 2 rows
       frechet_acc_free(&a);
       double fid;
       if (frechet_distance(mu, sigma, mu_ref, sigma_ref, D, &fid, &e)) ...;

   Covariance: divided by N - 1 (np.cov(rowvar=False)). Rows are accumulated after
   subtracting a shift (the mean of the first batch), so large feature means do not
   cancel away the covariance digits.

   Distance: d^2 = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr sqrt(S1 S2).
   pytorch-fid takes tr sqrtm(S1 S2) with scipy (Schur form); the trace of the principal
   root is the sum of the square roots of the eigenvalues of S1 S2, which are those of the
   symmetric PSD matrix sqrt(S1) S2 sqrt(S1). We get them with LAPACK dsyevd:
   S1 = V diag(l) V^T, A = diag(sqrt l) V^T S2 V diag(sqrt l), tr = sum sqrt(max(eig A, 0)).
   Eigenvalues at or below 0 (rank-deficient covariances: fewer samples than dimensions)
   contribute 0, as their real part does in scipy's root. As pytorch-fid, 1e-6 is added
   to both diagonals only when the first attempt does not give a finite value (LAPACK did
   not converge); the offset is reported in *offset_used.
   Limitations: D is limited to 46340 (D * D must fit an int for LAPACK); memory ~5 D^2 doubles.
*/
#ifndef EFFDM_FRECHET_H
#define EFFDM_FRECHET_H

#include <stddef.h>

#include "util/err.h"

typedef struct {
    int D;
    size_t n;        // rows added so far
    double *shift;   // (D) mean of the first batch
    double *sum;     // (D) sum of (x - shift)
    double *cross;   // (D, D) sum of (x - shift)(x - shift)^T (upper triangle is filled)
    double *buf;     // (rows_cap, D) scratch: a batch in double
    size_t rows_cap;
} FrechetAcc;

// Sets up an accumulator for D-dimensional rows. 0, ERR_VALUE (D out of range) or ERR_NOMEM.
int frechet_acc_init(FrechetAcc *a, int D, Err *e);
// Adds n rows x (n, D). Non-finite values: ERR_VALUE naming the row. 0 or an ERR_ code.
int frechet_acc_add(FrechetAcc *a, const float *x, size_t n, Err *e);
// mu (D) and sigma (D, D, full symmetric) of the rows added; needs n >= 2 (ERR_VALUE).
int frechet_acc_finish(const FrechetAcc *a, double *mu, double *sigma, Err *e);
// Frees the accumulator; accepts a zeroed or half-built one.
void frechet_acc_free(FrechetAcc *a);

// Fréchet distance between N(mu1, s1) and N(mu2, s2), all D-dimensional (s: (D, D),
// symmetric). *out gets the distance; *offset_used (may be NULL) 0 or the diagonal offset
// that was needed. Non-finite inputs: ERR_VALUE naming which; LAPACK failure even with the
// offset: ERR_NAN. 0 or an ERR_ code.
int frechet_distance(const double *mu1, const double *s1, const double *mu2, const double *s2, int D,
                     double *out, double *offset_used, Err *e);

// tr sqrt(s1 s2) for symmetric PSD s1, s2 (D, D) (the step above, exposed for tests).
// 0, ERR_NOMEM, or ERR_NAN when dsyevd does not converge.
int frechet_trace_sqrt_product(const double *s1, const double *s2, int D, double *out, Err *e);

#endif
