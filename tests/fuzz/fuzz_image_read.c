/* fuzz_image_read.c: image_read_mem (stb_image PNG/JPEG) on arbitrary bytes, both channel counts. */
#include <stdint.h>
#include <stdlib.h>

#include "io/image_read.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    for (int c = 1; c <= 3; c += 2) {
        LoadedImage im;
        Err e = {0};
        if (image_read_mem(data, size, "fuzz", c, &im, &e) == 0) {
            if (im.C != c || im.H < 1 || im.W < 1) abort();
            image_free(&im);
        }
    }
    return 0;
}
