/* prune_write.c: a pruned model as a checkpoint (see prune.h prune_write): the source's
   tensors with the pruned UNet in place of model.diffusion_model.*, so that every command
   that takes --ckpt (sample, calibrate, finetune, export) takes it too. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "io/dtype.h"
#include "io/safetensors.h"
#include "prune/prune.h"
#include "util/grow.h"

#define UNET_PREFIX "model.diffusion_model."

// The source's tensor wi, floats as F32, other dtypes as stored, into bufs.
static int source_tensor(WeightFile *src, const WeightInfo *wi, KeepList *bufs, DType *dt, const void **data,
                         Err *e) {
    size_t nb;
    if (!size_mul_ok(wi->numel, dtype_size(wi->dtype), &nb))
        return err_set(e, ERR_SHAPE, "%s: tensor '%s': too large", weights_path(src), wi->name);
    void *raw = keep_alloc(bufs, nb ? nb : 1);
    if (!raw) return err_set(e, ERR_NOMEM, "prune: out of memory for '%s'", wi->name);
    if (weights_read_raw(src, wi->name, raw, nb, e)) return e->code;
    *dt = wi->dtype;
    *data = raw;
    if (!dtype_is_float(wi->dtype) || wi->dtype == DT_F32) return 0;
    float *f = keep_alloc(bufs, (wi->numel ? wi->numel : 1) * sizeof(float));
    if (!f) return err_set(e, ERR_NOMEM, "prune: out of memory for '%s'", wi->name);
    dtype_to_f32(f, raw, wi->dtype, wi->numel);
    *dt = DT_F32;
    *data = f;
    return 0;
}

int prune_write(Ldm *m, WeightFile *src, const char *yaml, const char *meta_json, const char *path, Err *e) {
    StWriter w = {0};
    KeepList bufs = {0};
    int rc = 0;
    UNet *u = m->unet;
    for (int i = 0; i < unet_param_tensors(u) && !rc; i++) {  // the pruned UNet, in the checkpoint's layout
        const char *name;
        Tensor *t = unet_param_at(u, i, &name);
        int fnd = unet_param_file_ndim(u, i);
        int64_t shape[WEIGHTS_MAX_DIMS];
        for (int d = 0; d < fnd; d++) shape[d] = t->shape[d];  // Conv1d: (Cout, Cin, 1) of (Cout, Cin, 1, 1)
        char full[256];
        snprintf(full, sizeof full, UNET_PREFIX "%s", name);
        rc = st_writer_add(&w, full, DT_F32, fnd, shape, t->data, e);
    }
    int n_ema = 0;
    for (int i = 0; i < weights_count(src) && !rc; i++) {  // the rest as the source holds it
        const WeightInfo *wi = weights_info(src, i);
        if (!strncmp(wi->name, UNET_PREFIX, strlen(UNET_PREFIX))) continue;
        if (!strncmp(wi->name, "model_ema.", 10)) {  // the unpruned EMA copy: not this model
            n_ema++;
            continue;
        }
        DType dt = DT_F32;
        const void *data = NULL;
        if ((rc = source_tensor(src, wi, &bufs, &dt, &data, e))) break;
        rc = st_writer_add(&w, wi->name, dt, wi->ndim, wi->shape, data, e);
    }
    char note[160];
    snprintf(note, sizeof note, "%d model_ema.* tensors of the unpruned model left out", n_ema);
    if (!rc && ((rc = st_writer_meta(&w, "effdm.kind", "pruned", e)) ||
                (rc = st_writer_meta(&w, "effdm.pruned", meta_json, e)) ||
                (yaml && (rc = st_writer_meta(&w, "effdm.ldm_config", yaml, e))) ||
                (rc = st_writer_meta(&w, "effdm.source", weights_path(src), e)) ||
                (n_ema && (rc = st_writer_meta(&w, "effdm.note", note, e)))))
        goto done;
    if (!rc) rc = st_write(&w, path, e);
done:
    st_writer_free(&w);
    keep_free(&bufs);
    return rc;
}
