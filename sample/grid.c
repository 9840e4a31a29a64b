/* grid.c: slot plan of the sample overview grid (see grid.h). */
#include "sample/grid.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void sample_grid_plan_free(SampleGridPlan *g) {
    free(g->slot);
    free(g->row_label);
    memset(g, 0, sizeof *g);
}

static int cmp_int(const void *a, const void *b) {
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

int sample_grid_plan(SampleGridPlan *g, const int *labels, int n, Err *e) {
    memset(g, 0, sizeof *g);
    if (n < 1) return err_set(e, ERR_VALUE, "sample grid: no images");
    g->slot = malloc((size_t)n * sizeof(int));
    if (!g->slot) return err_set(e, ERR_NOMEM, "sample grid: out of memory");
    for (int i = 0; i < n; i++) g->slot[i] = -1;
    if (!labels) {
        int shown = n < SAMPLE_GRID_MAX_COLS * SAMPLE_GRID_MAX_COLS ? n : SAMPLE_GRID_MAX_COLS * SAMPLE_GRID_MAX_COLS;
        g->cols = (int)ceil(sqrt((double)shown));
        g->rows = (shown + g->cols - 1) / g->cols;
        for (int i = 0; i < shown; i++) g->slot[i] = i;
        return 0;
    }
    // distinct labels, ascending, at most SAMPLE_GRID_MAX_ROWS
    int *sorted = malloc((size_t)n * sizeof(int));
    g->row_label = malloc(SAMPLE_GRID_MAX_ROWS * sizeof(int));
    int *count = calloc(SAMPLE_GRID_MAX_ROWS, sizeof(int));
    if (!sorted || !g->row_label || !count) {
        free(sorted);
        free(count);
        sample_grid_plan_free(g);
        return err_set(e, ERR_NOMEM, "sample grid: out of memory");
    }
    memcpy(sorted, labels, (size_t)n * sizeof(int));
    qsort(sorted, (size_t)n, sizeof(int), cmp_int);
    int rows = 0, maxc = 0;
    for (int i = 0; i < n && rows < SAMPLE_GRID_MAX_ROWS; i++)
        if (i == 0 || sorted[i] != sorted[i - 1]) g->row_label[rows++] = sorted[i];
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++)
            if (labels[i] == g->row_label[r] && ++count[r] > maxc) maxc = count[r];
    g->rows = rows;
    g->cols = maxc < SAMPLE_GRID_MAX_COLS ? maxc : SAMPLE_GRID_MAX_COLS;
    memset(count, 0, SAMPLE_GRID_MAX_ROWS * sizeof(int));
    for (int i = 0; i < n; i++)
        for (int r = 0; r < rows; r++)
            if (labels[i] == g->row_label[r] && count[r] < g->cols) g->slot[i] = r * g->cols + count[r]++;
    free(sorted);
    free(count);
    return 0;
}
