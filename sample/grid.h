/* grid.h: which samples go into the overview grid (DIR/grid.png of `effdm sample`) and where.

       SampleGridPlan g;
       if (sample_grid_plan(&g, labels, n, &e)) return e.code;   // labels NULL: unconditional
       ... image i goes to slot g.slot[i] (row-major in a g.rows x g.cols grid) when >= 0 ...
       sample_grid_plan_free(&g);

   Class-conditional: one row per class present, in increasing label order, holding that
   class's first images (up to SAMPLE_GRID_MAX_COLS; cols = the largest class count up to that
   limit; shorter rows stay empty); at most SAMPLE_GRID_MAX_ROWS classes (the lowest labels).
   Unconditional: the first min(n, SAMPLE_GRID_MAX_COLS^2) images, ceil(sqrt(count)) per row.
*/
#ifndef EFFDM_SAMPLE_GRID_H
#define EFFDM_SAMPLE_GRID_H

#include "util/err.h"

enum { SAMPLE_GRID_MAX_COLS = 16, SAMPLE_GRID_MAX_ROWS = 32 };

typedef struct {
    int rows, cols;
    int *slot;       // (n) grid slot of image i, or -1 when it is not shown
    int *row_label;  // (rows) class of each row; NULL for unconditional grids
} SampleGridPlan;

// Plans the grid for n images with labels[0..n) (NULL: unconditional). 0 or ERR_NOMEM / ERR_VALUE (n < 1).
int sample_grid_plan(SampleGridPlan *g, const int *labels, int n, Err *e);
// Accepts a zeroed plan.
void sample_grid_plan_free(SampleGridPlan *g);

#endif
