/* fuzz_idx.c: idx_read_mem on arbitrary bytes (must return an error or a consistent array). */
#include <stdint.h>
#include <stdlib.h>

#include "io/idx.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    IdxArray a;
    Err e = {0};
    if (idx_read_mem(data, size, "fuzz", &a, &e) == 0) {
        size_t n = 1;
        for (int d = 0; d < a.ndim; d++) n *= (size_t)a.dims[d];
        if (n != a.n) abort();
        idx_free(&a);
    }
    return 0;
}
