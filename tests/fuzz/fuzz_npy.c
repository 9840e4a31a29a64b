/* fuzz_npy.c: a .npy file from memory (io/npy.c npy_read_mem). Replay: build/fuzz_npy_replay FILE|DIR. */
#include <stdint.h>

#include "io/npy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    NpyArray a;
    Err e = {0};
    if (npy_read_mem(data, size, "fuzz.npy", &a, &e) == 0) npy_free(&a);
    return 0;
}
