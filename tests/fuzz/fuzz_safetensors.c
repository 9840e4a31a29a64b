/* fuzz_safetensors.c: a .safetensors file from memory (io/safetensors.c): open, read every
   tensor as float32 and raw. Replay: build/fuzz_safetensors_replay FILE|DIR. */
#include <stdint.h>
#include <stdlib.h>

#include "io/safetensors.h"
#include "io/weights.h"
#include "fuzz_weights.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    StFile sf;
    Err e = {0};
    if (st_open_mem(&sf, data, size, "fuzz.safetensors", &e) == 0) st_close(&sf);
    WeightFile *f;
    e = (Err){0};
    if (weights_open_mem(&f, data, size, "fuzz.safetensors", &e)) return 0;
    fuzz_read_every_tensor(f);
    weights_metadata(f, "effdm.format");
    weights_close(f);
    return 0;
}
