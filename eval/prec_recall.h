/* prec_recall.h: improved precision and recall (Kynkäänniemi et al. 2019, "Improved
   Precision and Recall Metric for Assessing Generative Models").

   Each point's radius is the Euclidean distance to its k-th nearest neighbour in its own
   set, the point itself excluded (k = 3 in the paper and in effdm eval). precision = the
   fraction of fake points within the radius of at least one real point (d <= r);
   recall = the fraction of real points within the radius of at least one fake point.

       double p, r;
       if (prec_recall(real, n_real, fake, n_fake, D, 3, &p, &r, &e)) return e.code;

   Pairwise squared distances come from blocks of cblas_sgemm on mean-centred rows
   (|a|^2 + |b|^2 - 2 a.b, norms in double), PR_BLOCK_ROWS rows at a time, so memory is
   O((n_real + n_fake) D + PR_BLOCK_ROWS max(n)) floats: 10k x 10k needs ~10 MiB of blocks. */
#ifndef EFFDM_PREC_RECALL_H
#define EFFDM_PREC_RECALL_H

#include <stddef.h>

#include "util/err.h"

#define PR_BLOCK_ROWS 256

// real (n_real, D), fake (n_fake, D). Needs n_real, n_fake > k >= 1 (ERR_VALUE) and finite
// rows (ERR_VALUE). 0 or an ERR_ code.
int prec_recall(const float *real, size_t n_real, const float *fake, size_t n_fake, int D, int k,
                double *precision, double *recall, Err *e);

// Squared k-NN radius of every row of x (n, D) within x, self excluded -> r2 (n).
// Exposed for tests. 0 or ERR_NOMEM / ERR_VALUE.
int prec_recall_radii(const float *x, size_t n, int D, int k, double *r2, Err *e);

#endif
