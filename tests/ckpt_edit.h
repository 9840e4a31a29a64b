/* ckpt_edit.h: test helper (header-only, static): copies a tensor file into a .safetensors
   file while a filter drops, renames or reshapes tensors - to build "corrupted" checkpoints
   (a missing tensor, a wrong shape, a partial EMA set) from the real fixtures.
   With ema_factor != 0, every model.diffusion_model.<name> tensor also gets a CompVis LitEma
   buffer model_ema.<"diffusion_model." + name without dots> = ema_factor x the tensor, plus
   model_ema.decay / num_updates; the filter sees those names too (and may drop them).
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

static int ckpt_edit_copy_ema(const char *src, const char *dst, CkptEditFn fn, void *user, float ema_factor,
                              Err *e) {
    WeightFile *f = NULL;
    if (weights_open(&f, src, e)) return e->code;
    int n = weights_count(f), rc = 0, total = ema_factor != 0.0f ? 2 * n + 2 : n;
    float **bufs = calloc((size_t)total, sizeof *bufs);
    char(*names)[512] = calloc((size_t)total, sizeof *names);
    StWriter w = {0};
    static float ema_scalars[2] = {0.999f, 5054.0f};
    if (ema_factor != 0.0f && bufs && names) {
        snprintf(names[2 * n], 512, "model_ema.decay");
        snprintf(names[2 * n + 1], 512, "model_ema.num_updates");
        for (int k = 0; k < 2 && !rc; k++) {
            int ndim = 0;
            int64_t shape[WEIGHTS_MAX_DIMS] = {0};
            if (!fn || fn(names[2 * n + k], &ndim, shape, user))
                rc = st_writer_add(&w, names[2 * n + k], DT_F32, 0, shape, &ema_scalars[k], e);
        }
    }
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
        const char *pre = "model.diffusion_model.";
        if (!rc && ema_factor != 0.0f && !strncmp(wi->name, pre, strlen(pre))) {
            char full[600];
            snprintf(full, sizeof full, "diffusion_model.%s", wi->name + strlen(pre));
            size_t k = (size_t)snprintf(names[n + i], 512, "model_ema.");
            for (const char *c = full; *c && k + 1 < 512; c++)
                if (*c != '.') names[n + i][k++] = *c;
            names[n + i][k] = '\0';
            int endim = wi->ndim;
            int64_t eshape[WEIGHTS_MAX_DIMS];
            memcpy(eshape, wi->shape, sizeof eshape);
            if (!fn || fn(names[n + i], &endim, eshape, user)) {
                bufs[n + i] = malloc((wi->numel ? wi->numel : 1) * sizeof(float));
                if (!bufs[n + i]) rc = err_set(e, ERR_NOMEM, "ckpt_edit_copy: out of memory");
                for (size_t j = 0; !rc && j < wi->numel; j++) bufs[n + i][j] = ema_factor * orig[j];
                if (!rc) rc = st_writer_add(&w, names[n + i], DT_F32, endim, eshape, bufs[n + i], e);
            }
        }
        free(orig);
    }
    if (!rc && (!bufs || !names)) rc = err_set(e, ERR_NOMEM, "ckpt_edit_copy: out of memory");
    if (!rc) rc = st_write(&w, dst, e);
    st_writer_free(&w);
    for (int i = 0; bufs && i < total; i++) free(bufs[i]);
    free(bufs);
    free(names);
    weights_close(f);
    return rc;
}

static inline int ckpt_edit_copy(const char *src, const char *dst, CkptEditFn fn, void *user, Err *e) {
    return ckpt_edit_copy_ema(src, dst, fn, user, 0.0f, e);
}

#endif
