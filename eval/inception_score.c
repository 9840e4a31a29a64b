/* inception_score.c: see inception_score.h. */
#include "eval/inception_score.h"

#include <math.h>
#include <stdlib.h>

// log-softmax of one row x (K) into lp (K), in double.
static void log_softmax_row(const float *x, int K, double *lp) {
    double mx = x[0];
    for (int k = 1; k < K; k++)
        if (x[k] > mx) mx = x[k];
    double s = 0;
    for (int k = 0; k < K; k++) s += exp((double)x[k] - mx);
    double lse = mx + log(s);
    for (int k = 0; k < K; k++) lp[k] = (double)x[k] - lse;
}

int inception_score(const float *logits, size_t N, int K, int splits, double *mean, double *std, Err *e) {
    if (K < 2) return err_set(e, ERR_VALUE, "Inception Score: need at least 2 classes, found %d", K);
    if (splits < 1 || N < (size_t)splits)
        return err_set(e, ERR_VALUE, "Inception Score: %zu images cannot be cut into %d splits", N, splits);
    for (size_t i = 0; i < N * (size_t)K; i++)
        if (!isfinite(logits[i]))
            return err_set(e, ERR_VALUE, "Inception Score: logits of image %zu are not finite", i / (size_t)K);
    double *lp = malloc((size_t)K * sizeof(double));
    double *pm = malloc((size_t)K * sizeof(double));
    double *scores = malloc((size_t)splits * sizeof(double));
    if (!lp || !pm || !scores) {
        free(lp);
        free(pm);
        free(scores);
        return err_set(e, ERR_NOMEM, "Inception Score: out of memory");
    }
    for (int s = 0; s < splits; s++) {
        size_t r0 = (size_t)s * N / (size_t)splits, r1 = (size_t)(s + 1) * N / (size_t)splits;
        for (int k = 0; k < K; k++) pm[k] = 0;
        for (size_t r = r0; r < r1; r++) {
            log_softmax_row(logits + r * K, K, lp);
            for (int k = 0; k < K; k++) pm[k] += exp(lp[k]);
        }
        for (int k = 0; k < K; k++) pm[k] /= (double)(r1 - r0);
        double kl_sum = 0;
        for (size_t r = r0; r < r1; r++) {
            log_softmax_row(logits + r * K, K, lp);
            double kl = 0;
            for (int k = 0; k < K; k++) {
                double p = exp(lp[k]);
                if (p > 0) kl += p * (lp[k] - log(pm[k]));  // p > 0 implies pm[k] > 0
            }
            kl_sum += kl;
        }
        scores[s] = exp(kl_sum / (double)(r1 - r0));
    }
    double m = 0, v = 0;
    for (int s = 0; s < splits; s++) m += scores[s];
    m /= splits;
    for (int s = 0; s < splits; s++) v += (scores[s] - m) * (scores[s] - m);
    *mean = m;
    *std = sqrt(v / splits);
    free(lp);
    free(pm);
    free(scores);
    return 0;
}
