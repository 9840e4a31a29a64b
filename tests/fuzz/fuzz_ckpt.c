/* fuzz_ckpt.c: a whole .ckpt (zip + pickle + storages) from memory: open, then read every
   listed tensor (raw and as float32). Replay: build/fuzz_ckpt_replay FILE|DIR. */
#include <stdint.h>
#include <stdlib.h>

#include "io/ckpt.h"
#include "io/dtype.h"
#include "io/weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    WeightFile *f;
    Err e = {0};
    if (weights_open_mem(&f, data, size, "fuzz.ckpt", &e)) return 0;
    for (int i = 0; i < weights_count(f); i++) {
        const WeightInfo *wi = weights_info(f, i);
        size_t bytes = wi->numel * dtype_size(wi->dtype);
        if (wi->numel > ((size_t)1 << 24)) continue;  // a broadcast view may list more elements than the file holds
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
    weights_close(f);
    return 0;
}
