/* fuzz_weights.h: what the weight-file fuzz targets (fuzz_ckpt.c, fuzz_safetensors.c) do with
   a file that opened: read every tensor as float32 and raw, so that a listed shape, dtype or
   offset the reader accepted is also one it can read safely. */
#ifndef EFFDM_FUZZ_WEIGHTS_H
#define EFFDM_FUZZ_WEIGHTS_H

#include <stdlib.h>

#include "io/dtype.h"
#include "io/weights.h"

static void fuzz_read_every_tensor(WeightFile *f) {
    for (int i = 0; i < weights_count(f); i++) {
        const WeightInfo *wi = weights_info(f, i);
        // a broadcast view of a .ckpt may list more elements than the file holds
        if (wi->numel > ((size_t)1 << 24)) continue;
        size_t bytes = wi->numel * dtype_size(wi->dtype);
        float *dst = malloc(wi->numel ? wi->numel * sizeof(float) : 1);
        void *raw = malloc(bytes ? bytes : 1);
        if (dst && raw) {
            Err r = {0};
            weights_read_f32(f, wi->name, dst, 0, NULL, &r);
            r = (Err){0};
            weights_read_raw(f, wi->name, raw, bytes, &r);
        }
        free(dst);
        free(raw);
    }
}

#endif
