/* fuzz_safetensors.c: a .safetensors file from memory (io/safetensors.c): open, read every
   tensor as float32 and raw. Replay: build/fuzz_safetensors_replay FILE|DIR. */
#include <stdint.h>
#include <stdlib.h>

#include "io/dtype.h"
#include "io/safetensors.h"
#include "io/weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    StFile sf;
    Err e = {0};
    if (st_open_mem(&sf, data, size, "fuzz.safetensors", &e) == 0) st_close(&sf);
    WeightFile *f;
    e = (Err){0};
    if (weights_open_mem(&f, data, size, "fuzz.safetensors", &e)) return 0;
    for (int i = 0; i < weights_count(f); i++) {
        const WeightInfo *wi = weights_info(f, i);
        if (wi->numel > ((size_t)1 << 24)) continue;  // (only a zip input can list more than it holds)
        size_t bytes = wi->numel * dtype_size(wi->dtype);
        float *dst = malloc(wi->numel ? wi->numel * sizeof(float) : 1);
        void *raw = malloc(bytes ? bytes : 1);
        if (dst && raw) {
            Err r = {0};
            weights_read_f32(f, wi->name, dst, 0, NULL, &r);
            r = (Err){0};
            weights_read_raw(f, wi->name, raw, bytes, &r);
            weights_metadata(f, "effdm.format");
        }
        free(dst);
        free(raw);
    }
    weights_close(f);
    return 0;
}
