/* inception_score.h: Inception Score (Salimans et al. 2016) from classifier logits, as the
   reference code (openai improved-gan, inception_score/model.py get_inception_score):
   p = softmax(logits) per image; the N images are cut into `splits` contiguous parts,
   part i = rows [i N / splits, (i + 1) N / splits) (integer division); per part
   score = exp(mean_rows KL(p_row || mean_part p)); result = mean and POPULATION standard
   deviation (np.std) of the part scores. Computed in double (log-softmax, so p = 0 adds 0).

       double m, s;
       if (inception_score(logits, N, 1008, 10, &m, &s, &e)) return e.code;

   With the judge network the logits are its 10 class logits (the "IS" of effdm eval). */
#ifndef EFFDM_INCEPTION_SCORE_H
#define EFFDM_INCEPTION_SCORE_H

#include <stddef.h>

#include "util/err.h"

// logits (N, K). Needs K >= 2, splits >= 1, N >= splits (ERR_VALUE), finite logits
// (ERR_VALUE naming the row). 0 or an ERR_ code.
int inception_score(const float *logits, size_t N, int K, int splits, double *mean, double *std, Err *e);

#endif
