/* ckpt_edit.h: test helper (header-only, static): copies a tensor file into a .safetensors
   file while a filter drops, renames or reshapes tensors - to build "corrupted" checkpoints
   (a missing tensor, a wrong shape, a partial EMA set) from the real fixtures.
   Every tensor is written as F32 (integer buffers such as model_ema.num_updates too). */
#ifndef EFFDM_TEST_CKPT_EDIT_H
#define EFFDM_TEST_CKPT_EDIT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "io/safetensors.h"
#include "io/weights.h"

// Called per tensor with its name (editable, up to 511 chars), ndim and shape (editable).
// Return 0 to drop the tensor, 1 to keep it. A new shape keeps the first elements and zero-fills.
typedef int (*CkptEditFn)(char *name, int *ndim, int64_t *shape, void *user);

static int ckpt_edit_copy(const char *src, const char *dst, CkptEditFn fn, void *user, Err *e) {
    WeightFile *f = NULL;
    if (weights_open(&f, src, e)) return e->code;
    int n = weights_count(f), rc = 0;
    float **bufs = calloc((size_t)n, sizeof *bufs);
    char(*names)[512] = calloc((size_t)n, sizeof *names);
    StWriter w = {0};
    for (int i = 0; i < n && !rc && bufs && names; i++) {
        const WeightInfo *wi = weights_info(f, i);
        int ndim = wi->ndim;
        int64_t shape[WEIGHTS_MAX_DIMS];
        memcpy(shape, wi->shape, sizeof shape);
        snprintf(names[i], sizeof names[i], "%s", wi->name);
        if (fn && !fn(names[i], &ndim, shape, user)) continue;
        size_t numel = 1;
        for (int d = 0; d < ndim; d++) numel *= (size_t)shape[d];
        float *orig = malloc((wi->numel ? wi->numel : 1) * sizeof(float));
        bufs[i] = calloc(numel ? numel : 1, sizeof(float));
        if (!orig || !bufs[i]) {
            free(orig);
            rc = err_set(e, ERR_NOMEM, "ckpt_edit_copy: out of memory");
            break;
        }
        int shp[WEIGHTS_MAX_DIMS];
        for (int d = 0; d < wi->ndim; d++) shp[d] = (int)wi->shape[d];
        rc = weights_read_f32(f, wi->name, orig, wi->ndim, shp, e);
        if (!rc) {
            memcpy(bufs[i], orig, (numel < wi->numel ? numel : wi->numel) * sizeof(float));
            rc = st_writer_add(&w, names[i], DT_F32, ndim, shape, bufs[i], e);
        }
        free(orig);
    }
    if (!rc && (!bufs || !names)) rc = err_set(e, ERR_NOMEM, "ckpt_edit_copy: out of memory");
    if (!rc) rc = st_write(&w, dst, e);
    st_writer_free(&w);
    for (int i = 0; bufs && i < n; i++) free(bufs[i]);
    free(bufs);
    free(names);
    weights_close(f);
    return rc;
}

#endif
