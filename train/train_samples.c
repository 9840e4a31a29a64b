/* train_samples.c: the sample grids of a run (samples/epoch_NNN.png): the student sampled
   with the sample.* keys (sampler, steps, eta, scale, seed), one row per class (or
   sample.grid_rows rows), sample.grid_cols images per row, image i of row r labelled with
   the r-th real class. Sampling draws from its own seeded streams (sample/generate.h), never
   from the run's RNG, so grids do not change the training. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "io/image.h"
#include "sample/generate.h"
#include "train/trainer_impl.h"

typedef struct {
    Trainer *tr;
    float *img;                 // (n, C, H, W) once the first batch arrives
    int shape[4];
    int n;
    volatile sig_atomic_t *stop;
} GridState;

void trainer_sampler_on_eval(int step, int total, int timestep, void *user) {
    (void)step;
    (void)total;
    qmodel_set_timestep(&((Trainer *)user)->q, timestep);
}

static int on_batch(const float *images, const int *shape, const float *z, const int *labels, int first, int count,
                    void *user, Err *e) {
    (void)z;
    (void)labels;
    GridState *g = user;
    size_t per = (size_t)shape[1] * shape[2] * shape[3];
    if (!g->img) {
        g->img = calloc((size_t)g->n * per, sizeof(float));
        if (!g->img) return err_set(e, ERR_NOMEM, "out of memory for a sample grid of %d images", g->n);
        memcpy(g->shape, shape, sizeof g->shape);
    }
    memcpy(g->img + (size_t)first * per, images, (size_t)count * per * sizeof(float));
    if (g->stop && *g->stop) return err_set(e, ERR_INTERRUPTED, "stopped while sampling");
    return 0;
}

int trainer_sample_grid(Trainer *tr, int epoch, volatile sig_atomic_t *stop, char *path, size_t path_size, Err *e) {
    const RcSample *s = &tr->cfg.sample;
    int cols = s->grid_cols > 0 ? s->grid_cols : 8;
    int rows = s->grid_rows > 0 ? s->grid_rows : tr->cond ? tr->n_real : 8;
    int n = rows * cols;
    int *y = calloc((size_t)n, sizeof(int));
    if (!y) return err_set(e, ERR_NOMEM, "out of memory for %d sample labels", n);
    for (int i = 0; i < n && tr->cond; i++) {
        int v = (i / cols) % tr->n_real;
        y[i] = v >= tr->uncond_label ? v + 1 : v;
    }
    GridState g = {.tr = tr, .n = n, .stop = stop};
    GenerateOpts o = {.sampler = {.kind = s->sampler,
                                  .steps = s->steps,
                                  .eta = (float)s->eta,
                                  .scale = (float)s->scale,
                                  .on_eval = trainer_sampler_on_eval,
                                  .user = tr},
                      .seed = (uint64_t)s->seed,
                      .batch = 16,
                      .on_batch = on_batch,
                      .user = &g};
    qmodel_enable(&tr->q, 1);
    ctx_reset(&tr->ctx);
    int rc = sample_generate(&tr->ctx, tr->m, &o, tr->cond ? y : NULL, n, e);
    ctx_reset(&tr->ctx);
    free(y);
    if (!rc) {
        char dir[TRAINER_PATH_MAX + 16];
        snprintf(dir, sizeof dir, "%s/samples", tr->dir);
        if (mkdir(dir, 0777) != 0 && errno != EEXIST)
            rc = err_set(e, ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
        snprintf(path, path_size, "%s/epoch_%03d.png", dir, epoch + 1);
        if (!rc) rc = image_write_grid(path, g.img, n, g.shape[1], g.shape[2], g.shape[3], cols, e);
    }
    free(g.img);
    return rc;
}
