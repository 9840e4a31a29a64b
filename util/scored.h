/* scored.h: an index with its score, and the qsort orders by score that keep ties in index
   order (a total order: the same ranking on every libc), for the choices made by ranking:
   the pruned FeedForward units, the adaptive sample selection's band. */
#ifndef EFFDM_SCORED_H
#define EFFDM_SCORED_H

typedef struct {
    double score;
    int index;
} Scored;

// qsort comparators of Scored: score ascending / descending, then the lower index first.
int scored_cmp_asc(const void *a, const void *b);
int scored_cmp_desc(const void *a, const void *b);

#endif
